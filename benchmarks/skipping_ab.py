"""The real-skipping pass of another commit against this one's, the dense network beside, interleaved in one process.

    python benchmarks/skipping_ab.py --old HEAD~1          # ResNet-18 w64, 224 and 32 px, densities 0.3 and 0.5, batch 1, 1 thread
    python benchmarks/skipping_ab.py --old HEAD~1 --arch mobilenet_v2

Speed changes to a skipping executor (`export/skipping.py`, `export/mobilenet.py`) are measured with it: both executors run on the same network, masks and
inputs, alternating rounds, so machine noise falls on both alike. Random weights with gate biases set for each
density, as benchmarks/latency.py does.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from latency import WIDTH_MULTIPLIER_ARCHS, images, set_density, timed

from gatedssl.export.deploy import plain_network, skipping_network
from gatedssl.models import create_backbone

ROOT = Path(__file__).resolve().parent.parent


def old_executor(ref: str, kind: type) -> type:
    """The skipping executor class `kind` as its module was at `ref`, with the sibling modules it imports (slicing,
    plain, ...) as they were there too, each imported as a module of its own."""
    package = Path(inspect.getfile(kind)).resolve().parent.relative_to(ROOT)
    folder = Path(tempfile.mkdtemp())
    todo, done = [Path(inspect.getfile(kind)).stem], set()
    while todo:
        name = todo.pop()
        done.add(name)
        text = subprocess.run(["git", "show", f"{ref}:{package}/{name}.py"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        siblings = set(re.findall(r"^\s*from \.(\w+) import", text, flags=re.M))
        todo += [s for s in siblings - done if s not in todo]
        text = re.sub(r"^(\s*)from \.(\w+) import", r"\1from old_\2 import", text, flags=re.M)
        (folder / f"old_{name}.py").write_text(text.replace("from ..", "from gatedssl."))
        source = subprocess.run(["git", "show", f"{ref}:{package}/{name}.c"], cwd=ROOT, capture_output=True, text=True)
        if source.returncode == 0:  # a module's C kernel (gather_gemm), read beside it under its own name
            (folder / f"{name}.c").write_text(source.stdout)
    sys.path.insert(0, str(folder))
    module = importlib.import_module(f"old_{Path(inspect.getfile(kind)).stem}")
    return getattr(module, kind.__name__)


def main() -> None:
    parser = argparse.ArgumentParser(description="real skipping of another commit against this one's")
    parser.add_argument("--old", default="HEAD~1", help="the git commit to compare with (default: HEAD~1)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 32])
    parser.add_argument("--densities", type=float, nargs="+", default=[0.3, 0.5])
    parser.add_argument("--arch", default="resnet18", help="resnet18, mobilenet_v2, ... (default: resnet18)")
    parser.add_argument("--width", type=float, help="channels (ResNets, default 64) or width multiplier (MobileNets, default 1.0)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    multiplier = args.arch in WIDTH_MULTIPLIER_ARCHS
    width = args.width if args.width is not None else (1.0 if multiplier else 64)
    width = width if multiplier else int(width)
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}; {args.arch} width {width:g}, batch 1, 1 thread; old = {args.old}, new = the working tree")
    for size in args.sizes:
        for density in args.densities:
            torch.manual_seed(0)
            net = create_backbone(args.arch, stem="imagenet" if size > 64 else "cifar", width=width).eval()
            calibration = images(size, 16)
            set_density(net, calibration, density)
            with torch.no_grad():
                out = net(calibration, gated=True)
            ratio = (out.macs.mean() / out.dense_macs).item()
            new = skipping_network(net)
            nets = {"dense": plain_network(net, "dense"), "old": old_executor(args.old, type(new))(net), "new": new}
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
