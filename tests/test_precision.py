"""The forward pass's float format: what auto picks, and that the switch reaches the step."""

import pytest
import torch

from gatedssl import precision
from gatedssl.config import PretrainConfig, resolve
from gatedssl.factory import build_objective
from gatedssl.training.optim import build_optimizer, warmup_cosine
from gatedssl.training.trainer import train_step


def test_auto_is_bf16_on_cuda_gpus_that_have_it_fp16_on_others_and_explicit_choices_win(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert precision.uses_bf16("cuda", "auto") and not precision.uses_bf16("cuda", "fp32")
    assert precision.grad_scaler("cuda", "auto") is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)  # a V100 or T4
    assert precision.resolve_precision("cuda", "auto") == "fp16"
    assert precision.resolve_precision("cuda", "bf16") == "bf16"
    assert not precision.uses_bf16("cpu", "auto") and precision.resolve_precision("cpu") == "fp32"
    assert precision.uses_bf16("cpu", "bf16") and not precision.uses_bf16("cpu", "fp32")
    with pytest.raises(ValueError, match="unknown precision"):
        precision.uses_bf16("cpu", "fp8")


def _step_loss(mode: str, scaler=None, steps: int = 1) -> tuple[float, torch.dtype]:
    torch.manual_seed(0)
    objective = build_objective(resolve(PretrainConfig(width=8, proj_dim=64, batch_size=16)))
    optimizer = build_optimizer(objective, "lars", 0.1, 1e-4)
    x1, x2 = torch.randn(2, 16, 3, 32, 32)
    seen = []
    hook = objective.backbone.stem_conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    before = [p.detach().clone() for p in objective.parameters()]
    scheduler = warmup_cosine(optimizer, 1, 10)
    first = None
    for _ in range(steps):  # fp16: the first steps overflow at the scaler's initial scale and are skipped
        terms = train_step(objective, optimizer, scheduler, x1, x2, 0.5, precision=mode, scaler=scaler)
        first = terms if first is None else first
    assert any(not torch.equal(a, p) for a, p in zip(before, objective.parameters())), "the step updated the weights"
    hook.remove()
    assert all(p.dtype == torch.float32 for p in objective.parameters())  # weights stay float32
    return first["loss"].item(), seen[0]


def test_bf16_step_runs_convolutions_in_bf16_and_lands_near_fp32():
    loss32, dtype32 = _step_loss("fp32")
    loss16, dtype16 = _step_loss("bf16")
    assert dtype32 == torch.float32 and dtype16 == torch.bfloat16
    assert loss16 != loss32 and abs(loss16 - loss32) < 0.05 * abs(loss32)


def test_fp16_step_scales_the_loss_and_lands_near_fp32():
    loss32, _ = _step_loss("fp32")
    scaler = precision.grad_scaler("cpu", "fp16")
    loss16, dtype16 = _step_loss("fp16", scaler, steps=5)
    assert dtype16 == torch.float16 and 1 < scaler.get_scale() < 2.0**16, "overflowing steps lowered the scale"
    assert abs(loss16 - loss32) < 0.05 * abs(loss32)
