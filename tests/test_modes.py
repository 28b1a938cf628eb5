"""The table of modes: a new mode is one entry; slimmable's sandwich rule and in-place distillation."""

import dataclasses

import pytest
import torch

from gatedssl.methods import JointObjective, Mode, get_method
from gatedssl.methods import modes as modes_module
from gatedssl.models import create_backbone
from gatedssl.training.optim import build_optimizer, warmup_cosine
from gatedssl.training.trainer import train_step


def _objective(mode="slimmable", arch="resnet18", **kw) -> JointObjective:
    torch.manual_seed(0)
    backbone = create_backbone(arch, width=8 if arch.startswith("resnet") else 0.25)
    options = {"widths": (1.0, 0.75, 0.5, 0.25)} if mode == "slimmable" else {}
    return JointObjective(backbone, get_method("vicreg"), 32, mode=mode, **{**options, **kw})


def _views(n=8):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randn(n, 3, 32, 32, generator=g)


def test_a_new_mode_is_one_table_entry(monkeypatch):
    """A toy mode: both views through the gated pass, with no budget. Registering it is all it takes to train."""
    toy = Mode(
        "toy",
        "toy: gated vs gated, no budget",
        subnets=lambda o: ("dense", "gated"),
        ssl_pairs=lambda o, on: [((0, "gated"), (1, "gated"))],
    )
    monkeypatch.setitem(modes_module.MODES, "toy", toy)
    objective = _objective("toy")
    assert objective.subnets == ("dense", "gated")
    optimizer = build_optimizer(objective, "sgd", 0.05, 1e-4, 0.9, 0.02, 1.0)
    scheduler = warmup_cosine(optimizer, 0, 10)
    before = [g.expand.weight.detach().clone() for g in objective.backbone.gates]
    terms = train_step(objective, optimizer, scheduler, *_views(), progress=0.5)
    assert torch.isfinite(terms["loss"]) and terms["budget"] == 0 and terms["bound"] == 0, "the toy mode has no budget losses"
    assert any(not torch.equal(b, g.expand.weight) for b, g in zip(before, objective.backbone.gates)), "the gates learnt from the SSL loss"
    assert float(terms["macs_ratio"]) < 1.0, "the gated side's MACs are reported"


def test_sandwich_rule_draws_the_smallest_and_n_random_widths_each_step():
    objective = _objective(slim_random=1)
    draws = []
    for _ in range(40):
        pairs = objective.mode.distill_pairs(objective.options, True)
        students = {name for (_, name), _ in pairs}
        teachers = {t for _, t in pairs}
        assert teachers <= {(0, "dense"), (1, "dense")}, "every width learns from the full width on the same view"
        assert all(s[0] == t[0] for s, t in pairs)
        assert "width0.25" in students and len(students) == 2
        draws.append(students - {"width0.25"})
    assert {frozenset(d) for d in draws} == {frozenset({"width0.75"}), frozenset({"width0.5"})}, "both middle widths get drawn"
    assert objective.pairs(True) == [((0, "dense"), (1, "dense"))], "the full width learns by the SSL loss"
    none = _objective(slim_random=0)
    assert {name for (_, name), _ in none.mode.distill_pairs(none.options, True)} == {"width0.25"}


def test_distillation_target_is_detached():
    """With the SSL loss switched off, the in-place distillation moves the small widths' projectors but not the full width's."""
    objective = _objective()
    objective.method = dataclasses.replace(objective.method, loss=lambda a, b: a.z.sum() * 0)
    terms = objective(*_views(), progress=0.5)
    terms["loss"].backward()
    assert terms["distill"] > 0
    full = [p.grad for p in objective.projector.parameters()]
    assert all(g is None or g.abs().sum() == 0 for g in full), "no gradient reaches the teacher's head"
    small = [p.grad for p in objective.width_projectors.parameters() if p.grad is not None]
    assert small and any(g.abs().sum() > 0 for g in small)


def test_posthoc_freezes_the_dense_network_and_keeps_its_bn_in_eval():
    objective = _objective("posthoc")
    trainable = {n for n, p in objective.named_parameters() if p.requires_grad}
    assert trainable and all(".gate." in n or ".gated." in n for n in trainable)
    objective.train()
    backbone = objective.backbone
    assert not backbone.stem_bn.training and not backbone.blocks[2].shortcut[1].training and not backbone.blocks[0].bn1.dense.training
    assert backbone.blocks[0].bn1.gated.training and backbone.blocks[0].gate.bn.training
    backbone.eval()
    backbone.train()  # evaluation puts it back this way: the dense BNs must stay frozen
    assert not backbone.stem_bn.training
    finetune = _objective("posthoc", finetune_dense=True)
    assert all(p.requires_grad for n, p in finetune.backbone.named_parameters())
    assert finetune.pairs(True) == [((0, "gated"), (1, "dense"))], "fine-tuning the dense network keeps an SSL loss on it"


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small"])
@pytest.mark.parametrize("mode", ["dual", "dense", "gated", "slimmable", "posthoc"])
def test_every_mode_trains_a_step(mode, arch):
    objective = _objective(mode, arch)
    before = {k: v.clone() for k, v in objective.backbone.state_dict().items()}
    optimizer = build_optimizer(objective, "lars", 0.1, 1e-4, 0.9, 0.02, 1.0)
    scheduler = warmup_cosine(optimizer, 0, 10)
    terms = train_step(objective, optimizer, scheduler, *_views(), progress=0.5, fast=False)
    assert torch.isfinite(terms["loss"])
    assert ("distill" in terms) == (mode in ("slimmable", "posthoc"))
    after = objective.backbone.state_dict()
    moved = [k for k in before if before[k].is_floating_point() and not torch.equal(before[k], after[k])]
    gates_moved = any(".gate.expand." in k for k in moved)
    assert gates_moved == (mode not in ("slimmable", "dense")), moved  # the gates learn where they are used
