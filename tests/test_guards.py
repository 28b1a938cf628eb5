"""The loss guard: a run stops the step its loss explodes, saying what to change, and keeps its last good checkpoint."""

import pytest
import torch

from gatedssl.config import PretrainConfig
from gatedssl.errors import EXIT_NONFINITE, RunStopped
from gatedssl.methods import JointObjective
from gatedssl.training import pretrain
from gatedssl.training.guards import EXPLOSION_FACTOR, LossGuard

TINY = dict(width=8, proj_dim=64, epochs=3, batch_size=50, limit_per_class=20, checkpoint_every=1, device="cpu")


def feed(guard: LossGuard, losses: list[float]) -> list[bool]:
    """The guard's verdict after each step."""
    verdicts = []
    for step, value in enumerate(losses):
        loss = torch.tensor(value)
        guard.observe(step, {"loss": loss, "ssl": loss, "budget": torch.tensor(0.5)})
        verdicts.append(guard.tripped())
    return verdicts


def test_an_explosion_trips_the_guard_at_its_step_and_is_named():
    guard = LossGuard(torch.device("cpu"))
    assert feed(guard, [40.0, 39.0, 60.0, 3900.0, 41e3]) == [False, False, False, False, True]
    problem = guard.problem(epoch=0)
    assert "loss exploded to 4.1e+04 at epoch 1, step 5" in problem and "ssl=4.1e+04" in problem and "began at 40" in problem


def test_a_non_finite_loss_trips_the_guard():
    guard = LossGuard(torch.device("cpu"))
    assert feed(guard, [40.0, float("nan")]) == [False, True]
    assert guard.problem(epoch=2).startswith("non-finite loss at epoch 3, step 2")


def test_small_and_negative_losses_never_trip_it():
    """SimSiam's loss is a negative cosine near 0 at first: the yardstick is at least 1, so its normal range is safe."""
    guard = LossGuard(torch.device("cpu"))
    assert not any(feed(guard, [-0.01, -0.3, -0.9, -0.99, 2.0, 8.0]))
    assert guard.problem(epoch=0) is None


def test_a_resumed_run_keeps_its_yardstick():
    guard = LossGuard(torch.device("cpu"), reference=40.0)
    assert feed(guard, [10.0, EXPLOSION_FACTOR * 40.0 + 1]) == [False, True]
    guard.new_epoch()
    assert guard.problem(epoch=1) is None and not guard.tripped()


def test_the_run_stops_at_the_exploding_step_not_the_epoch_end(tmp_path, monkeypatch):
    """4 steps per epoch; the loss explodes (finite) at epoch 2, step 2: the run stops there with exit code 3,
    names the step and what to change, and keeps epoch 1's checkpoint."""
    real_forward = JointObjective.forward
    calls = {"n": 0}

    def forward(self, *args, **kwargs):
        terms = real_forward(self, *args, **kwargs)
        if args[0].device.type == "meta":  # the FLOP count's step on the meta device is no training step
            return terms
        calls["n"] += 1
        if calls["n"] == 6:
            terms["loss"] = terms["loss"] * 1e6
        return terms

    monkeypatch.setattr(JointObjective, "forward", forward)
    steps = []
    with pytest.raises(RunStopped) as stopped:
        pretrain(PretrainConfig(out=str(tmp_path / "run"), **TINY), progress=False, on_step_end=lambda e, s: steps.append((e, s)))
    message = str(stopped.value)
    assert stopped.value.exit_code == EXIT_NONFINITE
    assert "loss exploded to" in message and "at epoch 2, step 2" in message
    assert "--lr" in message and "--warmup-epochs" in message
    assert steps[-1] == (1, 1), f"the run went on after the explosion: {steps[-3:]}"
    assert torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)["epoch"] == 1
