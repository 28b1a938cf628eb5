"""A latency target instead of a MACs target: the largest static network whose measured median meets it, here.

Candidates are static networks at MACs ratios 1.0, 0.95, ..., 0.05 of the dense network (each the smallest keep
rate within its ratio, so each keeps more channels than the next). Latency falls as channels go, so a binary
search over them measures about log2(20) + 2 of them, not all: the result is the first candidate (the most channels)
whose median meets the target, with the candidate before it measured above the target.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import UserError

RUNTIMES = ("onnxruntime", "torch")
RATIOS = tuple(round(1 - 0.05 * i, 2) for i in range(20))  # 1.0 ... 0.05


@dataclass
class Measured:
    index: int
    keep_rate: float
    macs_ratio: float
    latency_ms: float
    knn_top1: float | None = None


def search(count: int, latency_of: Callable[[int], float], target_ms: float) -> tuple[int | None, dict[int, float]]:
    """Candidates 0..count-1 run from the most channels to the fewest. Returns the first whose latency meets the
    target (None if none does) and every latency measured. Assumes latency falls along the list (measured
    medians do, up to noise)."""
    measured: dict[int, float] = {}

    def at(i: int) -> float:
        if i not in measured:
            measured[i] = latency_of(i)
        return measured[i]

    if at(count - 1) > target_ms:
        return None, measured
    if at(0) <= target_ms:
        return 0, measured
    above, meets = 0, count - 1  # at(above) > target >= at(meets)
    while meets - above > 1:
        mid = (above + meets) // 2
        if at(mid) <= target_ms:
            meets = mid
        else:
            above = mid
    return meets, measured


def median_ms(run: Callable[[], object], repeats: int = 30, warmup: int = 3) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def timer(runtime: str, size: int, threads: int, batch: int, int8_calibration=None) -> Callable[[torch.nn.Module], float]:
    """Median ms of one forward of a plain network on this machine (random input of the network's size)."""
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    if runtime == "torch":

        def torch_ms(net: torch.nn.Module) -> float:
            before = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                with torch.no_grad():
                    net = net.cpu().eval()
                    return median_ms(lambda: net(x))
            finally:
                torch.set_num_threads(before)

        return torch_ms
    from .formats import onnx_bytes
    from .onnxfile import quantize_int8, session

    feed = {"images": x.numpy()}

    def onnxruntime_ms(net: torch.nn.Module) -> float:
        data = onnx_bytes(net, size)
        if int8_calibration is not None:
            data = quantize_int8(data, int8_calibration())
        runner = session(data, threads)
        return median_ms(lambda: runner.run(None, feed))

    return onnxruntime_ms


def check_target(
    latency_ms: float | None, keep_rate, macs_ratio, subnet: str, runtime: str | None, threads: int, batch: int, quantize: str | None = None
) -> list[str]:
    problems = []
    if latency_ms is None:
        if runtime is not None or threads != 1 or batch != 1:
            problems.append("--runtime, --threads and --batch-size say how --latency-ms is measured; add --latency-ms")
        return problems
    if not (latency_ms == latency_ms and 0 < latency_ms < float("inf")):
        problems.append(f"--latency-ms must be a positive number of milliseconds, got {latency_ms:g}")
    if keep_rate is not None or macs_ratio is not None:
        problems.append("--latency-ms chooses the static network itself; give it, or --keep-rate / --macs-ratio, not both")
    if subnet != "static":
        problems.append("--latency-ms chooses a static sub-network's channels; add --subnet static")
    if runtime is not None and runtime not in RUNTIMES:
        problems.append(f"--runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    elif runtime == "torch" and quantize is not None:
        problems.append("--quantize int8 writes an onnxruntime model, so it is timed under onnxruntime; drop --runtime torch")
    if threads < 1:
        problems.append(f"--threads must be at least 1, got {threads}")
    if batch < 1:
        problems.append(f"--batch-size must be at least 1, got {batch}")
    return problems


class NoCandidate(UserError):
    """No static network met the latency target (the export may try another family of candidates)."""


def no_candidate(target_ms: float, fastest: Measured, runtime: str, threads: int, batch: int) -> NoCandidate:
    return NoCandidate(
        f"--latency-ms {target_ms:g}: no static network meets it on this machine ({runtime}, {threads} thread(s), batch {batch}); "
        f"the fastest candidate (MACs ratio {fastest.macs_ratio:.2f}) took {fastest.latency_ms:.3g} ms; ask for at least that"
    )


def plot(curve: list[Measured], chosen: Measured | None, target_ms: float, path, title: str) -> None:
    """Latency against MACs ratio of every candidate measured, the target and the one written."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    points = sorted(curve, key=lambda m: m.macs_ratio)
    ax.plot([m.macs_ratio for m in points], [m.latency_ms for m in points], "o-", color="tab:blue", label="candidates measured")
    ax.axhline(target_ms, color="tab:red", linestyle="--", label=f"target {target_ms:g} ms")
    if chosen is not None:
        ax.plot([chosen.macs_ratio], [chosen.latency_ms], "*", markersize=14, color="tab:green", label="written")
    ax.set_xlabel("MACs / dense")
    ax.set_ylabel("median latency (ms)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
