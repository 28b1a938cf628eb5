"""Fine-tuning with few labels (issue 23): every (run, sub-network, init, label fraction, seed) as one `gatedssl finetune`,
then a table (mean ± sample std over seeds) and a picture (top-1 against the label fraction).

    python benchmarks/finetune_table.py --out ft --run demo=RUN/checkpoints/last.pt --run b1=B1/checkpoints/last.pt \
        --fractions 0.01 0.1 --seeds 0 1 2 [--extra "1.0:0"]      # fraction:seeds measured with fewer seeds

Re-run it to continue: finished fine-tunes are skipped (--resume auto). Dense and gated of the first run are
fine-tuned from its weights and from random init (the baseline); the other runs' dense only; at 10 % of the labels
the first run's gated also with --freeze-gates, and its dense with --freeze-backbone (the linear probe with
augmentation) and with --recipe semi.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from gatedssl.reporting.finetune import find_finetunes, finetune_rows, markdown, plot_finetune

EXTRAS_AT = 0.1


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
                    ]
                if name == first and fraction == EXTRAS_AT:  # the levers, at one share of the labels
                    variants += [
                        ("gated", "frozengates", ["--freeze-gates"]),
                        ("dense", "frozenbackbone", ["--freeze-backbone"]),
                        ("dense", "semi", ["--recipe", "semi"]),
                    ]
                for subnet, init, flags in variants:
                    key = f"{name}-{subnet}-{init}-f{fraction:g}-s{seed}"
                    argv = ["--checkpoint", checkpoint, "--subnet", subnet, "--label-fraction", str(fraction), "--seed", str(seed), *flags]
                    out.append((key, argv))
    return out


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
            said = [line for line in (done.stdout + done.stderr).splitlines() if line.strip() and "%|" not in line]
            print(next((line for line in said if "top-1" in line), said[-1] if said else f"exit {done.returncode}"), flush=True)
    rows = finetune_rows(find_finetunes([args.out]))  # the report's own table and picture
    (args.out / "table.json").write_text(json.dumps(rows, indent=2))
    (args.out / "table.md").write_text(markdown(rows) + "\n")
    plot_finetune(rows, args.out / "finetune.png")
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
