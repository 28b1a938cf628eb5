#!/usr/bin/env bash
# The GPU figures of BENCHMARKS.md, in one go, on a machine lent with a CUDA device.
# Needs the CIFAR-10 JPEG copy as .data/cifar10-jpg.tar.gz (git-ignored; copy it from
# ../shared/datasets/ and name .data/cifar10-jpg.tar.gz in the device tool's `carry`).
# Writes every log under ${OUT:-gpu_out}/; each step prints its command first.
#   scripts/gpu_checks.sh [quick|systems|ddp|grid|table1|finetune|edge|all]   quick: throughput only (about 5 minutes);
#   systems: every system of issue 12 on CIFAR-10 (B1, Dual, B2, slimmable, post-hoc; ${EPOCHS:-5} epochs each) and the widths' speed
#   ddp: torchrun on every GPU of the machine against one process (images/s per device, scaling efficiency; issue 13)
#   grid: short runs of the default recipe (2,000 CIFAR-10 images, epochs 1-10, widths 8/16/64, 4 modes, 3 seeds): none may
#   explode (issue 20); about 180 short runs, so give it several 10-minute commands: finished cells are not rerun
#   table1: the paper's comparison at its length (ResNet-18 w64, ${EPOCHS:-500} epochs, seeds ${SEEDS:-0 1 2}: B1, Dual 0.3/0.5,
#   B2 0.5, B1 + post-hoc 0.5; issue 21) through benchmarks/table1.sh. Each call trains for ${LIMIT:-500} s, then stops with
#   a checkpoint (SIGTERM); call it again to go on. Hours of GPU time in all: it resumes across as many calls as it gets
#   finetune: a 10-epoch Dual run on CIFAR-10 fine-tuned (dense and gated, 1 % and 10 % of the labels, against random init;
#   issue 23) and the fine-tuning step against a torchvision loop
#   edge: the MobileNets (issue 24): training throughput of MobileNetV2/V3-Large at width 1.0, a ${EPOCHS:-10}-epoch Dual
#   sweep of each on CIFAR-10 at budgets 0.3 and 0.5 (resumable), and MobileNetV2's latency variants at 224 px on the GPU
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-gpu_out}"
mkdir -p "$OUT"
DATA=.data/cifar10-jpg
if [ ! -d "$DATA" ]; then
  tar xzf .data/cifar10-jpg.tar.gz -C .data || { echo "error: .data/cifar10-jpg.tar.gz missing; copy it from ../shared/datasets/" >&2; exit 2; }
fi
step() {  # name, command...
  local name=$1; shift
  echo "== $name: $*" | tee "$OUT/$name.log"
  "$@" 2>&1 | tee -a "$OUT/$name.log" | tail -n 12
}
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python -c "import torch, torchvision; print(torch.__version__, torchvision.__version__)" | tee -a "$OUT/gpu.txt"
B="python benchmarks/throughput.py --device cuda --dataset cifar10 --data-dir $DATA --width 64 --batch-size 512 --steps 40 --warmup 5"
step throughput_held $B
step throughput_held_compile $B --compile --skip-baseline
step throughput_stream $B --storage stream --skip-baseline
[ "${1:-all}" = quick ] && exit 0
if [ "${1:-all}" = ddp ]; then
  GPUS=$(nvidia-smi -L | wc -l)
  step ddp python benchmarks/distributed.py --device cuda --nproc "$GPUS" --dataset cifar10 --data-dir $DATA \
    --batch-size $((512 * GPUS)) --epochs 3 --limit-per-class 2000
  exit 0
fi
if [ "${1:-all}" = grid ]; then
  step grid python benchmarks/divergence_grid.py --data-dir $DATA --out "$OUT/grid" --device cuda --jobs 4 -- --limit-per-class 200
  exit 0
fi
if [ "${1:-all}" = table1 ]; then
  echo "== table1: benchmarks/table1.sh $OUT/table1 ${EPOCHS:-500} \"${SEEDS:-0 1 2}\" (for ${LIMIT:-500} s)" | tee -a "$OUT/table1.log"
  timeout -s TERM -k 60 "${LIMIT:-500}" benchmarks/table1.sh "$OUT/table1" "${EPOCHS:-500}" "${SEEDS:-0 1 2}" \
    --dataset cifar10 --data-dir $DATA --checkpoint-minutes 2 2>&1 | tee -a "$OUT/table1.log" | tail -n 12
  exit 0
fi
if [ "${1:-all}" = finetune ]; then
  # a short Dual run on CIFAR-10 (w64), then its dense and gated networks fine-tuned on 1 % and 10 % of the labels against
  # random init (issue 23); a few minutes; re-run to continue (finished runs and fine-tunes are skipped)
  step finetune python -m gatedssl sweep --budgets 0.5 --dataset cifar10 --data-dir $DATA --epochs "${EPOCHS:-10}" \
    --no-baseline --finetune 0.01 0.1 --out "$OUT/finetune" --quiet
  step finetune_speed python benchmarks/finetune_speed.py --device cuda --batch-size 512 --steps 20
  exit 0
fi
if [ "${1:-all}" = edge ]; then
  for arch in mobilenet_v2 mobilenet_v3_large; do
    step "throughput_$arch" python benchmarks/throughput.py --device cuda --dataset cifar10 --data-dir $DATA --arch $arch --width 1.0 \
      --batch-size 512 --steps 40 --warmup 5 --skip-baseline
    step "edge_$arch" python -m gatedssl sweep --arch $arch --width 1.0 --budgets 0.3 0.5 --dataset cifar10 --data-dir $DATA \
      --epochs "${EPOCHS:-10}" --out "$OUT/edge-$arch" --quiet
  done
  step latency_mobilenet_v2 python benchmarks/latency.py --arch mobilenet_v2 --device cuda --sizes 224 --batches 1 64 --threads 1
  exit 0
fi
if [ "${1:-all}" = systems ]; then
  step widths python benchmarks/widths.py --device cuda --batch 256
  step systems python -m gatedssl sweep --modes dual gated slimmable posthoc --budgets 0.3 --dataset cifar10 --data-dir $DATA \
    --epochs "${EPOCHS:-5}" --out "$OUT/systems" --quiet
  exit 0
fi
# issue 2's run: ResNet-18 w64, VICReg, budget 0.5 on CIFAR-10 (JPEG copy); 500 epochs is the paper's run
step pretrain_c10 python -m gatedssl pretrain --dataset cifar10 --data-dir $DATA --budget 0.5 --epochs "${EPOCHS:-100}" \
  --out "$OUT/c10-b0.5" --overwrite
