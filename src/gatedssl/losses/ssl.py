"""Self-supervised losses as pure functions of whole embedding batches.

They take full (N, D) tensors, so a multi-GPU caller can all-gather embeddings first. Each
computes in float32 whatever autocast produced, as the reference implementations do: inputs
are cast with .float() *and* autocast is switched off inside, since autocast would otherwise
run the matmuls (covariance, cross-correlation, similarity) in bf16/fp16 again.
"""

from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn.functional as F

from ..names import VICREG_WEIGHTS


def _float32(fn):
    """Run `fn` with tensor arguments in float32 (or float64) and autocast off for their device."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        device_type = next(a.device.type for a in args if isinstance(a, torch.Tensor))
        off = torch.autocast(device_type, enabled=False) if device_type in ("cpu", "cuda") else contextlib.nullcontext()
        with off:
            return fn(*(_at_least_float32(a) if isinstance(a, torch.Tensor) else a for a in args), **kwargs)

    return wrapper


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """Half precision up to float32; float64 (the multi-process equivalence tests) stays."""
    return x if x.dtype == torch.float64 else x.float()


def _off_diagonal(m: torch.Tensor) -> torch.Tensor:
    n = m.shape[0]
    return m.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


VARIANCE_FORMS = ("mean", "sum")


@_float32
def vicreg_terms(z1: torch.Tensor, z2: torch.Tensor, variance_form: str = "mean") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unweighted (invariance, variance, covariance) terms of VICReg (Bardes et al. 2022).

    As facebookresearch/vicreg main_vicreg.py: invariance = MSE; std = sqrt(unbiased var + 1e-4),
    variance = mean(relu(1 - std)) / 2 per branch; covariance = off-diagonal squares of
    x.T @ x / (N - 1), summed and divided by D, per branch. (The reference takes the MSE on the
    local batch and the other two on the gathered one; here all three see what is passed.)
    variance_form "sum" adds the two branches' hinges instead of averaging them: solo-learn's
    form, which the paper's reference code trains with; the same weight then counts twice.
    """
    if variance_form not in VARIANCE_FORMS:
        raise ValueError(f"variance_form must be one of {VARIANCE_FORMS}, got {variance_form!r}")
    n, d = z1.shape
    invariance = F.mse_loss(z1, z2)
    x, y = z1 - z1.mean(0), z2 - z2.mean(0)
    std_x, std_y = torch.sqrt(x.var(0) + 1e-4), torch.sqrt(y.var(0) + 1e-4)
    variance = F.relu(1 - std_x).mean() + F.relu(1 - std_y).mean()
    if variance_form == "mean":
        variance = variance / 2
    cov_x, cov_y = x.T @ x / (n - 1), y.T @ y / (n - 1)
    covariance = _off_diagonal(cov_x).pow(2).sum() / d + _off_diagonal(cov_y).pow(2).sum() / d
    return invariance, variance, covariance


def vicreg_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    sim_weight: float = VICREG_WEIGHTS[0],
    var_weight: float = VICREG_WEIGHTS[1],
    cov_weight: float = VICREG_WEIGHTS[2],
    variance_form: str = "mean",
) -> torch.Tensor:
    """VICReg: sim_weight * invariance + var_weight * variance + cov_weight * covariance (reference 25/25/1)."""
    invariance, variance, covariance = vicreg_terms(z1, z2, variance_form)
    return sim_weight * invariance + var_weight * variance + cov_weight * covariance


@_float32
def simsiam_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """SimSiam (Chen & He 2021): negative cosine between prediction and stop-gradient target."""
    return -F.cosine_similarity(p, z.detach(), dim=1).mean()


@_float32
def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL (Grill et al. 2020): 2 - 2 cos(prediction, stop-gradient target)."""
    return (2 - 2 * F.cosine_similarity(p, z.detach(), dim=1)).mean()


# In-place distillation (slimmable widths, post-hoc gates): the same scale-free 2 - 2 cos to a detached target
distillation_loss = byol_loss


@_float32
def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """SimCLR's NT-Xent (Chen et al. 2020): each of the 2N anchors against its other view, mean over anchors."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, targets)


@_float32
def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 0.0051) -> torch.Tensor:
    """Barlow Twins (Zbontar et al. 2021): cross-correlation of batch-standardised embeddings to identity.

    Standardised as BatchNorm1d(affine=False) in training mode: biased variance, eps 1e-5.
    """
    n = z1.shape[0]
    a = (z1 - z1.mean(0)) / torch.sqrt(z1.var(0, unbiased=False) + 1e-5)
    b = (z2 - z2.mean(0)) / torch.sqrt(z2.var(0, unbiased=False) + 1e-5)
    c = a.T @ b / n
    on_diagonal = (torch.diagonal(c) - 1).pow(2).sum()
    return on_diagonal + lambd * _off_diagonal(c).pow(2).sum()
