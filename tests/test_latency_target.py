"""`gatedssl export --subnet static --latency-ms X`: the search (with a fake timer: not a timing test), the export
it drives, and its bad inputs."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from gatedssl.cli import main
from gatedssl.export import latency_target
from gatedssl.export.latency_target import search

FIXTURE = Path(__file__).parent / "fixtures" / "checkpoint_v0.1.0.pt"


@pytest.mark.parametrize("target", [0.5, 1.0, 3.3, 3.4, 7.0, 9.9, 10.0, 50.0])
def test_the_search_picks_the_first_candidate_meeting_the_target_and_times_its_neighbour_above(target):
    latencies = [10.0 - 0.5 * i for i in range(19)]  # falling along the list: 10.0 ... 1.0
    timed = []

    def latency_of(i):
        timed.append(i)
        return latencies[i]

    chosen, measured = search(len(latencies), latency_of, target)
    meeting = [i for i, ms in enumerate(latencies) if ms <= target]
    assert chosen == (meeting[0] if meeting else None)
    assert measured == {i: latencies[i] for i in timed} and len(timed) == len(set(timed)) <= 7  # binary search, each once
    if chosen is not None and chosen > 0:
        assert measured[chosen - 1] > target  # the next larger network was timed, above the target


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder with its summary (the 0.1.0 checkpoint: ResNet-18 width 8, 1 epoch on the embedded data)."""
    root = tmp_path_factory.mktemp("run")
    (root / "checkpoints").mkdir(parents=True)
    shutil.copy(FIXTURE, root / "checkpoints" / "last.pt")
    (root / "config.yaml").write_text(yaml.safe_dump(torch.load(FIXTURE, weights_only=True)["config"]))
    assert main(["eval", "--checkpoint", str(root / "checkpoints" / "last.pt"), "--device", "cpu"]) == 0
    return root


def test_export_writes_the_largest_network_within_the_target_and_draws_the_curve(run, tmp_path, monkeypatch, capsys):
    # a fake runtime: 10 ms per dense-network MAC ratio, so the target 6 ms means a MACs ratio of at most 0.6
    def fake_timer(runtime, size, threads, batch, int8_calibration=None):
        assert (runtime, threads, batch) == ("torch", 2, 4)
        return lambda net: 10.0 * net.macs(size) / dense_macs

    monkeypatch.setattr("gatedssl.export.run.timer", fake_timer)
    dense_macs = 8_871_936  # ResNet-18 width 8 at 32 px
    out = tmp_path / "small.pt"
    argv = ["export", "--checkpoint", str(run / "checkpoints" / "last.pt"), "--subnet", "static", "--out", str(out)]
    assert main([*argv, "--latency-ms", "6", "--threads", "2", "--batch-size", "4", "--no-probe"]) == 0
    printed = capsys.readouterr().out
    assert "<- written" in printed and (tmp_path / "small.latency.png").stat().st_size > 0
    target = json.loads((run / "summary.json").read_text())["static"]["latency_target"]
    chosen = next(m for m in target["curve"] if m["index"] == target["chosen"])
    assert chosen["latency_ms"] <= 6.0 and chosen["macs_ratio"] <= 0.6
    above = [m for m in target["curve"] if m["index"] == target["chosen"] - 1]
    assert above and above[0]["latency_ms"] > 6.0  # the next larger candidate misses it
    assert all(m["knn_top1"] is not None for m in target["curve"])


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--latency-ms", "0"], "positive number"),
        (["--latency-ms", "-3"], "positive number"),
        (["--latency-ms", "nan"], "positive number"),
        (["--latency-ms", "inf"], "positive number"),
        (["--latency-ms", "5", "--keep-rate", "0.5"], "not both"),
        (["--latency-ms", "5", "--macs-ratio", "0.5"], "not both"),
        (["--latency-ms", "5", "--runtime", "tvm"], "--runtime must be one of onnxruntime, torch"),
        (["--latency-ms", "5", "--threads", "0"], "--threads must be at least 1"),
        (["--threads", "2"], "add --latency-ms"),
        (["--latency-ms", "5", "--runtime", "torch", "--quantize", "int8", "--format", "onnx"], "drop --runtime torch"),
    ],
)
def test_bad_latency_targets_are_one_line_and_write_nothing(run, tmp_path, capsys, extra, needle):
    from conftest import cli_error_lines

    out = tmp_path / "x.pt"
    before = (run / "summary.json").read_text()
    argv = ["export", "--checkpoint", str(run / "checkpoints" / "last.pt"), "--subnet", "static", "--out", str(out), *extra]
    cli_error_lines(capsys, argv, needle)
    assert not out.exists() and not (tmp_path / "x.latency.png").exists() and (run / "summary.json").read_text() == before


def test_a_target_no_candidate_meets_names_the_fastest_latency_reached(run, tmp_path, monkeypatch, capsys):
    from conftest import cli_error_lines

    monkeypatch.setattr("gatedssl.export.run.timer", lambda *a, **k: lambda net: 7.25)
    out = tmp_path / "x.pt"
    argv = ["export", "--checkpoint", str(run / "checkpoints" / "last.pt"), "--subnet", "static", "--out", str(out)]
    cli_error_lines(capsys, [*argv, "--latency-ms", "1"], "took 7.25 ms; ask for at least that")
    assert not out.exists() and not (tmp_path / "x.latency.png").exists()


def test_the_real_timer_measures_a_network_under_both_runtimes():
    from gatedssl.export.deploy import plain_network
    from gatedssl.models import create_backbone

    pytest.importorskip("onnxruntime")
    net = plain_network(create_backbone("resnet18", width=8).eval(), "dense")
    for runtime in latency_target.RUNTIMES:
        assert 0 < latency_target.timer(runtime, 32, 1, 1)(net) < 1000
