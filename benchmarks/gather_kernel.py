"""The gather kernel (export/gather_gemm.c) against PyTorch's copy-then-multiply, side by side, one thread.

    python benchmarks/gather_kernel.py            # the conv1 shapes of ResNet-18 w64 at batch 1, and MobileNet 1x1s

Each row is one sliced conv1 as the skipping pass runs it on a small map: `positions` output positions, `depth` =
kh*kw*C_in, `kept` of `channels` output rows. Weights cycle through copies larger than the L2 cache, as a network's
do between two uses. The ratio is the kernel's time over PyTorch's (below 1: the kernel is faster).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from gatedssl.export import gather_gemm

SHAPES = [  # (where, positions, depth, channels, kept)
    ("ResNet-18 32 px layer4 conv1, d 0.3", 16, 9 * 512, 512, 154),
    ("ResNet-18 32 px layer4.0 conv1 (stride 2)", 16, 9 * 256, 512, 154),
    ("ResNet-18 32 px layer4 conv1, d 0.5", 16, 9 * 512, 512, 256),
    ("ResNet-18 224 px layer4 conv1, d 0.3", 49, 9 * 512, 512, 154),
    ("ResNet-18 224 px layer4 conv1, d 0.5", 49, 9 * 512, 512, 256),
    ("ResNet-18 32 px layer3 conv1, d 0.3", 64, 9 * 256, 256, 77),
    ("(past the threshold) 14x14 map, layer3", 196, 9 * 256, 256, 77),
    ("(not used) MobileNetV2 7x7 expansion 160->960", 49, 160, 960, 300),
]


def median_ms(fn, weights: list[torch.Tensor], repeats: int) -> float:
    for w in weights[:3]:
        fn(w)
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        fn(weights[i % len(weights)])
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="each variant timed this many times in turn")
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--copies", type=int, default=8, help="weight copies cycled through (cold caches)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if gather_gemm.library() is None:
        raise SystemExit("the kernel could not be built here (no C compiler, or GATEDSSL_KERNELS=0): nothing to compare")
    print(f"torch {torch.__version__}, 1 thread; times are medians of {args.rounds} interleaved rounds")
    print(f"{'where':48s} {'P':>4s} {'depth':>5s} {'kept':>9s} {'torch ms':>9s} {'kernel ms':>9s} {'ratio':>6s}")
    g = torch.Generator().manual_seed(0)
    for where, positions, depth, channels, kept in SHAPES:
        weights = [torch.randn(channels, depth, generator=g) for _ in range(args.copies)]
        a, bias = torch.randn(positions, depth, generator=g), torch.randn(channels, generator=g)
        rows = torch.randperm(channels, generator=g)[:kept].sort().values
        copied = lambda w: torch.addmm(bias.index_select(0, rows), a, w.index_select(0, rows).t())  # noqa: E731
        in_place = lambda w: gather_gemm.gathered_dots(a, w, rows, bias)  # noqa: E731
        torch.testing.assert_close(in_place(weights[0]), copied(weights[0]), rtol=1e-4, atol=1e-3)
        times = {"torch": [], "kernel": []}
        for _ in range(args.rounds):
            times["torch"].append(median_ms(copied, weights, args.repeats))
            times["kernel"].append(median_ms(in_place, weights, args.repeats))
        ours, theirs = statistics.median(times["kernel"]), statistics.median(times["torch"])
        print(f"{where:48s} {positions:4d} {depth:5d} {kept:4d}/{channels:<4d} {theirs:9.3f} {ours:9.3f} {ours / theirs:6.2f}")


if __name__ == "__main__":
    main()
