"""Deploying the light model: plain (BN-folded) networks, real channel skipping, export formats, loading."""

from .encoder import Encoder, EvalTransform, load
from .formats import torchvision_model
from .plain import PlainResNet
from .skipping import SkippingResNet

__all__ = ["Encoder", "EvalTransform", "PlainResNet", "SkippingResNet", "load", "torchvision_model"]
