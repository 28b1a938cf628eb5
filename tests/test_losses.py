"""Each loss against a value worked out by hand (the arithmetic is in the comments)."""

import math

import pytest
import torch

from gatedssl.losses import (
    anneal_p,
    barlow_twins_loss,
    block_densities,
    bound_loss,
    budget_loss,
    byol_loss,
    nt_xent_loss,
    simsiam_loss,
    vicreg_loss,
    vicreg_terms,
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


def _vicreg_reference(z1, z2):
    """VICReg written out with Python loops over lists (no torch), following main_vicreg.py."""
    a, b = z1.tolist(), z2.tolist()
    n, d = len(a), len(a[0])
    invariance = sum((a[i][k] - b[i][k]) ** 2 for i in range(n) for k in range(d)) / (n * d)
    variance, covariance = 0.0, 0.0
    for rows in (a, b):
        means = [sum(rows[i][k] for i in range(n)) / n for k in range(d)]
        x = [[rows[i][k] - means[k] for k in range(d)] for i in range(n)]
        for k in range(d):
            std = math.sqrt(sum(x[i][k] ** 2 for i in range(n)) / (n - 1) + 1e-4)
            variance += max(0.0, 1 - std) / d / 2
        for k in range(d):
            for m in range(d):
                if k != m:
                    covariance += (sum(x[i][k] * x[i][m] for i in range(n)) / (n - 1)) ** 2 / d
    return invariance, variance, covariance


def test_vicreg_three_dims_hand_computed():
    # D = 3 separates "/ D" (3) from a mean over the D(D-1) = 6 off-diagonal entries; both branches non-zero.
    z1 = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 2.0]])
    z2 = torch.tensor([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    # invariance: diffs (1,-1,0), (-1,-1,2) -> squares 1+1+0+1+1+4 = 8 over 6 -> 4/3
    # z1 centred (N - 1 = 1): [[1, 0, -1], [-1, 0, 1]]; unbiased var (1+1)/1 = 2, 0, 2
    #   std sqrt(2.0001) > 1 -> 0 hinge; middle dim std 0.01 -> 0.99; mean over 3 = 0.33, / 2 = 0.165
    # z2 centred = 0: every std 0.01 -> hinge 0.99 each, mean 0.99, / 2 = 0.495
    # cov(z1) = x^T x / 1 = [[2, 0, -2], [0, 0, 0], [-2, 0, 2]]: off-diagonal squares 4 + 4 = 8, / 3
    invariance, variance, covariance = 4 / 3, 0.165 + 0.495, 8 / 3
    terms = [t.item() for t in vicreg_terms(z1, z2)]
    assert terms == pytest.approx([invariance, variance, covariance], rel=1e-6)
    assert vicreg_loss(z1, z2, 2.0, 3.0, 0.5).item() == pytest.approx(2 * invariance + 3 * variance + 0.5 * covariance)


def test_vicreg_matches_loop_reference_on_random_batch():
    torch.manual_seed(1)
    z1, z2 = 0.3 * torch.randn(6, 4), 0.3 * torch.randn(6, 4) + 1.0  # small std, so the variance hinge is active
    expected = _vicreg_reference(z1, z2)
    assert expected[1] > 0.1 and expected[2] > 0.0
    assert [t.item() for t in vicreg_terms(z1, z2)] == pytest.approx(expected, rel=1e-5)
    # the loss is symmetric in the two branches
    assert vicreg_loss(z1, z2).item() == pytest.approx(vicreg_loss(z2, z1).item(), rel=1e-6)


def test_nt_xent_equals_cross_entropy_formulation():
    # SimCLR-style: for each anchor, logits = [positive, the 2N - 2 negatives], label 0.
    torch.manual_seed(2)
    z1, z2 = torch.randn(4, 5), torch.randn(4, 5)
    z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / 0.5
    rows = []
    for i in range(8):
        positive = (i + 4) % 8
        negatives = [j for j in range(8) if j not in (i, positive)]
        rows.append(torch.cat([sim[i, positive].view(1), sim[i, negatives]]))
    expected = torch.nn.functional.cross_entropy(torch.stack(rows), torch.zeros(8, dtype=torch.long))
    assert nt_xent_loss(z1, z2, 0.5).item() == pytest.approx(expected.item(), rel=1e-5)
    # swapping the views relabels anchors only
    assert nt_xent_loss(z2, z1, 0.5).item() == pytest.approx(expected.item(), rel=1e-5)


def test_nt_xent_gradients_are_finite():
    z1, z2 = torch.randn(3, 4, requires_grad=True), torch.randn(3, 4, requires_grad=True)
    nt_xent_loss(z1, z2).backward()
    assert torch.isfinite(z1.grad).all() and torch.isfinite(z2.grad).all()
    assert z1.grad.abs().sum() > 0 and z2.grad.abs().sum() > 0


def test_barlow_identical_standardized_inputs_off_diagonal_only():
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])  # zero mean per dim
    # biased var per dim: (1 + 0 + 1) / 3 = 2/3; biased covariance: (0 + 0 + 1) / 3 = 1/3
    # c = z^T z / 3 / (2/3 + eps): diagonal (2/3) / (2/3 + eps) ~ 1, off-diagonal (1/3) / (2/3 + eps) ~ 1/2
    diag = (2 / 3) / (2 / 3 + 1e-5)
    off = (1 / 3) / (2 / 3 + 1e-5)
    expected = 2 * (diag - 1) ** 2 + 0.0051 * 2 * off**2  # on-diagonal ~ 4.5e-10: off-diagonal only
    assert barlow_twins_loss(z, z.clone()).item() == pytest.approx(expected, rel=1e-5)
    assert barlow_twins_loss(z, z.clone(), lambd=1.0).item() == pytest.approx(0.5, rel=1e-4)
    # batch standardisation: a per-dimension affine change of either branch changes nothing (up to eps)
    assert barlow_twins_loss(3 * z + 2, z - 5, lambd=1.0).item() == pytest.approx(0.5, rel=1e-4)


def test_barlow_epsilon_is_added_to_biased_variance():
    a = math.sqrt(1e-5)
    z = torch.tensor([[-a], [a]])  # D = 1, biased variance exactly 1e-5 = eps
    # c = var / (var + eps) = 1/2 -> (1/2 - 1)^2 = 0.25 (would be 0 without eps, and var 2e-5 if unbiased)
    assert barlow_twins_loss(z, z.clone()).item() == pytest.approx(0.25, rel=1e-4)


def test_budget_loss_gradient():
    macs = torch.tensor([30.0, 50.0], requires_grad=True)
    budget_loss(macs, 100.0, 0.3, weight=5.0).backward()
    # d/dm_i of 5 (mean(m)/100 - 0.3)^2 = 5 * 2 * (0.4 - 0.3) / 100 / 2 = 0.005
    assert macs.grad.tolist() == pytest.approx([0.005, 0.005])


def test_block_densities_is_differentiable_and_accepts_bool_masks():
    soft = torch.tensor([[0.5, 1.0], [0.0, 0.5]], requires_grad=True)  # mean 0.5
    hard = torch.tensor([[True, False, False], [True, True, False]])  # 3 of 6
    d = block_densities([soft, hard])
    assert d.tolist() == pytest.approx([0.5, 0.5])
    d[0].backward()
    assert soft.grad.flatten().tolist() == pytest.approx([0.25] * 4)


def test_bound_loss_gradient_and_bad_mode():
    d = torch.tensor([0.25, 0.9], requires_grad=True)
    bound_loss(d, 0.49, p=1.0).backward()
    # d/dd_l of mean_l (d_l - 0.7)^2 = 2 (d_l - 0.7) / 2: -0.45 pushes block a up, +0.2 pushes block b down
    assert d.grad.tolist() == pytest.approx([-0.45, 0.2])
    with pytest.raises(ValueError):
        bound_loss(d, 0.49, p=1.0, mode="square")


def test_losses_compute_in_float32_under_autocast():
    torch.manual_seed(3)
    layer = torch.nn.Linear(8, 6)
    x1, x2 = torch.randn(5, 8), torch.randn(5, 8)
    calls = {
        "vicreg": lambda a, b: vicreg_loss(a, b),
        "simsiam": lambda a, b: simsiam_loss(a, b),
        "nt_xent": lambda a, b: nt_xent_loss(a, b),
        "byol": lambda a, b: byol_loss(a, b),
        "barlow": lambda a, b: barlow_twins_loss(a, b),
    }
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = layer(x1), layer(x2)
        assert a.dtype == torch.bfloat16
        results = {name: fn(a, b) for name, fn in calls.items()}
    for name, value in results.items():
        assert value.dtype == torch.float32, name
        # same numbers as a float32 call on the same bf16 embeddings: no bf16 arithmetic inside
        assert value.item() == pytest.approx(calls[name](a.float(), b.float()).item(), rel=1e-6), name
    results["vicreg"].backward()
    assert layer.weight.grad is not None and torch.isfinite(layer.weight.grad).all()
