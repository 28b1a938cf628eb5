"""Slimmable widths, measured side by side: is a width-w sub-network as much faster as its MACs say?

    python benchmarks/widths.py                       # ResNet-18 width 64 at 32 px, about a minute on 2 CPU cores
    python benchmarks/widths.py --size 224 --stem imagenet --batch 1

Two figures per width, each as a ratio to the full width (1.0) measured in the same run:
  train   one forward + backward of the backbone's width-w pass (sliced convs of the shared weights, its own BN),
          as the slimmable training step runs it
  deploy  inference of the width exported as a plain smaller ResNet (`gatedssl export --subnet widthW`: BN folded)
beside the MACs ratio. Weights are random: speed does not depend on their values.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from gatedssl.export.plain import PlainResNet
from gatedssl.models import create_backbone
from gatedssl.names import width_name


def median_seconds(fn, reps: int) -> float:
    fn()  # warm-up: oneDNN (cuDNN) picks and caches its kernels on the first call
    times = []
    for _ in range(reps):
        _sync()
        t = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", type=float, nargs="+", default=[1.0, 0.75, 0.5, 0.25])
    parser.add_argument("--width", type=int, default=64, help="channels of the first stage at width 1")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--stem", default="cifar", choices=("cifar", "imagenet"))
    parser.add_argument("--batch", type=int, default=32, help="training batch; deployment is timed at this batch and at 1")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    device = torch.device(args.device)
    net = create_backbone("resnet18", width=args.width, stem=args.stem).to(device, memory_format=torch.channels_last)
    net.add_widths(args.widths)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device).contiguous(memory_format=torch.channels_last)
    rows = []
    for w in sorted(set(args.widths) | {1.0}, reverse=True):
        name = width_name(w)
        net.train()

        def step(name=name):
            net(x, name).features.sum().backward()

        train = median_seconds(step, args.reps)
        net.eval()
        plain = PlainResNet.from_gated(net, name).eval()
        with torch.no_grad():
            deploy = median_seconds(lambda plain=plain: plain(x), args.reps)
            single = median_seconds(lambda plain=plain: plain(x[:1]), args.reps * 4)
        rows.append((name, plain.macs(args.size), train, deploy, single))
    full = rows[0]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(f"ResNet-18 width {args.width}, {args.size} px, {args.stem} stem, batch {args.batch}, {where}")
    print("| sub-network | MACs (M) | MACs ratio | train s | train ratio | deploy s (batch) | deploy ratio | deploy ms (batch 1) | ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, macs, train, deploy, single in rows:
        print(
            f"| {name} | {macs / 1e6:.1f} | {macs / full[1]:.3f} | {train:.4f} | {train / full[2]:.3f} | "
            f"{deploy:.4f} | {deploy / full[3]:.3f} | {single * 1e3:.2f} | {single / full[4]:.3f} |"
        )


if __name__ == "__main__":
    main()
