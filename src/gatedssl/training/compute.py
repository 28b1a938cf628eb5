"""A run's training compute: the FLOPs the hardware executed, and those its masks imply.

Executed FLOPs are counted once per run by torch's FlopCounterMode on one training step of the
objective built on the meta device (no memory, no arithmetic, no random draw), then multiplied
by the steps taken: a masked gated pass costs dense FLOPs, as on the hardware. The masks' FLOPs
are what real channel skipping would have cost: each gated side saves, per sample, the MACs its
masks switch off, times 2 FLOPs per MAC in the forward pass and 4 in the backward (input and
weight gradients; 2 when the weights are frozen).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from .. import losses
from ..config import PretrainConfig
from ..factory import build_objective
from ..methods.modes import ModeOptions, slim_names


@dataclass(frozen=True)
class StepCost:
    flops: float  # executed FLOPs of one training step (forward + backward)
    gated_sides: int  # gated (view, sub-network) sides per step, whose masks could skip work
    dense_macs: int  # per sample, of the dense pass
    flops_per_skipped_mac: int  # 6 (2 forward + 4 backward), 4 with frozen weights


def step_cost(cfg: PretrainConfig, crop_size: int, gates_on: bool) -> StepCost:
    """A training step's executed FLOPs; slimmable: the mean over the sandwich's random draws (exact, not one draw)."""
    middle = slim_names(ModeOptions(widths=tuple(cfg.widths or ())))[:-1] if cfg.mode == "slimmable" else ()
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        # without the random widths, the step is the same every time: count it whole
        objective = build_objective(dataclasses.replace(cfg, slim_random=0) if middle else cfg)
        x = torch.empty(cfg.batch_size, 3, crop_size, crop_size)
        flops = _counted(lambda: objective(x, x.clone(), 0.5, gates_on)["loss"].backward())
        if middle:  # each middle width is drawn with probability slim_random / len(middle): add its students' expected cost
            share = min(cfg.slim_random, len(middle)) / len(middle)
            with torch.no_grad():
                target = torch.empty_like(objective.embed(x, "dense", target=False)[0].z)  # the full width's, computed anyway
            flops += share * sum(_counted(lambda name=name: _student_step(objective, x, name, target)) for name in middle)
        sides = {s for pair in objective.pairs(gates_on) for s in pair}
        if objective.mode.distill_pairs:
            sides |= {s for pair in objective.mode.distill_pairs(objective.options, gates_on) for s in pair}
        gated = sum(1 for _, name in sides if name == "gated")
        dense_macs = objective.backbone(torch.empty(1, 3, crop_size, crop_size)).dense_macs
    return StepCost(flops, gated, dense_macs, 4 if objective.frozen_dense else 6)


def _counted(step) -> float:
    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def _student_step(objective, x: torch.Tensor, name: str, target: torch.Tensor) -> None:
    """What one drawn width adds to a slimmable step: its pass on both views, distilled from a (detached) target."""
    loss = sum(losses.distillation_loss(objective.embed(view, name, target=False)[0].z, target) for view in (x, x.clone()))
    loss.backward()


def mask_flops(cost: StepCost, executed: float, steps: int, macs_ratio_sum: float, batch_size: int) -> float:
    """The executed FLOPs of `steps` steps less what their masks switched off (macs_ratio_sum: the steps' summed mean gated MACs ratio)."""
    skipped_share = steps - macs_ratio_sum  # summed over steps: 1 - gated MACs / dense MACs
    return executed - cost.flops_per_skipped_mac * batch_size * cost.gated_sides * cost.dense_macs * skipped_share
