"""torchrun against one process, measured side by side with the real trainer: what do the ranks cost?

    python benchmarks/distributed.py                    # CPU: 2 gloo ranks against 1 process, about 2 minutes on 2 cores
    python benchmarks/distributed.py --device cuda --nproc 8 --dataset cifar10 --data-dir DATA --batch-size 512

Each configuration is a short `gatedssl pretrain` (the same settings, seed and global batch); the figure is
the median images/s of its epochs after the first (the first pays for start-up and kernel choice):
  1 process       all cores for one process
  N ranks         `torchrun --nproc_per_node N`, the global batch split across the ranks
  1 process, 1/N  one process with a core share of a rank (CPU: threads), on a batch of B/N: what a rank
                  would do alone, so N x it is the ranks' ideal
On a CPU the ranks share the same cores, so this shows the overhead of the collectives (DDP's gradient
all-reduce, the embedding gather, the per-step stop/save vote), not a speed-up. On GPUs it is the scaling
efficiency: N ranks / (N x one rank's images/s).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def images_per_second(run: Path) -> float:
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(e["images_per_second"] for e in epochs[1:])


def pretrain(out: Path, flags: list[str], *, nproc: int = 0, threads: int | None = None) -> float:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "gatedssl"]
    command = (launcher if nproc else [sys.executable, "-m", "gatedssl"]) + ["pretrain", "--out", str(out), "--quiet", *flags]
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    return images_per_second(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dataset", default="embedded")
    parser.add_argument("--data-dir")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--limit-per-class", type=int, default=100)
    args = parser.parse_args()
    common = ["--device", args.device, "--dataset", args.dataset, "--epochs", str(args.epochs), "--eval-every", "0"]
    common += ["--limit-per-class", str(args.limit_per_class), "--checkpoint-every", "1000"]
    common += ["--data-dir", args.data_dir] if args.data_dir else []
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    share = max(1, cores // args.nproc) if args.device == "cpu" else None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        one = pretrain(tmp / "one", [*common, "--batch-size", str(args.batch_size)], threads=cores if args.device == "cpu" else None)
        ranks = pretrain(tmp / "ranks", [*common, "--batch-size", str(args.batch_size)], nproc=args.nproc, threads=share)
        alone = pretrain(tmp / "alone", [*common, "--batch-size", str(args.batch_size // args.nproc)], threads=share)
    device = args.device if args.device == "cpu" else "GPU"
    print(f"{args.dataset}, global batch {args.batch_size}, {device}, {cores} cores; images/s, median of epochs 2-{args.epochs}")
    print(f"  1 process ({cores} threads)          {one:9.1f}")
    print(f"  {args.nproc} ranks ({share} thread(s) each)      {ranks:9.1f}   ratio to 1 process {ranks / one:.2f}")
    print(
        f"  1 process, batch {args.batch_size // args.nproc}, {share} thread(s)   {alone:9.1f}   x{args.nproc} = ideal {args.nproc * alone:.1f}"
    )
    print(f"  scaling efficiency (ranks / ideal)    {ranks / (args.nproc * alone):.2f}")


if __name__ == "__main__":
    main()
