"""Each loss against a value worked out by hand (the arithmetic is in the comments)."""

import math

import pytest
import torch

from gatedssl.losses import (
    anneal_p, barlow_twins_loss, block_densities, bound_loss, budget_loss, byol_loss, nt_xent_loss, simsiam_loss,
    vicreg_loss, vicreg_terms,
)


def test_vicreg_hand_computed():
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = torch.zeros(2, 2)
    # invariance: mean of squared differences = (1 + 0 + 0 + 1) / 4
    invariance = 0.5
    # variance: z1 centred = [[.5,-.5],[-.5,.5]], unbiased var 0.5 per dim; z2 var 0
    variance = (1 - math.sqrt(0.5 + 1e-4)) / 2 + (1 - math.sqrt(1e-4)) / 2
    # covariance: cov(z1) = [[.5,-.5],[-.5,.5]], off-diagonal squares 0.25 + 0.25, / D=2; cov(z2) = 0
    covariance = 0.25
    terms = vicreg_terms(z1, z2)
    assert [t.item() for t in terms] == pytest.approx([invariance, variance, covariance], rel=1e-6)
    expected = 25 * invariance + 25 * variance + 1 * covariance  # 28.7853
    assert vicreg_loss(z1, z2).item() == pytest.approx(expected, rel=1e-6)
    assert vicreg_loss(z1, z2, 1.0, 0.0, 0.0).item() == pytest.approx(0.5)


def test_simsiam_and_byol_hand_computed_and_stop_gradient():
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    z = torch.tensor([[1.0, 1.0], [0.0, -1.0]], requires_grad=True)
    # cosines: 1/sqrt(2) and -1
    c1, c2 = 1 / math.sqrt(2), -1.0
    loss = simsiam_loss(p, z)
    assert loss.item() == pytest.approx(-(c1 + c2) / 2)
    assert byol_loss(p, z).item() == pytest.approx(((2 - 2 * c1) + (2 - 2 * c2)) / 2)
    (loss + byol_loss(p, z)).backward()
    assert z.grad is None, "the target must be detached"
    assert p.grad is not None and p.grad.abs().sum() > 0


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_nt_xent_hand_computed(temperature):
    z = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # normalised: e1, e2; both views identical
    # every anchor: positive similarity 1, two negatives with similarity 0 (self excluded)
    expected = -math.log(math.exp(1 / temperature) / (math.exp(1 / temperature) + 2))
    assert nt_xent_loss(z, z.clone(), temperature).item() == pytest.approx(expected, rel=1e-6)


def test_nt_xent_equals_explicit_loop():
    torch.manual_seed(0)
    z1, z2 = torch.randn(5, 3), torch.randn(5, 3)
    z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    total = 0.0
    for i in range(10):
        positive = (i + 5) % 10
        denominator = sum(math.exp(float(z[i] @ z[j]) / 0.2) for j in range(10) if j != i)
        total += -math.log(math.exp(float(z[i] @ z[positive]) / 0.2) / denominator)
    assert nt_xent_loss(z1, z2, 0.2).item() == pytest.approx(total / 10, rel=1e-5)


def test_barlow_twins_hand_computed():
    z1 = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    z2 = torch.tensor([[1.0, -1.0], [3.0, -3.0]])
    # standardised (biased var 1 per dim, eps 1e-5): a = [[-1,-1],[1,1]]/s, b = [[-1,1],[1,-1]]/s, s^2 = 1 + 1e-5
    r = 1 / (1 + 1e-5)
    # c = a^T b / 2 = [[r, -r], [r, -r]]
    on_diagonal = (r - 1) ** 2 + (-r - 1) ** 2
    off_diagonal = r**2 + r**2
    assert barlow_twins_loss(z1, z2).item() == pytest.approx(on_diagonal + 0.0051 * off_diagonal, rel=1e-5)
    assert barlow_twins_loss(z1, z2, lambd=0.0).item() == pytest.approx(on_diagonal, rel=1e-5)


def test_budget_loss_hand_computed():
    macs = torch.tensor([30.0, 50.0])  # mean 40 of dense 100 -> ratio 0.4
    assert budget_loss(macs, 100.0, 0.3).item() == pytest.approx(5.0 * (0.4 - 0.3) ** 2)
    assert budget_loss(macs, 100.0, 0.4).item() == pytest.approx(0.0)
    assert budget_loss(macs, 100.0, 0.3, weight=1.0).item() == pytest.approx(0.01)


def test_block_densities_and_bound_loss_hand_computed():
    block_a = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])  # 2 of 8 -> 0.25
    block_b = torch.tensor([[1.0] * 9 + [0.0], [1.0] * 9 + [0.0]])  # 18 of 20 -> 0.9
    d = block_densities([block_a, block_b])
    assert d.tolist() == pytest.approx([0.25, 0.9])
    # target 0.49 -> s = sqrt(0.49) = 0.7
    # p = 1: bounds [0.7, 0.7]: (0.7 - 0.25)^2 = 0.2025, (0.9 - 0.7)^2 = 0.04, mean 0.12125
    assert bound_loss(d, 0.49, p=1.0).item() == pytest.approx(0.12125)
    # p = 0.5: bounds [0.35, 0.85]: (0.35 - 0.25)^2 = 0.01, (0.9 - 0.85)^2 = 0.0025, mean 0.00625
    assert bound_loss(d, 0.49, p=0.5).item() == pytest.approx(0.00625)
    # p = 0: bounds [0, 1]: nothing to pay
    assert bound_loss(d, 0.49, p=0.0).item() == 0.0
    # linear target s = 0.49 at p = 1: (0.49 - 0.25)^2 = 0.0576, (0.9 - 0.49)^2 = 0.1681, mean 0.11285; gamma 2 doubles
    assert bound_loss(d, 0.49, p=1.0, weight=2.0, mode="linear").item() == pytest.approx(2 * 0.11285)


def test_anneal_p():
    assert anneal_p(0.0) == 1.0
    assert anneal_p(1.0) == pytest.approx(math.exp(-10))
    assert anneal_p(0.5, 4.0) == pytest.approx(math.exp(-2))  # a 20-epoch run at epoch 10 anneals as 500 at 250
