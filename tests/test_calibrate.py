"""Budget calibration: one logit offset shared by the gates, so that the thresholded gated pass spends the budget."""

import pytest
import torch
from conftest import cli_error_lines

from gatedssl.cli import main
from gatedssl.config import PretrainConfig
from gatedssl.data.sources import DatasetSplits, ImageSet
from gatedssl.evaluation.evaluate import spread
from gatedssl.models import create_backbone
from gatedssl.training import pretrain
from gatedssl.training.calibrate import TOLERANCE, calibrate_gates, gated_ratio

TINY = dict(width=8, proj_dim=64, epochs=2, batch_size=50, limit_per_class=20, checkpoint_every=1, device="cpu")


def random_splits(n: int = 300, seed: int = 0) -> DatasetSplits:
    g = torch.Generator().manual_seed(seed)
    images = ImageSet(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.zeros(n, dtype=torch.long), ["x"])
    return DatasetSplits("random", images, images, images, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def skewed_network(bias: float):
    """Gates that open nearly every channel (bias > 0) or close nearly all (bias < 0), with per-input variation."""
    torch.manual_seed(0)
    net = create_backbone("resnet18", width=8).eval()
    for gate in net.gates:
        gate.expand.bias.data.normal_(bias, 0.5)
    return net


@pytest.mark.parametrize("bias, target", [(2.0, 0.5), (-2.0, 0.5), (0.0, 0.3)])
def test_the_offset_brings_the_thresholded_ratio_to_the_budget(bias, target):
    net, splits = skewed_network(bias), random_splits()
    before = gated_ratio(net, splits, spread(300, 300), "cpu", "fp32")
    record = calibrate_gates(net, splits, target, "cpu", "fp32", images=300)
    after = gated_ratio(net, splits, spread(300, 300), "cpu", "fp32")
    assert record["ratio_before"] == pytest.approx(before, abs=1e-4) and record["ratio_after"] == pytest.approx(after, abs=1e-4)
    assert abs(before - target) > 0.1, "the network must start off its budget for this test to mean anything"
    assert abs(after - target) <= 0.01, record
    offsets = {float(g.offset) for g in net.gates}
    assert offsets == {record["offset"]} and (record["offset"] > 0) == (before > target), "one shared offset, the right sign"


def test_held_out_images_follow_and_recalibration_composes():
    net, splits, other = skewed_network(1.0), random_splits(), random_splits(seed=1)
    first = calibrate_gates(net, splits, 0.5, "cpu", "fp32", images=300)
    assert abs(gated_ratio(net, other, spread(300, 300), "cpu", "fp32") - 0.5) <= 0.05, "random images the offset never saw"
    second = calibrate_gates(net, splits, 0.4, "cpu", "fp32", images=300)
    assert second["ratio_before"] == pytest.approx(first["ratio_after"], abs=1e-4), "starts from the offset the gates hold"
    assert abs(second["ratio_after"] - 0.4) <= 0.01 and second["offset"] > first["offset"]


def test_an_old_state_dict_without_offsets_loads_as_zero():
    net = create_backbone("resnet18", width=8)
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("gate.offset")}
    assert len(state) < len(net.state_dict())
    for gate in net.gates:
        gate.offset.fill_(3.0)
    net.load_state_dict(state)  # strict
    assert all(float(g.offset) == 0.0 for g in net.gates)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("calibrate")
    made = {}
    for name, kw in {"on": {}, "off": {"calibrate_gates": False}, "dense": {"mode": "dense"}}.items():
        made[name] = pretrain(PretrainConfig(out=str(root / name), budget=0.3, **{**TINY, **kw}), progress=False)
    return root, made


def test_a_run_ends_calibrated_unless_told_not_to(runs):
    root, made = runs
    record = made["on"]["gate_calibration"]
    assert record["target"] == 0.3 and abs(record["ratio_after"] - 0.3) <= max(TOLERANCE, 0.01), record
    assert abs(record["ratio_before"] - 0.3) > abs(record["ratio_after"] - 0.3)
    model = torch.load(root / "on/checkpoints/last.pt", weights_only=True)["model"]
    offsets = {v.item() for k, v in model.items() if k.endswith("gate.offset")}
    assert offsets == {record["offset"]} and record["offset"] != 0
    assert "gate_calibration" not in made["off"] and "gate_calibration" not in made["dense"]
    off = torch.load(root / "off/checkpoints/last.pt", weights_only=True)["model"]
    assert {v.item() for k, v in off.items() if k.endswith("gate.offset")} == {0.0}


def test_calibrate_command_rewrites_checkpoint_and_summary_keeping_the_trained_weights(runs, tmp_path, capsys):
    import json
    import shutil

    run = tmp_path / "off"
    shutil.copytree(runs[0] / "off", run)
    trained = sorted((run / "checkpoints").glob("step_*.pt"))[-1]
    before = trained.read_bytes()
    assert main(["calibrate", "--checkpoint", str(run / "checkpoints/last.pt"), "--budget", "0.25"]) == 0
    assert "0.25" in capsys.readouterr().out
    assert trained.read_bytes() == before, "the step file keeps the weights as trained"
    state = torch.load(run / "checkpoints/last.pt", weights_only=True)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["gate_calibration"] == state["calibration"] and state["calibration"]["target"] == 0.25
    assert abs(state["calibration"]["ratio_after"] - 0.25) <= 0.01
    assert "training_compute" in summary, "what training recorded stays with the run"


def test_calibrate_bad_inputs_are_one_line(runs, tmp_path, capsys):
    root = runs[0]
    cli_error_lines(capsys, ["calibrate", "--checkpoint", str(root / "dense/checkpoints/last.pt")], "dense run", "no gates")
    cli_error_lines(capsys, ["calibrate", "--checkpoint", str(root / "on/checkpoints/last.pt"), "--budget", "0"], "--budget")
    cli_error_lines(capsys, ["calibrate", "--checkpoint", str(root / "on/checkpoints/last.pt"), "--images", "0"], "--images")
    cli_error_lines(capsys, ["calibrate", "--checkpoint", str(tmp_path / "missing.pt")], "not found")
    torn = tmp_path / "torn.pt"
    torn.write_bytes((root / "on/checkpoints/last.pt").read_bytes()[:1000])
    cli_error_lines(capsys, ["calibrate", "--checkpoint", str(torn)], "torn.pt")
    assert torn.stat().st_size == 1000, "a file it cannot read is left as it was"
