"""How far the learned numbers of the test suite's learning runs move between machines.

Another CPU changes only the rounding (other oneDNN kernels), not the seed. To see how far that
moves a result, run the same seed under another thread count or another oneDNN ISA and compare:

    for t in 1 2; do python scripts/learning_spread.py --threads $t; done
    ONEDNN_MAX_CPU_ISA=AVX2 python scripts/learning_spread.py --threads 2

Each run prints one JSON line with the quantities the learning tests assert on.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import torch

from gatedssl.config import PretrainConfig
from gatedssl.training import pretrain

# the configurations of tests/test_end_to_end.py and tests/test_pipelines.py
RUNS = {
    "learns": dict(budget=0.3, proj_dim=256, epochs=12, checkpoint_every=100, warmup_epochs=0.24),
    "device": dict(data_pipeline="device", proj_dim=256, epochs=6, limit_per_class=200, checkpoint_every=100, warmup_epochs=0.12),
    "loader": dict(data_pipeline="loader", proj_dim=256, epochs=6, limit_per_class=200, checkpoint_every=100, warmup_epochs=0.12),
}


def probe_of_random_backbone() -> dict:
    """tests/test_probe.py's quantity: a fast linear probe of a random width-8 ResNet-18 (3 seeds, 1 thread)."""
    from gatedssl.data.sources import load_dataset
    from gatedssl.evaluation.probe import linear_probe
    from gatedssl.models import gated_resnet18

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    splits = load_dataset("embedded", limit_per_class=50)
    torch.manual_seed(0)
    net = gated_resnet18(width=8)
    result = {p: linear_probe(net, splits, p == "gated", torch.device("cpu"), seeds=3).top1 for p in ("dense", "gated")}
    torch.set_num_threads(threads)
    return {"run": "probe", "isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "default"), "probe_top1": result}


def measure(name: str, **overrides) -> dict:
    if name == "probe":
        return probe_of_random_backbone()
    with tempfile.TemporaryDirectory() as tmp:
        summary = pretrain(PretrainConfig(out=tmp, device="cpu", **{**RUNS[name], **overrides}), progress=False)
        ssl = [json.loads(line)["ssl"] for line in open(f"{tmp}/metrics.jsonl")]
    init = summary["init"]
    gains = {p: summary[p]["knn_top1"] - init[p]["knn_top1"] for p in ("dense", "gated")}
    return {
        "run": name,
        "threads": torch.get_num_threads(),
        "isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "default"),
        "knn": {p: summary[p]["knn_top1"] for p in gains},
        "knn_init": {p: init[p]["knn_top1"] for p in gains},
        "gain": gains,
        "mean_gain": sum(gains.values()) / 2,
        "ssl_first": ssl[0],
        "ssl_last": ssl[-1],
        "ssl_drop": 1 - ssl[-1] / ssl[0],
        "ratio_init": init["gated"]["macs_ratio"],
        "ratio": summary["gated"]["macs_ratio"],
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--runs", nargs="+", default=[*RUNS, "probe"], choices=[*RUNS, "probe"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.runs:
        print(json.dumps(measure(name)), flush=True)
