import contextlib
import json
import os

import pytest

# Under pytest-xdist (.ci/run runs `-n 2`) each worker process takes its share of the cores, and the programs
# its tests start (the CLI, torchrun ranks) inherit it: two processes of two threads each on CI's 2 cores
# ran slower than one process (BENCHMARKS.md, "Test suite").
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


@contextlib.contextmanager
def torch_threads(n: int):
    """Run a learning test's training at the thread count its margin was measured at (other kernels, other sums)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def learning_signals():
    """What learning tests assert on, chosen to barely move with rounding (BENCHMARKS.md, 'Learning-test spread'):
    the SSL loss's relative drop from the first epoch to the last, the kNN gain over initialisation
    averaged over both passes, and the gated MACs ratio at the end (as learnt, and as calibrated) and at initialisation."""

    def signals(run, summary: dict) -> dict:
        ssl = [json.loads(line)["ssl"] for line in (run / "metrics.jsonl").read_text().splitlines()]
        init = summary["init"]
        gains = [summary[p]["knn_top1"] - init[p]["knn_top1"] for p in ("dense", "gated")]
        return {
            "ssl_drop": 1 - ssl[-1] / ssl[0],
            "mean_knn_gain": sum(gains) / 2,
            # what the gates learnt: the thresholded ratio before the end-of-run calibration moved it to the budget
            "ratio": summary["gate_calibration"]["ratio_before"] if "gate_calibration" in summary else summary["gated"]["macs_ratio"],
            "ratio_calibrated": summary["gated"]["macs_ratio"],
            "ratio_at_init": init["gated"]["macs_ratio"],
        }

    return signals


# the settings gatedssl 0.2.0 added (checkpoint format 2); runs written by 0.1.0 have none of them
NEW_IN_FORMAT_2 = (
    "recipe",
    "stem_padding",
    "gate_bias",
    "gate_lars",
    "vicreg_variance",
    "vicreg_weights",
    "bound_density",
    "anneal_from",
    "anneal_clock",
    "crop_interpolation",
    "blur_p",
    "eval_every",
)


def cli_error_lines(capsys, argv: list[str], *needles: str) -> list[str]:
    """Run the CLI expecting a user error: exit 2, no traceback, the last line an `error:` holding every needle; the lines."""
    from gatedssl.cli import main

    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in err, err
    assert lines[-1].startswith("error: ") and all(n in lines[-1] for n in needles), lines[-1]
    return lines
