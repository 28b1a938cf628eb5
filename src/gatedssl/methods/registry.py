"""SSL methods as table entries: which heads to build and how two embeddings make a loss.

Adding a method means adding one entry here and (if new) one loss in `gatedssl.losses`;
the objective and the training loop do not change.

Asymmetric methods (SimSiam, BYOL): for a pair (a, b) of passes, each side's predictor
predicts the other side's target (stop-gradient projection for SimSiam, EMA-teacher
projection for BYOL) and the two terms are averaged. So under the `reference` pairing
(view 1 gated, view 2 dense) the gated pass predicts the dense pass's target AND the dense
pass predicts the gated pass's target; with `symmetric` the views are swapped as well.
The BYOL teacher runs the same pass as the side it stands for (dense target for the dense
side, gated target for the gated side).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from .. import losses
from ..models.heads import mlp
from ..names import VICREG_WEIGHTS


@dataclass
class Embeddings:
    """What the heads produce for one pass of one view."""

    z: torch.Tensor  # projection
    p: torch.Tensor | None = None  # prediction (methods with a predictor)
    target: torch.Tensor | None = None  # EMA-teacher projection (BYOL)


@dataclass(frozen=True)
class Method:
    name: str
    default_proj_dim: int
    projector: Callable[[int, int], nn.Module]  # (feature_dim, proj_dim) -> module
    loss: Callable[..., torch.Tensor]  # (a: Embeddings, b: Embeddings, **options) -> loss
    predictor: Callable[[int], nn.Module] | None = None  # proj_dim -> module
    ema_teacher: bool = False
    couples_samples: bool = False  # the loss of a sample depends on the others (negatives, batch statistics): gathered across ranks
    summary: str = ""
    options: dict = field(default_factory=dict)  # the method's settings, passed to `loss` (e.g. VICReg's weights)

    def __call__(self, a: Embeddings, b: Embeddings) -> torch.Tensor:
        return self.loss(a, b, **self.options)


def _byol_out(p: int) -> int:
    return max(p // 16, 32)


METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method(
            "vicreg",
            2048,
            projector=lambda d, p: mlp([d, p, p, p]),
            loss=lambda a, b, weights=VICREG_WEIGHTS, variance_form="mean": losses.vicreg_loss(
                a.z, b.z, *weights, variance_form=variance_form
            ),
            couples_samples=True,
            summary="VICReg (the paper's method): invariance + variance + covariance, weights 25/25/1; "
            "options: weights, variance_form (mean: the original code's; sum: solo-learn's, the reference)",
        ),
        Method(
            "barlow",
            2048,
            projector=lambda d, p: mlp([d, p, p, p], last_bias=False),
            loss=lambda a, b: losses.barlow_twins_loss(a.z, b.z),
            couples_samples=True,
            summary="Barlow Twins: cross-correlation to identity, lambda 0.0051",
        ),
        Method(
            "simclr",
            2048,
            projector=lambda d, p: mlp([d, p, 128]),
            loss=lambda a, b: losses.nt_xent_loss(a.z, b.z, temperature=0.1),
            couples_samples=True,
            summary="SimCLR: NT-Xent over 2N anchors, temperature 0.1",
        ),
        Method(
            "simsiam",
            2048,
            projector=lambda d, p: mlp([d, p, p, p], last_bn=True),
            predictor=lambda p: mlp([p, p // 4, p]),
            loss=lambda a, b: 0.5 * (losses.simsiam_loss(a.p, b.z) + losses.simsiam_loss(b.p, a.z)),
            summary="SimSiam: predictor + stop-gradient, symmetrised between the two passes",
        ),
        Method(
            "byol",
            4096,
            projector=lambda d, p: mlp([d, p, _byol_out(p)]),
            predictor=lambda p: mlp([_byol_out(p), p, _byol_out(p)]),
            loss=lambda a, b: 0.5 * (losses.byol_loss(a.p, b.target) + losses.byol_loss(b.p, a.target)),
            ema_teacher=True,
            summary="BYOL: predictor + EMA teacher (momentum 0.99 -> 1, cosine)",
        ),
    ]
}


def get_method(name: str, **options) -> Method:
    """The table entry, with `options` for its loss (options the loss does not take are an error)."""
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    method = METHODS[name]
    return dataclasses.replace(method, options={**method.options, **options}) if options else method
