"""Does the default recipe diverge on a user's first short run? A grid of `gatedssl pretrain` runs.

Each cell is the command a new user types on their own folder (`--dataset cifar10 --data-dir DIR`,
the default recipe, only epochs / width / mode / seed given), run as a subprocess. A run counts as
exploded when it stops with exit code 3 (the loss guard) or ends with a loss above its first
epoch's mean by more than 10x at any epoch. Prints one line per run as it ends, then the counts; writes grid.json and grid.png.

    python benchmarks/divergence_grid.py --data-dir DIR --out grid/ [--epochs 1 2 3 5 10] [--widths 8 16]
        [--modes dense dual gated slimmable] [--seeds 0 1 2] [--jobs 2] [-- extra pretrain flags]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def run_one(args, epochs: int, width: int, mode: str, seed: int, threads: int, extra: list[str]) -> dict:
    out = Path(args.out) / "runs" / f"e{epochs}-w{width}-{mode}-s{seed}"
    command = [
        sys.executable,
        "-m",
        "gatedssl",
        "pretrain",
        "--dataset",
        args.dataset,
        *(["--data-dir", args.data_dir] if args.data_dir else []),
    ]
    command += ["--epochs", str(epochs), "--width", str(width), "--mode", mode, "--seed", str(seed)]
    command += ["--batch-size", str(args.batch_size), "--out", str(out), "--overwrite", "--quiet", "--device", args.device, *extra]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    if (out / "summary.json").exists():  # finished in an earlier call: the grid resumes across time-limited commands
        done = subprocess.CompletedProcess(command, 0, "", "")
    else:
        done = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    losses = []
    if (out / "metrics.jsonl").exists():
        for line in (out / "metrics.jsonl").read_text().splitlines():
            try:
                losses.append(json.loads(line)["loss"])
            except (ValueError, KeyError):
                pass
    finite = all(math.isfinite(v) for v in losses) and bool(losses)
    exploded = done.returncode == 3 or not finite or max(losses) > 10 * losses[0]
    summary = json.loads((out / "summary.json").read_text()) if done.returncode == 0 else {}
    seconds = summary.get("train_seconds", seconds)
    error = "" if done.returncode == 0 else (done.stderr.strip().splitlines() or ["?"])[-1][:300]
    return dict(
        epochs=epochs,
        width=width,
        mode=mode,
        seed=seed,
        exit_code=done.returncode,
        exploded=exploded,
        losses=losses,
        knn=summary.get("dense", {}).get("knn_top1"),
        seconds=round(seconds, 1),
        error=error,
    )


def plot(results: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    rows = sorted({(r["width"], r["mode"]) for r in results})
    cols = sorted({r["epochs"] for r in results})
    fig = Figure(figsize=(1.2 * len(cols) + 2.5, 0.45 * len(rows) + 1.5))
    ax = fig.add_subplot()
    grid = [[0.0] * len(cols) for _ in rows]
    for i, row in enumerate(rows):
        for j, epochs in enumerate(cols):
            cell = [r for r in results if (r["width"], r["mode"]) == row and r["epochs"] == epochs]
            bad = sum(r["exploded"] for r in cell)
            grid[i][j] = bad / max(1, len(cell))
            ratio = [r["losses"][-1] / r["losses"][0] for r in cell if not r["exploded"] and r["losses"]]
            text = f"{bad}/{len(cell)}" + (f"\n{sum(ratio) / len(ratio):.2f}" if ratio else "")
            ax.text(j, i, text, ha="center", va="center", fontsize=8)
    ax.imshow(grid, cmap="Reds", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(cols)), [f"{c} ep" for c in cols])
    ax.set_yticks(range(len(rows)), [f"w{w} {m}" for w, m in rows])
    ax.set_title("runs exploded / runs (and last/first epoch loss of the others)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="the user's folder (default: none, for --dataset embedded)")
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--out", default="divergence_grid")
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 2, 3, 5, 10])
    parser.add_argument("--widths", type=int, nargs="+", default=[8, 16, 64])
    parser.add_argument("--modes", nargs="+", default=["dense", "dual", "gated", "slimmable"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (on a CPU, each gets cores / jobs threads)")
    args = parser.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    cells = list(itertools.product(args.widths, args.modes, args.seeds, args.epochs))
    print(f"{len(cells)} runs, {args.jobs} at a time; extra flags: {' '.join(extra) or 'none'}", flush=True)
    results = []
    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(run_one, args, e, w, m, s, threads, extra) for w, m, s, e in cells]
        for n, future in enumerate(futures, 1):
            r = future.result()
            results.append(r)
            first, last = (r["losses"][0], r["losses"][-1]) if r["losses"] else (float("nan"), float("nan"))
            eta = (time.perf_counter() - t0) / n * (len(cells) - n)
            print(
                f"[{n}/{len(cells)} eta {eta / 60:.0f} min] e{r['epochs']} w{r['width']} {r['mode']} s{r['seed']}: exit {r['exit_code']}, "
                f"loss {first:.4g} -> {last:.4g}, kNN {r['knn']}, {r['seconds']} s{' EXPLODED ' + r['error'] if r['exploded'] else ''}",
                flush=True,
            )
    (Path(args.out) / "grid.json").write_text(json.dumps(results, indent=1))
    plot(results, Path(args.out) / "grid.png")
    bad = [r for r in results if r["exploded"]]
    print(f"exploded or non-finite: {len(bad)} of {len(results)} runs; grid.json and grid.png in {args.out}")


if __name__ == "__main__":
    main()
