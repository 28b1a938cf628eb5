"""Deploying the light model: plain (BN-folded) networks, real channel skipping, export formats, loading."""

from .encoder import Encoder, EvalTransform, load
from .formats import torchvision_model
from .mobilenet import PlainMobileNet, SkippingMobileNet
from .plain import PlainResNet
from .skipping import SkippingResNet

__all__ = ["Encoder", "EvalTransform", "PlainMobileNet", "PlainResNet", "SkippingMobileNet", "SkippingResNet", "load", "torchvision_model"]
