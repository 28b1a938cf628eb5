"""Backbones (gated ResNets), their gate, and the SSL heads."""

from .gate import ChannelGate
from .heads import mlp
from .resnet import (
    ARCHS,
    STEMS,
    BackboneOutput,
    GatedBasicBlock,
    GatedBottleneck,
    GatedResNet,
    create_backbone,
    gated_resnet18,
    gated_resnet34,
    gated_resnet50,
)

__all__ = [
    "ARCHS",
    "STEMS",
    "BackboneOutput",
    "ChannelGate",
    "GatedBasicBlock",
    "GatedBottleneck",
    "GatedResNet",
    "create_backbone",
    "gated_resnet18",
    "gated_resnet34",
    "gated_resnet50",
    "mlp",
]
