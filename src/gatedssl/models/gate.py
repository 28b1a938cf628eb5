"""The per-block channel gate of Krishna et al. (BMVC 2023).

A tiny squeeze-style network reads a block's input and decides, per sample, which of the
block's middle channels to compute. Training samples a hard mask with logistic noise (a
Gumbel-sigmoid) and passes the soft value's gradient back (straight-through); evaluation
thresholds the logits, so the eval-mode sub-network is deterministic.
"""

from __future__ import annotations

import torch
from torch import nn

from ..distributed import global_rows


class _HardThreshold(torch.autograd.Function):
    """Forward: exact 0/1 mask (soft >= 0.5). Backward: identity, so the soft value learns.

    A custom Function rather than `hard + soft - soft.detach()`, whose forward value is
    only approximately 0/1 in floating point.
    """

    @staticmethod
    def forward(ctx, soft: torch.Tensor) -> torch.Tensor:
        return (soft >= 0.5).to(soft.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


def logistic_noise(shape_like: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """log(u) - log(1 - u), u ~ U(0, 1): the difference of two Gumbels.

    (n, ...) rows drawn for the global batch, this rank's kept (gatedssl.distributed): N ranks
    draw the noise one process would."""
    total, rows = global_rows(shape_like.shape[0])
    u = torch.rand((total, *shape_like.shape[1:]), device=shape_like.device)[rows].clamp_(eps, 1 - eps)
    return torch.log(u) - torch.log1p(-u)


def straight_through_mask(logits: torch.Tensor, tau: float, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Training-mode mask: hard Gumbel-sigmoid sample, soft gradient."""
    if noise is None:
        noise = logistic_noise(logits)
    soft = torch.sigmoid((logits.float() + noise) / tau)
    return _HardThreshold.apply(soft)


class ChannelGate(nn.Module):
    """avg-pool -> 1x1 conv (C_in -> C_in/4, no bias) -> BN -> ReLU -> 1x1 conv -> C_out logits.

    The reference's last conv has no bias (`bias=False`); 0.1.0 had one (`bias=True`)."""

    def __init__(self, in_channels: int, out_channels: int, tau: float = 2 / 3, reduction: int = 4, bias: bool = True):
        super().__init__()
        self.hidden = max(in_channels // reduction, 1)
        self.in_channels, self.out_channels, self.tau = in_channels, out_channels, tau
        self.reduce = nn.Conv2d(in_channels, self.hidden, 1, bias=False)
        self.bn = nn.BatchNorm2d(self.hidden)
        self.expand = nn.Conv2d(self.hidden, out_channels, 1, bias=bias)
        # subtracted from every logit, in training and evaluation alike: set once at the end of a run so that the
        # thresholded gates spend the budget (gatedssl.training.calibrate); zero until then
        self.register_buffer("offset", torch.zeros(()))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.setdefault(prefix + "offset", torch.zeros(()))  # checkpoints from before calibration
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def macs(self) -> int:
        """The gate's own per-sample MACs (two 1x1 convs on a 1x1 map)."""
        return self.in_channels * self.hidden + self.hidden * self.out_channels

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.nn.functional.adaptive_avg_pool2d(x, 1)
        return self.expand(torch.relu(self.bn(self.reduce(pooled)))).flatten(1) - self.offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_out) float32 mask of exact zeros and ones."""
        logits = self.logits(x)
        if self.training:
            return straight_through_mask(logits, self.tau)
        return (logits >= 0).float()
