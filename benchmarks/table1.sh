#!/usr/bin/env bash
# Table 1 with seeds (issue 21): B1, Dual at 0.3 and 0.5, B2 at 0.5 and B1 + post-hoc at 0.5, one sweep folder per
# seed, then one report over all of them (mean and standard deviation over the seeds).
#   benchmarks/table1.sh OUT EPOCHS "SEEDS" [any pretrain setting ...]
#   benchmarks/table1.sh t1 16 "0 1 2"                                   # the embedded data, width 8 (CPU)
#   benchmarks/table1.sh t1 500 "0 1 2" --dataset cifar10 --data-dir DIR # the paper's length (GPU)
# Re-run it to continue: finished runs are skipped and unfinished ones resumed.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: benchmarks/table1.sh OUT EPOCHS \"SEEDS\" [pretrain settings...]" >&2
  exit 2
fi
out=$1 epochs=$2 seeds=$3
shift 3
gatedssl() { python -m gatedssl "$@"; }
for seed in $seeds; do
  sweep=(--epochs "$epochs" --seed "$seed" --probe fast --quiet --out "$out/e$epochs-s$seed" "$@")
  gatedssl sweep --budgets 0.5 --modes dual gated posthoc "${sweep[@]}"
  gatedssl sweep --budgets 0.3 --modes dual "${sweep[@]}"  # B1 is done: only Dual at 0.3 trains
done
folders=()
for seed in $seeds; do folders+=("$out/e$epochs-s$seed"); done
gatedssl report "${folders[@]}" --out "$out/report-e$epochs"
