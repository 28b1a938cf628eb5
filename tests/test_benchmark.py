"""The benchmarks run end to end and print their measurements side by side with their ratios (no speed is asserted)."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(name: str, args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    """benchmarks/NAME.py run as a user runs it, from the source tree."""
    return subprocess.run(
        [sys.executable, str(ROOT / f"benchmarks/{name}.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )


def test_throughput_benchmark_prints_ours_baseline_ratio_and_stages():
    args = [
        "--device",
        "cpu",
        "--width",
        "8",
        "--proj-dim",
        "64",
        "--batch-size",
        "16",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--epoch-images",
        "160",
        "--workers",
        "1",
    ]
    proc = run_benchmark("throughput", args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    ours = float(re.search(r"^ours\s+([\d.]+) img/s", out, re.M).group(1))
    base = float(re.search(r"^baseline\s+([\d.]+) img/s", out, re.M).group(1))
    ratio = float(re.search(r"ratio ours/baseline: ([\d.]+)x", out).group(1))
    assert ours > 0 and base > 0 and abs(ratio - ours / base) < 0.01 + 0.01 * ratio
    stages = dict(re.findall(r"(data|augmentation|forward|backward|optimizer) ([\d.]+)", out.split("stage breakdown")[1]))
    assert set(stages) == {"data", "augmentation", "forward", "backward", "optimizer"}
    assert re.search(r"step FLOPs [\d.]+ G per batch", out)


def test_latency_benchmark_prints_every_variant_with_its_ratios(tmp_path):
    """Tiny settings: the table's shape and its arithmetic, the gate biases reaching the density asked for, the plot."""
    args = [
        "--sizes",
        "32",
        "--batches",
        "1",
        "2",
        "--threads",
        "1",
        "--densities",
        "0.3",
        "--width",
        "8",
        "--reps",
        "1",
        "--budget-s",
        "0",
        "--group",
        "--plot",
        str(tmp_path / "latency.png"),
    ]
    proc = run_benchmark("latency", args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "SETS THE GATE BIASES".lower() in (ROOT / "benchmarks/latency.py").read_text().lower() and "gate biases set" in proc.stdout
    rows = [line.split() for line in proc.stdout.splitlines() if re.match(r"^\s+32\s+[12]\s", line)]
    variants = {" ".join(r[4:-4]) for r in rows}
    assert variants == {
        "dense",
        "dense (channels_last)",
        "masked gated",
        "skipping gated",
        "skipping gated (group)",
        "static",
        "static (x16 channels)",
        "dense (onnxruntime)",
        "static (onnxruntime)",
        "static x16 (onnxruntime)",
    }
    for batch in ("1", "2"):
        cell = {" ".join(r[4:-4]): [float(v) for v in r[-4:]] for r in rows if r[1] == batch}
        dense_ms = cell["dense"][0]
        for median, p90, latency_ratio, _ in cell.values():
            rounding = 0.0006 + latency_ratio * (0.006 / median + 0.006 / dense_ms)  # ms printed to 2 decimals, ratios to 3
            assert p90 >= median > 0 and abs(latency_ratio - median / dense_ms) < rounding
        assert cell["dense"][3] == 1.0 and 0.2 < cell["skipping gated"][3] < 0.45  # density 0.3 reached (gates add a little)
        assert cell["static"][3] <= cell["skipping gated"][3]  # the largest static network within the gated MACs
    assert (tmp_path / "latency.png").stat().st_size > 10_000


def test_latency_benchmark_runs_any_arch():
    args = ["--arch", "mobilenet_v3_small", "--width", "0.25", "--sizes", "32", "--batches", "1", "--threads", "1"]
    proc = run_benchmark("latency", [*args, "--densities", "0.3", "--reps", "1", "--budget-s", "0", "--no-onnx"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "mobilenet_v3_small width 0.25" in proc.stdout
    cell = {
        " ".join(r[4:-4]): [float(v) for v in r[-4:]] for r in (line.split() for line in proc.stdout.splitlines()) if r[:2] == ["32", "1"]
    }
    assert set(cell) == {"dense", "dense (channels_last)", "masked gated", "skipping gated", "static", "static (x16 channels)"}
    assert cell["dense (channels_last)"][3] == 1.0
    assert cell["static"][3] <= cell["skipping gated"][3] < 1.0


def test_widths_benchmark_prints_every_width_with_its_ratios():
    args = ["--width", "8", "--batch", "4", "--reps", "1", "--widths", "0.5", "0.25"]
    proc = run_benchmark("widths", args)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split("|")[1:-1] for line in proc.stdout.splitlines() if line.startswith("| dense") or line.startswith("| width")]
    assert [r[0].strip() for r in rows] == ["dense", "width0.5", "width0.25"]
    macs_ratio = [float(r[2]) for r in rows]
    assert macs_ratio[0] == 1.0 and macs_ratio[1] > macs_ratio[2] > 0
    assert all(float(r[4]) > 0 and float(r[6]) > 0 for r in rows), "the time ratios are printed, whatever they are"


def test_distributed_benchmark_prints_one_process_ranks_and_efficiency():
    proc = run_benchmark("distributed", ["--epochs", "2", "--limit-per-class", "10", "--batch-size", "32"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    figures = {
        key: float(re.search(pattern, proc.stdout, re.M).group(1))
        for key, pattern in {
            "one": r"^  1 process \(\d+ threads?\)\s+([\d.]+)",
            "ranks": r"^  2 ranks .*?\s([\d.]+)\s+ratio to 1 process",
            "alone": r"^  1 process, batch 16, .*?\s([\d.]+)\s+x2 = ideal",
            "efficiency": r"scaling efficiency \(ranks / ideal\)\s+([\d.]+)",
        }.items()
    }
    assert all(v > 0 for v in figures.values())
    assert abs(figures["efficiency"] - figures["ranks"] / (2 * figures["alone"])) < 0.01


def test_divergence_grid_runs_the_cli_and_counts_explosions(tmp_path):
    """Two one-epoch runs of the real command (one fails on purpose: an lr of 1e6 must explode and be counted)."""
    common = ["--dataset", "embedded", "--out", str(tmp_path), "--epochs", "1", "--widths", "8", "--modes", "dense", "--batch-size", "50"]
    proc = run_benchmark("divergence_grid", [*common, "--seeds", "0", "--", "--limit-per-class", "20", "--proj-dim", "64"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "exploded or non-finite: 0 of 1 runs" in proc.stdout and (tmp_path / "grid.png").stat().st_size > 0
    proc = run_benchmark("divergence_grid", [*common, "--seeds", "1", "--", "--limit-per-class", "20", "--proj-dim", "64", "--lr", "1e6"])
    assert "exploded or non-finite: 1 of 1 runs" in proc.stdout, proc.stdout[-2000:]


@pytest.mark.parametrize("arch, width", [("resnet18", "8"), ("mobilenet_v3_small", "0.25")])
def test_skipping_ab_times_the_committed_executor_against_the_working_tree(arch, width):
    args = ["--old", "HEAD", "--arch", arch, "--width", width, "--sizes", "32", "--densities", "0.5", "--rounds", "1"]
    proc = run_benchmark("skipping_ab", args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("32 px d 0.5"))
    ratio = float(re.search(r"new/old ([0-9.]+)", line).group(1))
    assert 0.2 < ratio < 5.0, line  # the same network, masks and input timed twice: a ratio, whatever the code's speed


@pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")), reason="no C compiler: no kernel to time")
def test_the_gather_kernel_benchmark_prints_both_times_and_their_ratio():
    proc = run_benchmark("gather_kernel", ["--rounds", "1", "--repeats", "3", "--copies", "2"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith(("ResNet", "(past", "(not"))]
    assert len(rows) == 8, proc.stdout
    for line in rows:
        torch_ms, kernel_ms, ratio = (float(v) for v in line.split()[-3:])
        assert ratio == pytest.approx(kernel_ms / torch_ms, abs=0.01), line
