"""The ResNet real-skipping pass of another commit against this one's, the dense network beside, interleaved in one process.

    python benchmarks/skipping_ab.py --old HEAD~1          # 224 and 32 px, densities 0.3 and 0.5, batch 1, 1 thread

Speed changes to `export/skipping.py` are measured with it: both executors run on the same network, masks and
inputs, alternating rounds, so machine noise falls on both alike. Random weights with gate biases set for each
density, as benchmarks/latency.py does.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from latency import images, set_density, timed

from gatedssl.export.deploy import plain_network, skipping_network
from gatedssl.models import create_backbone

ROOT = Path(__file__).resolve().parent.parent


def old_executor(ref: str):
    """export/skipping.py as it was at `ref`, imported as a module of its own."""
    text = subprocess.run(
        ["git", "show", f"{ref}:src/gatedssl/export/skipping.py"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    text = text.replace("from ..", "from gatedssl.").replace("from .", "from gatedssl.export.")
    path = Path(tempfile.mkdtemp()) / "skipping_old.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("skipping_old", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description="real skipping of another commit against this one's")
    parser.add_argument("--old", default="HEAD~1", help="the git commit to compare with (default: HEAD~1)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 32])
    parser.add_argument("--densities", type=float, nargs="+", default=[0.3, 0.5])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    old = old_executor(args.old)
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}; ResNet-18 width {args.width}, batch 1, 1 thread; old = {args.old}, new = the working tree")
    for size in args.sizes:
        for density in args.densities:
            torch.manual_seed(0)
            net = create_backbone("resnet18", stem="imagenet" if size > 64 else "cifar", width=args.width).eval()
            calibration = images(size, 16)
            set_density(net, calibration, density)
            with torch.no_grad():
                out = net(calibration, gated=True)
            ratio = (out.macs.mean() / out.dense_macs).item()
            nets = {"dense": plain_network(net, "dense"), "old": old.SkippingResNet(net), "new": skipping_network(net)}
            # the dense network in channels_last too (the layout the new executor runs in), the faster of the two at 224 px
            nets["dense_cl"] = plain_network(net, "dense").to(memory_format=torch.channels_last)
            x = images(size, 1)
            inputs = {k: x.contiguous(memory_format=torch.channels_last) if k == "dense_cl" else x for k in nets}
            times: dict[str, list[float]] = {k: [] for k in nets}
            with torch.no_grad():
                for _ in range(args.rounds):
                    for name, module in nets.items():
                        times[name] += timed(lambda module=module, x=inputs[name]: module(x), 7, 1.0)
            ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
            print(
                f"{size} px d {density} (MACs {ratio:.3f}): dense {ms['dense']:.2f} ms (channels_last {ms['dense_cl']:.2f}); "
                f"skipping old {ms['old']:.2f} "
                f"({ms['old'] / ms['dense'] / ratio:.2f}x MACs), new {ms['new']:.2f} ({ms['new'] / ms['dense'] / ratio:.2f}x MACs); "
                f"new/old {ms['new'] / ms['old']:.3f}; new against the faster dense {ms['new'] / min(ms['dense'], ms['dense_cl']) / ratio:.2f}x MACs",
                flush=True,
            )


if __name__ == "__main__":
    sys.exit(main())
