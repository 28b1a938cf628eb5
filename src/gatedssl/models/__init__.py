"""Backbones (gated ResNets and MobileNets, declared on GatedBackbone), their gate, and the SSL heads."""

from .backbone import ARCHS, BackboneOutput, GatedBackbone, create_backbone, register_arch
from .gate import ChannelGate
from .heads import mlp
from .mobilenet import GatedMobileNet, gated_mobilenet_v2, gated_mobilenet_v3_large, gated_mobilenet_v3_small
from .resnet import (
    STEMS,
    GatedBasicBlock,
    GatedBottleneck,
    GatedResNet,
    gated_resnet18,
    gated_resnet34,
    gated_resnet50,
)

__all__ = [
    "ARCHS",
    "STEMS",
    "BackboneOutput",
    "ChannelGate",
    "GatedBackbone",
    "GatedBasicBlock",
    "GatedBottleneck",
    "GatedMobileNet",
    "GatedResNet",
    "create_backbone",
    "gated_mobilenet_v2",
    "gated_mobilenet_v3_large",
    "gated_mobilenet_v3_small",
    "gated_resnet18",
    "gated_resnet34",
    "gated_resnet50",
    "mlp",
    "register_arch",
]
