"""Training compute: the executed FLOPs of a step (counted on the meta device) and what the masks imply."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from gatedssl.config import PretrainConfig, resolve
from gatedssl.factory import build_objective
from gatedssl.training.compute import StepCost, mask_flops, step_cost


def _one_draw(cfg, seed: int) -> float:
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        torch.manual_seed(seed)
        objective = build_objective(cfg)
        x = torch.empty(cfg.batch_size, 3, 32, 32)
        with FlopCounterMode(display=False) as counter:
            objective(x, x.clone(), 0.5, True)["loss"].backward()
    return float(counter.get_total_flops())


def test_a_dual_step_is_counted_whole_and_draws_nothing():
    cfg = resolve(PretrainConfig(batch_size=16))
    before = torch.random.get_rng_state()
    cost = step_cost(cfg, 32, True)
    assert torch.equal(before, torch.random.get_rng_state()), "counting draws no random number: the run's stream is unchanged"
    assert cost.flops == _one_draw(cfg, 0) and cost.gated_sides == 1 and cost.flops_per_skipped_mac == 6
    assert cost.flops > 2 * 3 * cfg.batch_size * 2 * cost.dense_macs * 0.99, "two backbone passes, forward and backward"


def test_slimmable_counts_the_mean_over_the_sandwich_draws():
    cfg = resolve(PretrainConfig(mode="slimmable", batch_size=16))  # middle widths 0.75 and 0.5, one drawn per step
    draws = {_one_draw(cfg, seed) for seed in range(8)}
    assert len(draws) == 2, "the two draws cost differently"
    assert step_cost(cfg, 32, True).flops == pytest.approx(sum(draws) / 2, rel=1e-3)


def test_mask_flops_subtract_what_the_masks_switch_off():
    cost = StepCost(flops=1000.0, gated_sides=1, dense_macs=10, flops_per_skipped_mac=6)
    # 2 steps at batch 4, the gated side spending 0.5 and 0.25 of the dense MACs: (0.5 + 0.75) x 10 MACs x 4 x 6 skipped
    assert mask_flops(cost, 2000.0, 2, 0.75, 4) == 2000.0 - 6 * 4 * 10 * 1.25
    assert mask_flops(StepCost(1000.0, 0, 10, 6), 2000.0, 2, 2.0, 4) == 2000.0, "no gated side: nothing to skip"
