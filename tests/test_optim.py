import math

import pytest
import torch
from torch import nn

from gatedssl.models import gated_resnet18
from gatedssl.training.optim import LARS, build_optimizer, param_groups, warmup_cosine


def test_lars_step_matches_hand_computation():
    w = nn.Parameter(torch.tensor([3.0, 4.0]))  # |w| = 5
    w.grad = torch.tensor([0.6, 0.8])  # |g| = 1
    lr, wd, eta = 0.1, 0.01, 0.02
    opt = LARS([dict(params=[w], lars=True, weight_decay=wd)], lr=lr, momentum=0.9, eta=eta)
    opt.step()
    trust = eta * 5.0 / (1.0 + wd * 5.0)  # 0.0952..., below lr so clip (trust / lr, max 1) keeps trust / lr
    scale = min(trust / lr, 1.0)
    update = (torch.tensor([0.6, 0.8]) + wd * torch.tensor([3.0, 4.0])) * scale
    torch.testing.assert_close(w.detach(), torch.tensor([3.0, 4.0]) - lr * update)
    # second step: momentum buffer carries the first update
    w.grad = torch.tensor([0.6, 0.8])
    prev = w.detach().clone()
    opt.step()
    p_norm = prev.norm().item()
    trust2 = min(eta * p_norm / (1.0 + wd * p_norm) / lr, 1.0)
    update2 = 0.9 * update + (torch.tensor([0.6, 0.8]) + wd * prev) * trust2
    torch.testing.assert_close(w.detach(), prev - lr * update2)


def test_groups_without_lars_are_plain_sgd_without_decay():
    b = nn.Parameter(torch.tensor([1.0]))
    b.grad = torch.tensor([0.5])
    opt = LARS([dict(params=[b], lars=False, weight_decay=0.0)], lr=0.1, momentum=0.9)
    opt.step()
    assert b.item() == pytest.approx(1.0 - 0.1 * 0.5)


def test_param_groups_exclude_gates_biases_and_norms_from_decay():
    net = gated_resnet18(width=8)
    groups = {g["name"]: g for g in param_groups(net, 1e-4)}
    gate_ids = {id(p) for g in net.gates for p in g.parameters()}
    assert {id(p) for p in groups["gates"]["params"]} == gate_ids
    assert groups["gates"]["lars"] is False
    assert groups["gates"]["weight_decay"] == 0 and groups["biases_and_norms"]["weight_decay"] == 0
    assert groups["weights"]["weight_decay"] == 1e-4
    assert all(p.ndim > 1 for p in groups["weights"]["params"])
    total = sum(len(g["params"]) for g in groups.values())
    assert total == len(list(net.parameters()))
    for name in ("lars", "sgd", "adamw"):
        opt = build_optimizer(net, name, 0.1, 1e-4, gate_lr_scale=10.0)
        lrs = {g["name"]: g["lr"] for g in opt.param_groups}
        assert lrs == pytest.approx({"weights": 0.1, "gates": 1.0, "biases_and_norms": 0.1})


def test_warmup_then_cosine():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = warmup_cosine(opt, warmup_steps=4, total_steps=14)
    lrs = []
    for _ in range(14):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4] == pytest.approx(1.0)
    assert lrs[9] == pytest.approx(0.5 * (1 + math.cos(math.pi * 5 / 10)))
    assert lrs[-1] < 0.05
