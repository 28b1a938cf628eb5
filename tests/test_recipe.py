"""The reference recipe: one test per choice where the reference code differs from the papers.

Each test asserts what `--recipe reference` (the default on real datasets) resolves to AND
what that choice computes, so reverting either the default or the computation fails it.
"""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from conftest import NEW_IN_FORMAT_2

from gatedssl import losses
from gatedssl.config import PretrainConfig, resolve, upgrade_stored, validate, warmup_steps
from gatedssl.factory import build_objective
from gatedssl.methods.registry import Embeddings
from gatedssl.training.optim import build_optimizer

REFERENCE = resolve(PretrainConfig(dataset="cifar10"))
SMALL = dict(width=8, proj_dim=64)


def solo_learn_vicreg(z1, z2, sim=25.0, var=25.0, cov=1.0):
    """solo-learn's losses/vicreg.py, written out: the form the paper's reference code trains with."""
    n, d = z1.shape
    invariance = F.mse_loss(z1, z2)
    std1, std2 = torch.sqrt(z1.var(dim=0) + 1e-4), torch.sqrt(z2.var(dim=0) + 1e-4)
    variance = torch.mean(F.relu(1 - std1)) + torch.mean(F.relu(1 - std2))
    a, b = z1 - z1.mean(dim=0), z2 - z2.mean(dim=0)
    off = ~torch.eye(d, dtype=torch.bool)
    covariance = ((a.T @ a) / (n - 1))[off].pow(2).sum() / d + ((b.T @ b) / (n - 1))[off].pow(2).sum() / d
    return sim * invariance + var * variance + cov * covariance


def test_reference_is_the_default_on_real_datasets_and_embedded_on_the_demo():
    assert resolve(PretrainConfig()).recipe == "embedded"
    for dataset in ("cifar10", "cifar100", "stl10", "imagefolder"):
        assert resolve(PretrainConfig(dataset=dataset)).recipe == "reference"
    assert resolve(PretrainConfig(recipe="reference")).stem_padding == 2, "--recipe names the choices on any dataset"
    assert resolve(PretrainConfig(dataset="cifar10", recipe="reference", stem_padding=1)).stem_padding == 1, (
        "a single choice overrides the recipe"
    )


def test_vicreg_variance_is_summed_as_solo_learn_and_weights_mean_what_they_say():
    assert (REFERENCE.vicreg_variance, REFERENCE.vicreg_weights) == ("sum", [25.0, 25.0, 1.0])
    torch.manual_seed(0)
    z1, z2 = torch.randn(64, 32) * 0.5, torch.randn(64, 32) * 0.5 + 0.1  # std < 1: the variance hinge is active
    method = build_objective(dataclasses.replace(REFERENCE, **SMALL)).method
    assert method(Embeddings(z1), Embeddings(z2)).item() == pytest.approx(solo_learn_vicreg(z1, z2).item(), rel=1e-6)
    weighted = build_objective(dataclasses.replace(REFERENCE, vicreg_weights=[1.0, 2.0, 3.0], **SMALL)).method
    assert weighted(Embeddings(z1), Embeddings(z2)).item() == pytest.approx(solo_learn_vicreg(z1, z2, 1.0, 2.0, 3.0).item(), rel=1e-6)
    # the original form (the library default, and the embedded recipe) halves the variance term
    _, var_sum, _ = losses.vicreg_terms(z1, z2, "sum")
    _, var_mean, _ = losses.vicreg_terms(z1, z2)
    assert var_sum.item() == pytest.approx(2 * var_mean.item()) and var_mean.item() > 0
    assert losses.vicreg_loss(z1, z2).item() == pytest.approx(solo_learn_vicreg(z1, z2).item() - 25 * var_mean.item(), rel=1e-6)


def test_cifar_stem_padding_two_gives_the_reference_macs_count():
    assert REFERENCE.stem_padding == 2
    x = torch.zeros(2, 3, 32, 32)
    with torch.no_grad():
        reference = build_objective(REFERENCE).backbone.eval()(x)
        old = build_objective(dataclasses.replace(REFERENCE, stem_padding=1)).backbone.eval()(x)
    assert reference.dense_macs == 703_560_448  # the reference's own count at 32 px, width 64
    assert old.dense_macs == 555_417_600


def test_bound_loss_density_is_the_l1_norm_of_the_hard_mask():
    assert REFERENCE.bound_density == "l1" and build_objective(dataclasses.replace(REFERENCE, **SMALL)).bound_density == "l1"
    mask = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 1.0]], requires_grad=True)  # 4 of 8 channels open
    grads = {}
    for form in ("l1", "mean"):
        density = losses.block_densities([mask], form)
        assert density.item() == 0.5
        mask.grad = None
        losses.bound_loss(density, target=0.81, p=1.0).backward()  # lower bound 0.9: pushes the density up
        grads[form] = mask.grad.clone()
    closed = mask.detach() == 0
    assert torch.all(grads["l1"][closed] == 0), "a closed channel gets no gradient from the reference's bound loss"
    assert torch.all(grads["l1"][~closed] < 0)
    assert torch.all(grads["mean"] < 0), "the mean form pushes every gate"


def test_gates_have_no_bias_and_go_through_lars_in_their_own_group():
    assert (REFERENCE.gate_bias, REFERENCE.gate_lars) == (False, True)
    objective = build_objective(dataclasses.replace(REFERENCE, **SMALL))
    assert all(gate.expand.bias is None for gate in objective.backbone.gates)
    optimizer = build_optimizer(objective, "lars", 0.6, 1e-4, gate_lr_scale=REFERENCE.gate_lr_scale, gate_lars=REFERENCE.gate_lars)
    groups = {g["name"]: g for g in optimizer.param_groups}
    gate_weights = {id(p) for gate in objective.backbone.gates for p in (gate.reduce.weight, gate.expand.weight)}
    assert {id(p) for p in groups["gates"]["params"]} == gate_weights
    assert groups["gates"]["lars"] and groups["gates"]["weight_decay"] == 0 and groups["gates"]["lr"] == 0.6
    assert not groups["gate_biases_and_norms"]["lars"]
    embedded = build_objective(resolve(PretrainConfig(**SMALL)))
    assert all(gate.expand.bias is not None for gate in embedded.backbone.gates)


def test_crops_are_bicubic_and_blur_follows_the_dataset():
    assert REFERENCE.crop_interpolation == "bicubic"
    blur = {d: resolve(PretrainConfig(dataset=d)).blur_p for d in ("cifar10", "cifar100", "stl10", "imagefolder")}
    assert blur == {"cifar10": [0.0, 0.0], "cifar100": [0.0, 0.2], "stl10": [0.0, 0.0], "imagefolder": [0.0, 0.0]}
    assert resolve(PretrainConfig(dataset="imagefolder", recipe="embedded")).blur_p == [0.5, 0.5]  # 0.1.0's rule by size


def test_bounds_clock_restarts_when_the_gates_switch_on():
    assert REFERENCE.anneal_from == "gates"
    cfg = dataclasses.replace(REFERENCE, gate_warmup_epochs=10, epochs=100, **SMALL)
    objective = build_objective(cfg)
    assert objective.anneal_offset == pytest.approx(0.1)
    masks = [torch.full((4, c), 0.0) for c in objective.backbone.gated_channels]  # all closed: only the lower bound acts
    density = losses.block_densities(masks)
    p_at_switch_on = losses.anneal_p(max(0.1 - objective.anneal_offset, 0.0), cfg.anneal)
    assert p_at_switch_on == 1.0  # the bounds start closed again, as at epoch 0 of a run without warm-up
    assert build_objective(dataclasses.replace(cfg, anneal_from="start")).anneal_offset == 0.0
    assert (
        losses.bound_loss(density, cfg.budget, p_at_switch_on).item()
        > losses.bound_loss(density, cfg.budget, losses.anneal_p(0.1, cfg.anneal)).item()
    )


def test_bounds_move_once_per_epoch():
    assert REFERENCE.anneal_clock == "epoch"
    cfg = dataclasses.replace(REFERENCE, epochs=100, budget=1.0, **SMALL)  # bounds [p, 1]: the lower one holds half-open gates
    objective = build_objective(cfg)
    assert objective.anneal_epochs == 100 and build_objective(dataclasses.replace(cfg, anneal_clock="step")).anneal_epochs is None
    x1, x2 = torch.randn(2, 8, 3, 32, 32)

    def bound(progress):  # the same masks each call: the same noise
        torch.manual_seed(0)
        return objective(x1, x2, progress)["bound"].item()

    assert bound(0.01) == bound(0.015) != bound(0.02), "within an epoch p stays; it moves at the next"
    assert bound(0.01) > 0
    objective.anneal_epochs = None
    assert bound(0.01) != bound(0.015), "per step it moves within the epoch"


@pytest.mark.parametrize(
    "run, epochs, steps_per_epoch, expected",
    [
        ("the reference's CIFAR-10 run: 10 epochs", 500, 97, 970),
        ("40 epochs over 2,000 images at batch 128: a quarter of the run", 40, 15, 150),
        ("the embedded demo under the reference recipe", 16, 39, 156),
        ("a medium run: the 500-step floor", 100, 20, 500),
        ("a user's first trial, 3 epochs over 2,000 images: warms up throughout", 3, 15, 150),
        ("10 epochs over 2,000 images: a quarter would be 37 steps", 10, 15, 150),
    ],
)
def test_warmup_steps(run, epochs, steps_per_epoch, expected):
    assert warmup_steps(resolve(PretrainConfig(dataset="cifar10", epochs=epochs)), steps_per_epoch) == expected, run


def test_the_demo_warms_up_by_the_same_rule_and_explicit_epochs_win():
    assert warmup_steps(resolve(PretrainConfig()), 39) == 156  # 0.1.0's 2% gave 12 steps: 4-6 kNN points lower (BENCHMARKS.md)
    assert warmup_steps(resolve(PretrainConfig(dataset="cifar10", warmup_epochs=4)), 15) == 60


def test_runs_without_the_new_keys_read_as_gatedssl_0_1_0():
    stored = {k: v for k, v in resolve(PretrainConfig(dataset="cifar10")).to_dict().items() if k not in NEW_IN_FORMAT_2}
    old = PretrainConfig(**upgrade_stored(stored))
    assert not validate(old)
    assert (
        old.recipe,
        old.stem_padding,
        old.gate_bias,
        old.gate_lars,
        old.vicreg_variance,
        old.bound_density,
        old.anneal_from,
        old.crop_interpolation,
        old.blur_p,
    ) == ("embedded", 1, True, False, "mean", "mean", "start", "bilinear", [0.0, 0.0])


def test_bad_recipe_settings_are_one_line_each():
    problems = validate(resolve(PretrainConfig(recipe="fast", vicreg_weights=[25.0, -1.0, 1.0], blur_p=[0.0, 2.0], stem_padding=3)))
    assert any(p.startswith("recipe:") for p in problems)
    assert any(p.startswith("stem_padding:") for p in problems)
    problems = validate(resolve(PretrainConfig(vicreg_weights=[25.0, -1.0, 1.0], blur_p=[0.0, 2.0])))
    assert any(p.startswith("vicreg_weights:") for p in problems) and any(p.startswith("blur_p:") for p in problems)
    assert any(p.startswith("vicreg_weights:") for p in validate(resolve(PretrainConfig(vicreg_weights=[25.0, 1.0]))))


def test_cli_reference_run_records_every_choice(tmp_path, capsys):
    """`gatedssl pretrain --dataset cifar10 --data-dir DIR --recipe reference ...` on a generated CIFAR-like folder."""
    import json

    import numpy as np
    import yaml
    from PIL import Image

    from gatedssl.cli import main

    rng = np.random.default_rng(0)
    for split, count in (("train", 20), ("test", 4)):
        for c in range(10):
            folder = tmp_path / "cifar" / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "run"
    code = main(
        [
            "pretrain",
            "--dataset",
            "cifar10",
            "--data-dir",
            str(tmp_path / "cifar"),
            "--recipe",
            "reference",
            "--epochs",
            "1",
            "--limit-per-class",
            "20",
            "--batch-size",
            "64",
            "--device",
            "cpu",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0, capsys.readouterr().err
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert {k: config[k] for k in (*NEW_IN_FORMAT_2[:-1], "gate_lr_scale")} == {
        "recipe": "reference",
        "stem_padding": 2,
        "gate_bias": False,
        "gate_lars": True,
        "vicreg_variance": "sum",
        "vicreg_weights": [25.0, 25.0, 1.0],
        "bound_density": "l1",
        "anneal_from": "gates",
        "anneal_clock": "epoch",
        "crop_interpolation": "bicubic",
        "blur_p": [0.0, 0.0],
        "gate_lr_scale": 1.0,
    }
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["recipe"], summary["stem_padding"], summary["warmup_steps"]) == ("reference", 2, 150)  # 3 steps: all warm-up
    assert summary["dense"]["macs"] == 703_560_448
