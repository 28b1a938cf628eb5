"""The compute-budget losses of the gated pass (Krishna et al., BMVC 2023)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DENSITY_FORMS = ("mean", "l1")


def block_densities(masks: list[torch.Tensor], form: str = "mean") -> torch.Tensor:
    """(L,) share of active channels per gated block, averaged over the batch.

    The value is the same in both forms; the gradient is not. "l1" is the reference's
    torch.norm(mask, p=1) / numel: |x| has zero gradient at 0, so a switched-off channel gets
    none from the bound loss and the lower bound can only hold on to open channels. "mean"
    passes gradient to every gate.
    """
    if form not in DENSITY_FORMS:
        raise ValueError(f"density form must be one of {DENSITY_FORMS}, got {form!r}")
    if form == "l1":
        return torch.stack([m.float().abs().sum() / m.numel() for m in masks])
    return torch.stack([m.float().mean() for m in masks])


def budget_loss(macs: torch.Tensor, dense_macs: float, target: float, weight: float = 5.0) -> torch.Tensor:
    """weight * (mean gated MACs / dense MACs - target)^2: steers the whole network to its budget."""
    return weight * (macs.float().mean() / dense_macs - target) ** 2


def bound_loss(densities: torch.Tensor, target: float, p: float, weight: float = 1.0, mode: str = "sqrt") -> torch.Tensor:
    """Keeps each block's density within [p*s, 1 - p + p*s], s = sqrt(target) (reference) or target.

    Early (p = 1) every block is held at s; as p decays the bounds open to [0, 1], so blocks
    may then differ. The sqrt comes from a code base that gated channels and space together.
    """
    if mode not in ("sqrt", "linear"):
        raise ValueError(f"bound mode must be 'sqrt' or 'linear', got {mode!r}")
    s = math.sqrt(target) if mode == "sqrt" else target
    lower, upper = p * s, 1 - p + p * s
    return weight * (F.relu(lower - densities).pow(2) + F.relu(densities - upper).pow(2)).mean()


def anneal_p(progress: float, alpha_times_epochs: float = 10.0) -> float:
    """p = exp(-alpha * epoch) with alpha * total epochs fixed (reference: 0.02 * 500 = 10)."""
    return math.exp(-alpha_times_epochs * progress)
