import math

import pytest
import torch

from gatedssl.methods import METHODS, JointObjective, get_method
from gatedssl.models import gated_resnet18


def make(method="vicreg", **kw):
    torch.manual_seed(0)
    return JointObjective(gated_resnet18(width=8), get_method(method), proj_dim=64, **kw)


def views(n=8):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randn(n, 3, 32, 32, generator=g)


def test_pairs_follow_mode_and_pairing():
    assert make().pairs(True) == [((0, "gated"), (1, "dense"))]
    assert make(pairing="symmetric").pairs(True) == [((0, "gated"), (1, "dense")), ((1, "gated"), (0, "dense"))]
    assert make(pairing="plus-dense").pairs(True) == [((0, "gated"), (1, "dense")), ((0, "dense"), (1, "dense"))]
    assert make(mode="dense").pairs(True) == [((0, "dense"), (1, "dense"))]
    assert make(mode="gated").pairs(True) == [((0, "gated"), (1, "gated"))]
    assert make().pairs(False) == [((0, "dense"), (1, "dense"))], "gate warm-up trains dense only"


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_trains_both_passes_and_the_gates(method):
    objective = make(method)
    terms = objective(*views(), progress=0.0)
    assert torch.isfinite(terms["loss"])
    terms["loss"].backward()
    block = objective.backbone.blocks[0]
    assert block.bn1.dense.weight.grad.abs().sum() > 0, "dense pass must get gradients"
    assert block.bn1.gated.weight.grad.abs().sum() > 0, "gated pass must get gradients"
    assert block.gate.expand.weight.grad.abs().sum() > 0, "gates must get gradients"
    assert 0 < terms["macs_ratio"] <= 1.01
    assert terms["density"].shape == (8,)


def test_budget_and_bound_terms_use_the_gated_pass():
    objective = make(budget=0.3)
    terms = objective(*views(), progress=0.0)
    ratio = terms["macs_ratio"].item()
    assert terms["budget"].item() == pytest.approx(5.0 * (ratio - 0.3) ** 2, rel=1e-4)
    s = math.sqrt(0.3)  # p = 1 at progress 0: every block held at exactly sqrt(t_d)
    expected_bound = torch.mean((terms["density"] - s) ** 2).item()
    assert terms["bound"].item() == pytest.approx(expected_bound, rel=1e-4)
    assert terms["loss"].item() == pytest.approx((terms["ssl"] + terms["budget"] + terms["bound"]).item(), rel=1e-5)


def test_dense_mode_has_no_budget_terms():
    terms = make(mode="dense")(*views(), progress=0.5)
    assert terms["budget"].item() == 0 and terms["bound"].item() == 0
    assert terms["macs_ratio"].item() == 1.0


def test_byol_teacher_follows_the_student():
    objective = make("byol")
    teacher_w = objective.teacher["backbone"].stem_conv.weight
    before = teacher_w.clone()
    with torch.no_grad():
        objective.backbone.stem_conv.weight.add_(1.0)
    objective.update_teacher(progress=0.0)  # momentum 0.99: teacher moves 1% of the way
    torch.testing.assert_close(teacher_w, before + 0.01, rtol=0, atol=1e-5)
    assert not any(p.requires_grad for p in objective.teacher.parameters())
