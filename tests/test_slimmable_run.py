"""Slimmable SSL end to end on the embedded data: every width learns, evaluates, exports and loads; and the sweep of all systems."""

import json

import pytest
import torch
from conftest import torch_threads

import gatedssl
from gatedssl.cli import main
from gatedssl.config import PretrainConfig
from gatedssl.training import pretrain

WIDTHS = ("width0.75", "width0.5", "width0.25")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("slim") / "run"
    # the embedded recipe on all 5,000 images for 2 epochs (about a minute on 2 cores). Measured 2026-11-28 on this
    # machine: kNN gains over initialisation of 6.1 (dense), 6.3, 5.7 and 7.4 points (widths 0.75, 0.5, 0.25), at
    # 2 threads; at 1 thread width 0.25 gained 1.2 (2026-12-06), so it trains at 2 threads under any runner
    with torch_threads(2):
        config = PretrainConfig(out=str(folder), mode="slimmable", epochs=2, device="cpu", checkpoint_every=100)
        summary = pretrain(config, progress=False)
    return folder, summary


def test_every_width_learns(run):
    _, summary = run
    assert summary["subnets"] == ["dense", *WIDTHS] and summary["widths"] == [1.0, 0.75, 0.5, 0.25]
    for name in summary["subnets"]:
        gain = summary[name]["knn_top1"] - summary["init"][name]["knn_top1"]
        assert gain > 2.5, (name, gain)
    ratios = [summary[n]["macs_ratio"] for n in summary["subnets"]]
    assert ratios == sorted(ratios, reverse=True) and ratios[0] == 1.0 and ratios[-1] < 0.1
    compute = summary["training_compute"]
    assert compute["executed_flops"] > 0 and compute["mask_flops"] == compute["executed_flops"], "slimmable has no masks"


def test_a_width_exports_and_loads_as_a_plain_network(run, tmp_path, capsys):
    folder, summary = run
    out = tmp_path / "w05.pt"
    assert (
        main(["export", "--checkpoint", str(folder / "checkpoints/last.pt"), "--subnet", "width0.5", "--out", str(out), "--no-probe"]) == 0
    )
    assert "width0.5 encoder written" in capsys.readouterr().out
    exported = gatedssl.load(out)
    from_run = gatedssl.load(folder / "checkpoints/last.pt")
    assert exported.subnets == ["width0.5"] and set(from_run.subnets) == {"dense", *WIDTHS}
    x = torch.randint(0, 255, (4, 3, 32, 32), dtype=torch.uint8)
    a, b = exported.embed(x), from_run.embed(x, subnet="width0.5")
    assert a.shape == (4, 32)
    torch.testing.assert_close(a, b)


def test_a_width_quantizes_to_int8_measured_beside_fp32(run, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    folder, _ = run
    out = tmp_path / "w05.onnx"
    argv = ["export", "--checkpoint", str(folder / "checkpoints/last.pt"), "--subnet", "width0.5", "--format", "onnx"]
    assert main([*argv, "--quantize", "int8", "--calibration-images", "64", "--no-probe", "--out", str(out)]) == 0
    recorded = json.loads((folder / "summary.json").read_text())["int8"]["width0.5"]
    assert recorded["int8"]["calibration_images"] == 64 and recorded["int8"]["ops"]["QuantizeLinear"] > 0
    assert abs(recorded["int8"]["change"]) < 5  # kNN of the INT8 width against its fp32 self
    assert gatedssl.load(out).embed(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)).shape == (2, 32)


def test_eval_reproduces_every_width(run, tmp_path):
    folder, summary = run
    assert main(["eval", "--checkpoint", str(folder / "checkpoints/last.pt"), "--out", str(tmp_path / "again.json")]) == 0
    again = json.loads((tmp_path / "again.json").read_text())
    for name in summary["subnets"]:
        assert again[name]["knn_top1"] == pytest.approx(summary[name]["knn_top1"])
    assert again["training_compute"] == summary["training_compute"] or "training_compute" not in again


@pytest.mark.parametrize("subnet,needle", [("width0.3", "has no such width"), ("width2", "--subnet must be one of")])
def test_exporting_a_width_the_run_lacks_is_one_line(run, tmp_path, capsys, subnet, needle):
    folder, _ = run
    code = main(["export", "--checkpoint", str(folder / "checkpoints/last.pt"), "--subnet", subnet, "--out", str(tmp_path / "x.pt")])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and "Traceback" not in err
    assert not (tmp_path / "x.pt").exists()


def test_sweep_trains_every_system_and_compares_them(tmp_path, capsys):
    out = tmp_path / "sw"
    tiny = ["--width", "8", "--proj-dim", "64", "--epochs", "2", "--batch-size", "50", "--limit-per-class", "20", "--device", "cpu"]
    argv = [
        "sweep",
        "--modes",
        "dual",
        "gated",
        "slimmable",
        "posthoc",
        "--budgets",
        "0.5",
        "--out",
        str(out),
        "--quiet",
        "--probe",
        "none",
    ]
    assert main([*argv, *tiny]) == 0
    runs = {p.name: json.loads((p / "summary.json").read_text()) for p in out.iterdir() if (p / "summary.json").exists()}
    assert set(runs) == {"dense", "b0.5", "gated-b0.5", "slimmable", "posthoc-b0.5"}
    assert {name: s["mode"] for name, s in runs.items()} == {
        "dense": "dense",
        "b0.5": "dual",
        "gated-b0.5": "gated",
        "slimmable": "slimmable",
        "posthoc-b0.5": "posthoc",
    }
    posthoc = runs["posthoc-b0.5"]
    assert posthoc["init_from"] == str(out / "dense") and posthoc["epochs"] == 1, "post-hoc trains a fifth of the sweep's epochs"
    assert posthoc["dense"]["knn_top1"] == runs["dense"]["dense"]["knn_top1"]
    assert posthoc["training_compute"]["pretraining"] == runs["dense"]["training_compute"]
    table = json.loads((out / "report/table.json").read_text())
    assert table["compare"], "the report compares the systems"
    assert (out / "report/compare.png").stat().st_size > 0
    assert main([*argv, *tiny]) == 0, "a finished sweep runs again without training"
    assert capsys.readouterr().err.count("complete, skipped") == 5
