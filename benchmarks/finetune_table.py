"""Fine-tuning with few labels (issue 23): every (run, sub-network, init, label fraction, seed) as one `gatedssl finetune`,
then a table (mean ± sample std over seeds) and a picture (top-1 against the label fraction).

    python benchmarks/finetune_table.py --out ft --run demo=RUN/checkpoints/last.pt --run b1=B1/checkpoints/last.pt \
        --fractions 0.01 0.1 --seeds 0 1 2 [--extra "1.0:0"]      # fraction:seeds measured with fewer seeds

Re-run it to continue: finished fine-tunes are skipped (--resume auto). Dense and gated of the first run are
fine-tuned from its weights and from random init (the baseline); the other runs' dense only; the first run's
gated also with --freeze-gates, and its dense with --freeze-backbone (the linear probe with augmentation).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path


def jobs(runs: dict[str, str], plan: list[tuple[float, list[int]]]) -> list[tuple[str, list[str]]]:
    first = next(iter(runs))
    out = []
    for name, checkpoint in runs.items():  # run by run: a later run may still be pretraining
        for fraction, seeds in plan:
            for seed in seeds:
                variants = [("dense", "pretrained", [])]
                if name == first:
                    variants += [
                        ("gated", "pretrained", []),
                        ("dense", "random", ["--init", "random"]),
                        ("gated", "random", ["--init", "random"]),
                        ("gated", "frozengates", ["--freeze-gates"]),
                        ("dense", "frozenbackbone", ["--freeze-backbone"]),
                        ("dense", "semi", ["--recipe", "semi"]),
                    ]
                for subnet, init, flags in variants:
                    key = f"{name}-{subnet}-{init}-f{fraction:g}-s{seed}"
                    argv = ["--checkpoint", checkpoint, "--subnet", subnet, "--label-fraction", str(fraction), "--seed", str(seed), *flags]
                    out.append((key, argv))
    return out


def table(out: Path) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for summary_path in sorted(out.glob("*/summary.json")):
        s = json.loads(summary_path.read_text())
        name, subnet, init, fraction, _ = summary_path.parent.name.rsplit("-", 4)
        groups.setdefault((name, subnet, init, float(fraction[1:])), []).append(s)
    rows = []
    for (name, subnet, init, fraction), runs in sorted(groups.items()):
        top1 = [r["top1"] for r in runs]
        ratio = [r["macs_ratio"] for r in runs]
        before = [r["before_calibration"]["macs_ratio"] for r in runs if r.get("before_calibration")]
        rows.append(
            {
                "run": name,
                "subnet": subnet,
                "init": init,
                "fraction": fraction,
                "labels": runs[0]["labels_used"],
                "epochs": runs[0]["epochs"],
                "seeds": len(runs),
                "top1": statistics.mean(top1),
                "top1_std": statistics.stdev(top1) if len(top1) > 1 else 0.0,
                "macs_ratio": statistics.mean(ratio),
                "ratio_before_calibration": statistics.mean(before) if before else None,
                "seconds": statistics.mean(r["train_seconds"] for r in runs),
            }
        )
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| run | sub-network | init | labels (fraction) | epochs | seeds | test top-1 | MACs / dense (before calibration) | s per fine-tune |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        before = f" ({r['ratio_before_calibration']:.3f})" if r["ratio_before_calibration"] is not None else ""
        spread = f" ± {r['top1_std']:.2f}" if r["seeds"] > 1 else ""
        lines.append(
            f"| {r['run']} | {r['subnet']} | {r['init']} | {r['labels']} ({r['fraction']:g}) | {r['epochs']} | {r['seeds']} | "
            f"{r['top1']:.2f}{spread} | {r['macs_ratio']:.3f}{before} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    lines: dict[tuple, list[dict]] = {}
    for r in rows:
        lines.setdefault((r["run"], r["subnet"], r["init"]), []).append(r)
    for (run, subnet, init), points in sorted(lines.items()):
        points.sort(key=lambda r: r["fraction"])
        x = [100 * p["fraction"] for p in points]
        style = "--" if init == "random" else ":" if init.startswith("frozen") or init == "semi" else "-"
        macs = f"{points[0]['macs_ratio']:.2f}x MACs"
        ax.errorbar(
            x,
            [p["top1"] for p in points],
            [p["top1_std"] for p in points],
            ls=style,
            marker="o",
            capsize=3,
            label=f"{run} {subnet} ({init}, {macs})",
        )
    ax.set_xscale("log")
    ax.set_xlabel("labels used (% of the training set, log scale)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("Fine-tuned sub-networks: pretrained (solid) vs random init (dashed)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--run", action="append", required=True, metavar="NAME=CHECKPOINT")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.1])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--extra", nargs="*", default=[], metavar="FRACTION:SEEDS", help="e.g. 1.0:0 (comma-separated seeds)")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    runs = dict(item.split("=", 1) for item in args.run)
    plan = [(f, args.seeds) for f in args.fractions] + [
        (float(e.split(":")[0]), [int(s) for s in e.split(":")[1].split(",")]) for e in args.extra
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        todo = jobs(runs, plan)
        for i, (key, argv) in enumerate(todo, 1):
            print(f"[{i}/{len(todo)}] {key}", flush=True)
            command = [sys.executable, "-m", "gatedssl", "finetune", *argv, "--out", str(args.out / key), "--resume", "auto", "--quiet"]
            done = subprocess.run(command, capture_output=True, text=True)
            print((done.stdout or done.stderr).strip().splitlines()[-2 if done.returncode == 0 else -1], flush=True)
    rows = table(args.out)
    (args.out / "table.json").write_text(json.dumps(rows, indent=2))
    (args.out / "table.md").write_text(markdown(rows) + "\n")
    plot(rows, args.out / "finetune.png")
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
