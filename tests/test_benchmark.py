"""The throughput benchmark runs end to end and prints both measurements and their ratio (no speed is asserted)."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_throughput_benchmark_prints_ours_baseline_ratio_and_stages():
    args = ["--device", "cpu", "--width", "8", "--proj-dim", "64", "--batch-size", "16", "--steps", "2", "--warmup", "1",
            "--epoch-images", "160", "--workers", "1"]
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks/throughput.py"), *args], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    ours = float(re.search(r"^ours\s+([\d.]+) img/s", out, re.M).group(1))
    base = float(re.search(r"^baseline\s+([\d.]+) img/s", out, re.M).group(1))
    ratio = float(re.search(r"ratio ours/baseline: ([\d.]+)x", out).group(1))
    assert ours > 0 and base > 0 and abs(ratio - ours / base) < 0.01 + 0.01 * ratio
    stages = dict(re.findall(r"(data|augmentation|forward|backward|optimizer) ([\d.]+)", out.split("stage breakdown")[1]))
    assert set(stages) == {"data", "augmentation", "forward", "backward", "optimizer"}
    assert re.search(r"step FLOPs [\d.]+ G per batch", out)
