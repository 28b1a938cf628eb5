"""Samples/s of the full joint training step: ours against the common baseline, side by side.

ours:     data on the device as uint8 (or, --storage stream, decoded from the files by workers or
          nvJPEG), two views made there by BatchAugment, channels_last, bf16 autocast on CUDA
          (--precision bf16 on the CPU too), optional torch.compile.
baseline: torchvision.transforms.v2 per image in DataLoader workers (all cores), eager fp32.
Both: the same model (gated + dense pass, shared projector, VICReg + budget losses), the same
batch, the same LARS step. Prints both, their ratio, and a stage breakdown of ours.

    python benchmarks/throughput.py --device cpu --width 16 --batch-size 256 --steps 10
    python benchmarks/throughput.py --device cuda --width 64 --batch-size 512 --compile
    python benchmarks/throughput.py --dataset cifar10 --data-dir .data/cifar10-jpg --storage stream
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from gatedssl.config import PretrainConfig, resolve
from gatedssl.data.augment import BatchAugment, recipe
from gatedssl.data.pipelines import DeviceViews, LoaderViews
from gatedssl.data.sources import load_dataset
from gatedssl.factory import build_objective, select_device
from gatedssl.names import WIDTH_MULTIPLIER_ARCHS
from gatedssl.precision import PRECISIONS, autocast, uses_bf16
from gatedssl.training.optim import build_optimizer, warmup_cosine
from gatedssl.training.trainer import train_step


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def setup(args, device):
    torch.manual_seed(0)
    cfg = resolve(
        PretrainConfig(
            dataset=args.dataset, arch=args.arch, width=args.width, proj_dim=args.proj_dim, batch_size=args.batch_size, budget=0.5
        )
    )
    objective = build_objective(cfg).to(device)
    optimizer = build_optimizer(objective, "lars", 0.3 * args.batch_size / 256, 1e-4)
    scheduler = warmup_cosine(optimizer, 10, 10_000)
    return cfg, objective, optimizer, scheduler


def measure(views, objective, optimizer, scheduler, steps, warmup, device, fast, precision="fp32") -> float:
    """Images per second over `steps` steps after `warmup` steps (data loading included)."""
    done, t0 = 0, None
    while done < warmup + steps:
        for x1, x2 in views:
            if done == warmup:
                sync(device)
                t0 = time.perf_counter()
            train_step(objective, optimizer, scheduler, x1, x2, 0.5, fast=fast, precision=precision)
            done += 1
            if done == warmup + steps:
                break
    sync(device)
    return steps * views_batch(views) / (time.perf_counter() - t0)


def views_batch(views) -> int:
    return views.batch_size if isinstance(views, DeviceViews) else views.loader.batch_size


def breakdown(views: DeviceViews, objective, optimizer, device, steps, precision) -> dict[str, float]:
    """Milliseconds per step in each stage of ours (synchronising between stages, so slower overall)."""
    times = dict(data=0.0, augmentation=0.0, forward=0.0, backward=0.0, optimizer=0.0)
    batches = views.batches(views.new_order())
    for _ in range(steps + 1):
        marks = [time.perf_counter()]

        def mark():
            sync(device)
            marks.append(time.perf_counter())

        batch = next(batches)
        mark()
        x1, x2 = (x.contiguous(memory_format=torch.channels_last) for x in views.pair(batch))
        mark()
        with autocast(device, precision):
            loss = objective(x1, x2, 0.5)["loss"]
        mark()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        mark()
        optimizer.step()
        mark()
        if _ > 0:  # first round warms up
            for key, a, b in zip(times, marks, marks[1:]):
                times[key] += (b - a) * 1000 / steps
    return times


def step_flops(objective, views: DeviceViews, device) -> int:
    x = next(views.batches(views.new_order()))
    x1, x2 = views.pair(x)
    with FlopCounterMode(display=False) as counter:
        objective(x1, x2, 0.5)["loss"].backward()
    objective.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--dataset", default="embedded")
    p.add_argument("--data-dir", default=None, help="dataset folder (e.g. the CIFAR-10 JPEG copy: DIR/train/<class>/, DIR/test/<class>/)")
    p.add_argument(
        "--storage", default="memory", choices=("memory", "stream"), help="stream: image folders read from the files every epoch"
    )
    p.add_argument("--data-workers", type=int, default=None, help="workers that read streamed files (default: all cores, at most 16)")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--width", type=float, default=64, help="ResNets: channels (64); MobileNets: the width multiplier (e.g. 1.0)")
    p.add_argument("--proj-dim", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--workers", type=int, default=None, help="baseline DataLoader workers (default: all cores)")
    p.add_argument("--compile", action="store_true", help="torch.compile our backbone")
    p.add_argument(
        "--precision",
        default="auto",
        choices=PRECISIONS,
        help="ours: bf16 autocast or fp32 (auto: bf16 on CUDA, fp32 on the CPU; the baseline is fp32)",
    )
    p.add_argument("--epoch-images", type=int, default=50_000, help="images per epoch for the projection (CIFAR-10: 50,000)")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="device bf16 dense peak (H100 SXM: 989)")
    p.add_argument("--skip-baseline", action="store_true")
    args = p.parse_args()
    args.width = args.width if args.arch in WIDTH_MULTIPLIER_ARCHS else int(args.width)
    device = select_device(args.device)
    splits = load_dataset(args.dataset, args.data_dir, storage=args.storage, device=device, workers=args.data_workers)
    aug_cfg = recipe(splits.crop_size, splits.mean, splits.std)
    print(
        f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{torch.get_num_threads()} threads'}), "
        f"torch {torch.__version__}, {args.arch} width {args.width}, batch {args.batch_size}, {args.steps} timed steps, "
        f"{args.dataset} {args.storage} ({splits.crop_size} px), ours in {'bf16' if uses_bf16(device, args.precision) else 'fp32'}"
    )

    _, objective, optimizer, scheduler = setup(args, device)
    objective.to(memory_format=torch.channels_last)
    if args.compile:
        objective.backbone.compile()
    ours_views = DeviceViews(splits.pretrain.images, BatchAugment(aug_cfg), args.batch_size, device)
    ours = measure(ours_views, objective, optimizer, scheduler, args.steps, args.warmup, device, fast=True, precision=args.precision)
    stages = breakdown(ours_views, objective, optimizer, device, max(3, args.steps // 4), args.precision)
    flops = step_flops(objective, ours_views, device)
    del objective, optimizer

    print(
        f"ours      {ours:10.1f} img/s   {args.epoch_images / ours:8.2f} s/epoch   500 epochs: {500 * args.epoch_images / ours / 60:7.1f} min"
    )
    tflops = flops * ours / args.batch_size / 1e12
    line = f"step FLOPs {flops / 1e9:.1f} G per batch -> {tflops:.2f} TFLOP/s"
    if device.type == "cuda":
        line += f" = {100 * tflops / args.peak_tflops:.1f}% of {args.peak_tflops:g} TFLOP/s bf16 peak"
    print(line)
    print("ours stage breakdown (ms/step, synchronised): " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()))
    if args.skip_baseline:
        return
    _, objective, optimizer, scheduler = setup(args, device)
    base_views = LoaderViews(splits.pretrain.images, aug_cfg, args.batch_size, device, workers=args.workers)
    base = measure(base_views, objective, optimizer, scheduler, args.steps, args.warmup, device, fast=False)
    print(
        f"baseline  {base:10.1f} img/s   {args.epoch_images / base:8.2f} s/epoch   500 epochs: {500 * args.epoch_images / base / 60:7.1f} min"
    )
    print(f"ratio ours/baseline: {ours / base:.2f}x")


if __name__ == "__main__":
    main()
