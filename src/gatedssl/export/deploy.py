"""The deployable forms of each backbone family: its plain (BN-folded, static) network and its real-skipping pass.

One entry per family. Export, `gatedssl.load` and the fine-tunes reach them only through these
functions, so a third backbone adds its two classes here and nothing else in export changes.
"""

from __future__ import annotations

import torch
from torch import nn

from ..models.backbone import GatedBackbone
from ..models.mobilenet import GatedMobileNet
from ..models.resnet import GatedResNet
from . import mobilenet, plain, skipping

FAMILIES: dict[type, tuple[type, type]] = {
    GatedResNet: (plain.PlainResNet, skipping.SkippingResNet),
    GatedMobileNet: (mobilenet.PlainMobileNet, mobilenet.SkippingMobileNet),
}
SPECS: dict[str, type] = {plain.SPEC_FORMAT: plain.PlainResNet, mobilenet.SPEC_FORMAT: mobilenet.PlainMobileNet}


def _family(backbone: GatedBackbone) -> tuple[type, type]:
    for kind, family in FAMILIES.items():
        if isinstance(backbone, kind):
            return family
    raise TypeError(f"no deployable form is registered for {type(backbone).__name__} (gatedssl.export.deploy.FAMILIES)")


def plain_network(backbone: GatedBackbone, bn: str = "dense", keep: list[torch.Tensor] | None = None) -> nn.Module:
    """Sub-network `bn` ("dense", "gated", "widthW") with BN folded in, keeping hidden channels `keep[i]` of unit i (all when None)."""
    return _family(backbone)[0].from_gated(backbone, bn, keep=keep)


def skipping_network(backbone: GatedBackbone, strategy: str = "union") -> nn.Module:
    """The gated pass computing only the channels each gate opens (eval only)."""
    return _family(backbone)[1](backbone, strategy)


def plain_from_spec(spec: dict) -> nn.Module:
    """An empty plain network of the architecture a `.pt` export recorded."""
    kind = SPECS.get(spec.get("format")) if isinstance(spec, dict) else None
    if kind is None:
        raise ValueError(f"unknown plain-network format {spec.get('format') if isinstance(spec, dict) else spec!r}")
    return kind(spec)
