"""A run's training compute: the FLOPs the hardware executed, and those its masks imply.

Executed FLOPs are counted once per run by torch's FlopCounterMode on one training step of the
objective built on the meta device (no memory, no arithmetic, no random draw), then multiplied
by the steps taken: a masked gated pass costs dense FLOPs, as on the hardware. The masks' FLOPs
are what real channel skipping would have cost: each gated side saves, per sample, the MACs its
masks switch off, times 2 FLOPs per MAC in the forward pass and 4 in the backward (input and
weight gradients; 2 when the weights are frozen).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..config import PretrainConfig
from ..factory import build_objective


@dataclass(frozen=True)
class StepCost:
    flops: float  # executed FLOPs of one training step (forward + backward)
    gated_sides: int  # gated (view, sub-network) sides per step, whose masks could skip work
    dense_macs: int  # per sample, of the dense pass
    flops_per_skipped_mac: int  # 6 (2 forward + 4 backward), 4 with frozen weights


def step_cost(cfg: PretrainConfig, crop_size: int, gates_on: bool) -> StepCost:
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        objective = build_objective(cfg)
        x = torch.empty(cfg.batch_size, 3, crop_size, crop_size)
        with FlopCounterMode(display=False) as counter:
            terms = objective(x, x.clone(), 0.5, gates_on)
            terms["loss"].backward()
        sides = {s for pair in objective.pairs(gates_on) for s in pair}
        if objective.mode.distill_pairs:
            sides |= {s for pair in objective.mode.distill_pairs(objective.options, gates_on) for s in pair}
        gated = sum(1 for _, name in sides if name == "gated")
        dense_macs = objective.backbone(torch.empty(1, 3, crop_size, crop_size)).dense_macs
    return StepCost(float(counter.get_total_flops()), gated, dense_macs, 4 if objective.frozen_dense else 6)


def mask_flops(cost: StepCost, executed: float, steps: int, macs_ratio_sum: float, batch_size: int) -> float:
    """The executed FLOPs of `steps` steps less what their masks switched off (macs_ratio_sum: the steps' summed mean gated MACs ratio)."""
    skipped_share = steps - macs_ratio_sum  # summed over steps: 1 - gated MACs / dense MACs
    return executed - cost.flops_per_skipped_mac * batch_size * cost.gated_sides * cost.dense_macs * skipped_share
