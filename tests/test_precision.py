"""The forward pass's float format: what auto picks, and that the switch reaches the step."""

import pytest
import torch

from gatedssl import precision
from gatedssl.config import PretrainConfig, resolve
from gatedssl.training.optim import build_optimizer, warmup_cosine
from gatedssl.training.trainer import build_objective, train_step


def test_auto_is_bf16_on_cuda_only_and_explicit_choices_win():
    assert precision.uses_bf16("cuda", "auto") and not precision.uses_bf16("cuda", "fp32")
    assert not precision.uses_bf16("cpu", "auto")
    assert precision.uses_bf16("cpu", "bf16") and not precision.uses_bf16("cpu", "fp32")
    with pytest.raises(ValueError, match="unknown precision"):
        precision.uses_bf16("cpu", "fp8")


def _step_loss(mode: str) -> tuple[float, torch.dtype]:
    torch.manual_seed(0)
    objective = build_objective(resolve(PretrainConfig(width=8, proj_dim=64, batch_size=16)))
    optimizer = build_optimizer(objective, "lars", 0.1, 1e-4)
    x1, x2 = torch.randn(2, 16, 3, 32, 32)
    seen = []
    hook = objective.backbone.stem_conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    terms = train_step(objective, optimizer, warmup_cosine(optimizer, 1, 10), x1, x2, 0.5, precision=mode)
    hook.remove()
    assert all(p.dtype == torch.float32 for p in objective.parameters())  # weights stay float32
    return terms["loss"].item(), seen[0]


def test_bf16_step_runs_convolutions_in_bf16_and_lands_near_fp32():
    loss32, dtype32 = _step_loss("fp32")
    loss16, dtype16 = _step_loss("bf16")
    assert dtype32 == torch.float32 and dtype16 == torch.bfloat16
    assert loss16 != loss32 and abs(loss16 - loss32) < 0.05 * abs(loss32)
