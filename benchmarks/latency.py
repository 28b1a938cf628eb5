"""Inference latency of the deployable variants of one network, side by side in one run.

    python benchmarks/latency.py                      # the full table (about 10 minutes on 2 CPU cores)
    python benchmarks/latency.py --sizes 224 --batches 1 --threads 1 --densities 0.3
    python benchmarks/latency.py --arch mobilenet_v2 --sizes 224 --batches 1   # any --arch gatedssl trains

Variants: dense (the exported dense encoder: BN folded), masked gated (the training-time gated
pass: every channel computed, then masked), real-skipping gated (only the open channels; batch
strategy "union", and "group" with --group), static (a plain network keeping the channels the
gates open most, within the gated pass's MACs; "x16": channel counts rounded up to multiples of 16,
see `gatedssl export --channel-multiple`), and dense and static under onnxruntime (with --int8 also
quantized to INT8 as `gatedssl export --quantize int8` writes them).

Latency depends on which channels are open, not on trained weights: this benchmark uses a
randomly initialised network (ResNet-18 width 64 unless --arch/--width say otherwise) and SETS THE GATE BIASES so that every block opens the
wanted share of its channels on average, per channel a different share of the inputs (so masks
vary per input). For every variant it prints median and p90 latency, and its latency ratio to
dense beside its MACs ratio (the counted MACs, gates included, averaged over the inputs).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import time
import warnings

import torch
import torch.nn.functional as F

from gatedssl.data.sources import load_dataset
from gatedssl.export.deploy import plain_network, skipping_network
from gatedssl.export.static import keep_rate_for, kept_channels
from gatedssl.models import create_backbone
from gatedssl.names import WIDTH_MULTIPLIER_ARCHS


def images(size: int, n: int) -> torch.Tensor:
    """Real pictures (the embedded CIFAR-10 test images), resized to `size`, normalised roughly."""
    x = load_dataset("embedded").test.images[:n].float() / 255
    if size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return (x - 0.45) / 0.25


@torch.no_grad()
def set_density(net, x: torch.Tensor, density: float) -> None:
    """Shift each gate channel's bias so it opens for a share p_c of the calibration images, p_c drawn
    from Beta(2d, 2(1 - d)) (mean d): some channels open for most inputs, others rarely, as trained gates do."""
    for gate in net.gates:
        captured = []
        handle = gate.expand.register_forward_hook(lambda m, i, o: captured.append(o.flatten(1)))
        net(x, gated=True)
        handle.remove()
        share = torch.distributions.Beta(2 * density, 2 * (1 - density)).sample((gate.out_channels,)).clamp(0.01, 0.99)
        gate.expand.bias -= torch.stack([torch.quantile(captured[0][:, c], 1 - share[c]) for c in range(gate.out_channels)])


def timed(fn, reps: int, budget_s: float) -> list[float]:
    fn()  # warm-up (allocator, oneDNN primitive cache)
    fn()
    times, start = [], time.perf_counter()
    while len(times) < reps or (time.perf_counter() - start < budget_s and len(times) < 10 * reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


STAGES = {  # profiler op -> stage of the breakdown
    "aten::mkldnn_convolution": "convolutions",
    "aten::_slow_conv2d_forward": "convolutions",
    "aten::index_select": "weight gathering",
    "aten::addmm": "gates",
    "aten::max_pool2d_with_indices": "max-pool",
    "aten::native_batch_norm": "BN (masked pass only)",
    "aten::mul": "masking",
}


def breakdown(fn, runs: int = 5) -> dict[str, float]:
    """Milliseconds per call spent in each stage (self CPU time of the ops, torch.profiler)."""
    from torch.profiler import profile

    fn()
    with contextlib.redirect_stderr(io.StringIO()), profile() as prof:
        for _ in range(runs):
            fn()
    stages: dict[str, float] = {}
    for event in prof.key_averages():
        stage = STAGES.get(event.key, "other ops")
        stages[stage] = stages.get(stage, 0.0) + event.self_cpu_time_total / 1e3 / runs
    return stages


def ort_session(net: torch.nn.Module, size: int, threads: int, int8: bool = False):
    """The network under onnxruntime; int8: as `gatedssl export --quantize int8` writes it (calibrated on 32 of the images)."""
    from gatedssl.export.formats import onnx_bytes
    from gatedssl.export.onnxfile import quantize_int8, session

    data = onnx_bytes(net, size)
    if int8:
        data = quantize_int8(data, iter([images(size, 32).numpy()]))
    return session(data, threads)


def main() -> None:
    parser = argparse.ArgumentParser(description="inference latency of dense, masked, real-skipping and static variants")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 224], help="32: CIFAR stem; larger: ImageNet stem")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    parser.add_argument("--densities", type=float, nargs="+", default=[0.3, 0.5])
    parser.add_argument("--arch", default="resnet18", help="resnet18, mobilenet_v2, ... (default: resnet18)")
    parser.add_argument("--width", type=float, help="channels (ResNets, default 64) or width multiplier (MobileNets, default 1.0)")
    parser.add_argument("--reps", type=int, default=7, help="timed runs per cell at least (more within --budget-s)")
    parser.add_argument("--budget-s", type=float, default=2.0, help="time per cell to spend on extra runs")
    parser.add_argument(
        "--rounds", type=int, default=1, help="time every variant this many times in turn, each --reps / --budget-s (default: 1)"
    )
    parser.add_argument("--group", action="store_true", help="also time the 'group' batch strategy of the real-skipping pass")
    parser.add_argument("--no-onnx", action="store_true")
    parser.add_argument("--int8", action="store_true", help="also time INT8 dense and static under onnxruntime (QDQ, per-channel)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--breakdown", action="store_true", help="also print where the time goes (profiler, batch 1) for each torch variant"
    )
    parser.add_argument("--plot", metavar="FILE.png", help="also draw latency ratio against MACs ratio for every cell")
    args = parser.parse_args()
    device = torch.device(args.device)
    multiplier = args.arch in WIDTH_MULTIPLIER_ARCHS
    width = args.width if args.width is not None else (1.0 if multiplier else 64)
    width = width if multiplier else int(width)
    print(
        f"torch {torch.__version__}, device {device}, {os.cpu_count()} CPUs; {args.arch} width {width:g}; gate biases set to reach "
        f"each density with per-input variation (random weights; latency depends on channel counts, not on weights)"
    )
    table = []
    print(
        f"{'size':>4} {'batch':>5} {'thr':>3} {'dens':>4}  {'variant':<30} {'median ms':>10} {'p90 ms':>8}  {'lat/dense':>9}  {'MACs/dense':>10}"
    )
    for size in args.sizes:
        stem = "cifar" if size <= 64 else "imagenet"
        for density in args.densities:
            torch.manual_seed(0)
            net = create_backbone(args.arch, stem=stem, width=width).eval()
            calibration = images(size, 64)
            set_density(net, calibration, density)
            with torch.no_grad():
                out = net(calibration, gated=True)
            gated_ratio = (out.macs.mean() / out.dense_macs).item()
            frequency = [m.mean(0) for m in out.masks]

            def static_net(multiple: int) -> torch.nn.Module:  # the largest static network within the gated pass's MACs
                q = keep_rate_for(net, frequency, gated_ratio, size, multiple)
                return plain_network(net, "gated", keep=kept_channels(frequency, q, multiple))

            static, static16 = static_net(1), static_net(16)
            dense = plain_network(net, "dense")
            static_ratio = static.macs(size) / dense.macs(size)
            dense_cl = plain_network(net, "dense").to(memory_format=torch.channels_last)
            variants = {
                "dense": (dense, 1.0),
                # the layout the skipping pass runs in: the faster dense network at 224 px on this CPU, the slower at 32
                "dense (channels_last)": (lambda x: dense_cl(x.contiguous(memory_format=torch.channels_last)), 1.0),
                "masked gated": (lambda x: net(x, gated=True), gated_ratio),
                "skipping gated": (skipping_network(net, "union"), gated_ratio),
                **({"skipping gated (group)": (skipping_network(net, "group"), gated_ratio)} if args.group else {}),
                "static": (static, static_ratio),
                "static (x16 channels)": (static16, static16.macs(size) / dense.macs(size)),
            }
            net.to(device)
            for name in list(variants):
                module, ratio = variants[name]
                if isinstance(module, torch.nn.Module):
                    module.to(device)
            dense_cl.to(device)
            for threads in args.threads:
                torch.set_num_threads(threads)
                sessions = (
                    {}
                    if args.no_onnx or device.type != "cpu"
                    else {
                        "dense (onnxruntime)": (ort_session(dense, size, threads), 1.0),
                        "static (onnxruntime)": (ort_session(static, size, threads), static_ratio),
                        "static x16 (onnxruntime)": (ort_session(static16, size, threads), static16.macs(size) / dense.macs(size)),
                        **(
                            {
                                "dense int8 (onnxruntime)": (ort_session(dense, size, threads, int8=True), 1.0),
                                "static int8 (onnxruntime)": (ort_session(static, size, threads, int8=True), static_ratio),
                                "static x16 int8 (onnxruntime)": (
                                    ort_session(static16, size, threads, int8=True),
                                    static16.macs(size) / dense.macs(size),
                                ),
                            }
                            if args.int8
                            else {}
                        ),
                    }
                )
                for batch in args.batches:
                    x = images(size, batch).to(device)
                    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
                    feed = {"images": x.cpu().numpy()}
                    results = {name: ([], ratio) for name, (_, ratio) in {**variants, **sessions}.items()}
                    for _ in range(args.rounds):  # interleaved: a noisy moment falls on every variant alike
                        with torch.no_grad():
                            for name, (module, _) in variants.items():
                                results[name][0].extend(timed(lambda: (module(x), sync()), args.reps, args.budget_s))
                        for name, (session, _) in sessions.items():
                            results[name][0].extend(timed(lambda: session.run(None, feed), args.reps, args.budget_s))
                    if args.breakdown and batch == 1:
                        with torch.no_grad():
                            for name, (module, _) in variants.items():
                                parts = breakdown(lambda: module(x))
                                total = sum(parts.values())
                                shown = ", ".join(f"{k} {v:.2f}" for k, v in sorted(parts.items(), key=lambda kv: -kv[1]))
                                print(f"# breakdown {size} px, batch 1, {threads} thr, density {density}: {name}: {total:.2f} ms = {shown}")
                    base = statistics.median(results["dense"][0])
                    for name, (times, ratio) in results.items():
                        median = statistics.median(times)
                        p90 = sorted(times)[max(0, int(round(0.9 * len(times))) - 1)]
                        print(
                            f"{size:>4} {batch:>5} {threads:>3} {density:>4.1f}  {name:<30} {median * 1e3:>10.2f} {p90 * 1e3:>8.2f}  "
                            f"{median / base:>9.3f}  {ratio:>10.3f}",
                            flush=True,
                        )
                        table.append(
                            dict(size=size, batch=batch, threads=threads, density=density, variant=name, latency=median / base, macs=ratio)
                        )
    if args.plot:
        plot(table, args.plot)


def plot(table: list[dict], path: str) -> None:
    """One panel per (image size, batch): each variant's latency ratio against its MACs ratio; the diagonal is ideal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["size"], r["batch"]) for r in table})
    variants = list(dict.fromkeys(r["variant"] for r in table if r["variant"] != "dense"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.8), squeeze=False)
    markers = dict(zip(variants, "osD^v<>ph*"))
    for ax, (size, batch) in zip(axes[0], panels):
        ax.plot([0, 1.3], [0, 1.3], color="0.6", linestyle="--", linewidth=1, label="latency = MACs (ideal)")
        ax.axhline(1.0, color="0.8", linewidth=1)
        for variant in variants:
            rows = [r for r in table if (r["size"], r["batch"], r["variant"]) == (size, batch, variant)]
            counts = sorted({r["threads"] for r in rows})
            for threads, fill in zip(counts, (True, False)):  # filled: fewest threads; hollow: most
                pts = [r for r in rows if r["threads"] == threads]
                ax.scatter(
                    [r["macs"] for r in pts],
                    [r["latency"] for r in pts],
                    marker=markers[variant],
                    s=46,
                    facecolors=f"C{variants.index(variant)}" if fill else "none",
                    edgecolors=f"C{variants.index(variant)}",
                    label=f"{variant} ({threads} thread{'s' if threads > 1 else ''})",
                )
        ax.set(
            xlim=(0, 1.1),
            ylim=(0, 1.35),
            xlabel="MACs / dense MACs",
            ylabel="latency / dense latency (torch, BN folded)",
            title=f"{size} px, batch {batch}",
        )
        ax.grid(True, alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.tight_layout()
    fig.legend(
        handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(4, 2 * len(panels)), fontsize="small", frameon=False
    )
    fig.savefig(path, dpi=110, bbox_inches="tight")
    print(f"plot written to {path}")


if __name__ == "__main__":
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        main()
