"""Accuracy per MAC across backbones: Dual runs' dense and gated networks on one picture, MACs per image on x.

    python benchmarks/backbones.py SWEEP_OR_RUN ... --out backbones.png

Reads only the runs' summary.json (any arch, width, budget, seed; seeds of one setting are averaged). Prints one row
per (arch, width, budget, sub-network): fast-probe top-1 (kNN where no probe ran), MACs per image, MACs ratio, training
time, for every run (B1 and post-hoc runs too); the picture draws the Dual runs. It answers which backbone gives the
most accuracy for a given compute at inference.
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict

from gatedssl.reporting.runs import find_runs


def top1(summary: dict, sub: str) -> float:
    probe = (summary[sub].get("probe") or {}).get("top1")
    return probe if probe is not None else summary[sub]["knn_top1"]


def main() -> None:
    parser = argparse.ArgumentParser(description="dense and gated networks of runs of several backbones against their MACs")
    parser.add_argument("paths", nargs="+", help="run or sweep folders")
    parser.add_argument("--out", default="backbones.png")
    args = parser.parse_args()
    cells: dict[tuple, list[tuple[float, float, float, float]]] = defaultdict(list)
    for run in find_runs(args.paths).runs:
        s = run.summary
        for sub in run.passes:
            seconds = (s.get("training_compute") or {}).get("seconds") or s.get("train_seconds") or 0.0
            cells[(s["arch"], s["width"], s["mode"], s["budget"], sub)].append(
                (top1(s, sub), s[sub]["macs"], s[sub]["macs_ratio"], seconds)
            )
    rows = []
    print(
        f"{'arch':<20} {'width':>6} {'mode':<6} {'budget':>6} {'net':<6} {'n':>2} {'top-1':>13} {'MACs/image':>11} {'ratio':>6} {'train s':>8}"
    )
    for key in sorted(cells, key=lambda k: tuple(str(v) for v in k)):
        values = cells[key]
        acc = [v[0] for v in values]
        mean, std = statistics.mean(acc), (statistics.stdev(acc) if len(acc) > 1 else 0.0)
        macs, ratio, seconds = (statistics.mean(v[i] for v in values) for i in (1, 2, 3))
        arch, width, mode, budget, sub = key
        if mode == "dual":  # the picture: Dual's two networks; other systems are in the printed table
            rows.append((arch, width, sub, budget, mean, macs))
        print(
            f"{arch:<20} {width:>6g} {mode:<6} {budget:>6g} {sub:<6} {len(values):>2} "
            f"{mean:>6.2f} ± {std:<4.2f} {macs / 1e6:>9.2f} M {ratio:>6.3f} {seconds:>8.0f}"
        )
    plot(rows, args.out)


def plot(rows: list[tuple], path: str) -> None:
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    fig = Figure(figsize=(10, 5))
    ax = fig.add_subplot()
    nets = sorted({(r[0], r[1]) for r in rows}, key=lambda n: (n[0], n[1]))
    for i, (arch, width) in enumerate(nets):
        mine = [r for r in rows if (r[0], r[1]) == (arch, width)]
        color = f"C{i}"
        dense = [r for r in mine if r[2] == "dense"]
        gated = sorted((r for r in mine if r[2] == "gated"), key=lambda r: r[5])
        label = f"{arch} w{width:g}"
        ax.scatter(
            [r[5] / 1e6 for r in dense], [r[4] for r in dense], marker="*", s=120, color=color, label=f"{label}: dense (one per Dual run)"
        )
        ax.plot(
            [r[5] / 1e6 for r in gated],
            [r[4] for r in gated],
            "o--",
            color=color,
            label=f"{label}: gated (budgets {', '.join(f'{r[3]:g}' for r in gated)})",
        )
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if str(round(v, 6))[0] in "2357" else ""))
    ax.set(
        xlabel="MACs per image (millions, log scale)",
        ylabel="top-1 (fast linear probe), %",
        title="accuracy per MAC, embedded data, 16 epochs",
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"picture written to {path}")


if __name__ == "__main__":
    main()
