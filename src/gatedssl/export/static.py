"""The static sub-network: one fixed set of middle channels per block, chosen from the gates' habits.

A channel is kept when the gates open it for at least a share Q (the keep rate) of the training
images. Q = 0 keeps every channel; Q = 1 keeps only those open for every image. A MACs target picks
the smallest Q that meets it, i.e. the largest static network within the target.
"""

from __future__ import annotations

import torch

from ..errors import UserError
from ..models.backbone import ChannelCosts, GatedBackbone


def kept_channels(frequency: list[torch.Tensor], keep_rate: float, multiple: int = 1) -> list[torch.Tensor]:
    """Per block, the sorted indices of the channels open for at least a share `keep_rate` of the images.

    multiple: round each block's count up to a multiple of this (the next most frequent channels join;
    a block left with none stays empty). CPU kernels run channel counts that are multiples of 8 or 16
    much faster per MAC (BENCHMARKS.md), so a few more channels can cost no time.
    """
    if not 0.0 <= keep_rate <= 1.0:
        raise UserError(f"--keep-rate must be in [0, 1], got {keep_rate:g}")
    kept = []
    for f in frequency:
        f = f.detach().cpu()
        n = int((f >= keep_rate).sum())
        n = min(len(f), -(-n // multiple) * multiple)
        order = torch.sort(f, descending=True, stable=True).indices  # ties: lower index first
        kept.append(order[:n].sort().values)
    return kept


def static_macs_ratio(
    backbone: GatedBackbone,
    frequency: list[torch.Tensor],
    keep_rate: float,
    size: int,
    multiple: int = 1,
    costs: ChannelCosts | None = None,
) -> float:
    costs = costs or backbone.channel_costs(size)  # one pass of the network; a search passes it in once
    return costs.macs([len(k) for k in kept_channels(frequency, keep_rate, multiple)]) / costs.macs(backbone.gated_channels)


def keep_rate_for(
    backbone: GatedBackbone,
    frequency: list[torch.Tensor],
    macs_ratio: float,
    size: int,
    multiple: int = 1,
    costs: ChannelCosts | None = None,
) -> float:
    """The smallest keep rate whose static network spends at most `macs_ratio` of the dense MACs."""
    if not 0.0 < macs_ratio <= 1.0:
        raise UserError(f"--macs-ratio must be in (0, 1], got {macs_ratio:g}")
    # the network changes only where Q crosses a channel's frequency: those are the candidates
    candidates = sorted({0.0, 1.0, *torch.cat([f.cpu() for f in frequency]).tolist()})
    costs = costs or backbone.channel_costs(size)  # one pass of the network; a caller asking many ratios passes it in
    lo, hi = 0, len(candidates) - 1
    smallest = static_macs_ratio(backbone, frequency, candidates[hi], size, multiple, costs)
    if smallest > macs_ratio:
        raise UserError(
            f"--macs-ratio {macs_ratio:g} cannot be reached: keeping only the channels the gates open for every "
            f"training image (--keep-rate {candidates[hi]:g}{f', rounded up to multiples of {multiple}' if multiple > 1 else ''}) still "
            f"spends {smallest:.3f} of the dense MACs; ask for at least that"
        )
    while lo < hi:  # MACs fall as Q rises
        mid = (lo + hi) // 2
        if static_macs_ratio(backbone, frequency, candidates[mid], size, multiple, costs) <= macs_ratio:
            hi = mid
        else:
            lo = mid + 1
    return candidates[lo]
