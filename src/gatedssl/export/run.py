"""`gatedssl export`: a trained run's dense encoder or static sub-network, written in a chosen format.

The static export also measures what it kept (kNN, fast linear probe, MACs) and records it in the
run's summary.json under "static", so the report can set static pruning beside per-input gating.
"""

from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import load_checkpoint, run_folder_of, write_problems
from ..data.sources import load_run_data
from ..errors import UserError
from ..evaluation.evaluate import extract
from ..evaluation.knn import knn_top1
from ..evaluation.probe import linear_probe
from ..evaluation.runs import read_summary
from ..factory import restore_objective, select_device
from ..models.backbone import BackboneOutput
from ..models.torchvision_names import sidecar_path
from ..names import parse_subnet
from ..summary import write_summary
from .deploy import plain_network
from .encoder import EvalTransform
from .formats import (
    FORMATS,
    onnx_bytes,
    require,
    verify_onnx,
    write_bytes,
    write_pt,
    write_torchscript,
    write_torchvision,
)
from .latency_target import RATIOS, Measured, NoCandidate, check_target, no_candidate, plot, search, timer
from .onnxfile import QUANTIZE, OnnxNetwork, calibration_batches, calibration_count, describe, int8_report, with_metadata
from .static import keep_rate_for, kept_channels

SUBNETS = ("dense", "static")
SUFFIXES = {
    "pt": (".pt", ".pth"),
    "torchscript": (".ts", ".torchscript", ".pt", ".jit"),
    "onnx": (".onnx",),
    "torchvision": (".pth", ".pt"),
}


class PlainAsBackbone(nn.Module):
    """A plain network behind the backbone interface evaluation uses (`net(x, gated)` -> BackboneOutput)."""

    def __init__(self, net: nn.Module, size: int):
        super().__init__()
        self.net, self.feature_dim, self.macs = net, net.feature_dim, net.macs(size)

    def forward(self, x: torch.Tensor, subnet=None) -> BackboneOutput:
        features = self.net(x)
        return BackboneOutput(features, [], torch.full((x.shape[0],), float(self.macs), device=x.device), self.macs)


def _is_width(subnet: str) -> bool:
    try:
        return parse_subnet(subnet)[0] == "width"
    except ValueError:
        return False


# onnxruntime runs channel counts that are multiples of 16 faster per MAC than the exact counts the gates choose:
# 1.2-1.5x on ResNets of widths 8 to 64, 1.7-3x on MobileNets, whose exact counts can run slower than the dense
# network (BENCHMARKS.md); torch gains little. Where rounding cannot meet the MACs asked for, export keeps exact counts.
ONNX_CHANNEL_MULTIPLE = 16


def reaches(backbone, frequency, ratio: float, size: int, multiple: int, costs=None) -> bool:
    """Whether some keep rate's network, its counts rounded to `multiple`, spends at most `ratio` of the MACs."""
    try:
        keep_rate_for(backbone, frequency, ratio, size, multiple, costs)
    except UserError:
        return False
    return True


def default_channel_multiple(backbone, frequency, size: int, fmt: str, keep_rate, macs_ratio, latency_ms, cfg, log) -> int:
    """--channel-multiple when none is given: 16 for an ONNX file where it serves the request (said in one line), else 1
    (the gates' exact counts; always for torch formats, which gain little).

    A --keep-rate names the channel sets itself: rounding them up would add MACs nobody asked for (nearly twice as many
    on a width-8 network). A MACs target must be reachable in rounded counts (where exact counts cannot reach it either,
    the search's own error says so). A latency search starts with rounded candidates, which run faster per MAC, and
    the export tries the exact counts' if none meets the target."""
    if fmt != "onnx" or keep_rate is not None:
        return 1
    multiple = ONNX_CHANNEL_MULTIPLE
    costs = backbone.channel_costs(size)  # one pass of the network serves every check
    lowest = RATIOS[0] if latency_ms is not None else macs_ratio if macs_ratio is not None else cfg.budget
    if reaches(backbone, frequency, lowest, size, multiple, costs):
        log(
            f"channel counts rounded up to multiples of {multiple}, which onnxruntime runs faster per MAC (--channel-multiple 1 keeps the gates' exact counts)"
        )
        return multiple
    if reaches(backbone, frequency, lowest, size, 1, costs):
        log(
            f"channel counts rounded to multiples of {multiple} cannot reach {lowest:g} of the MACs (the target): keeping the gates' exact counts"
        )
    return 1


def check_request(
    subnet: str,
    fmt: str,
    out: str,
    keep_rate: float | None,
    macs_ratio: float | None,
    channel_multiple: int | None = None,
    quantize: str | None = None,
    calibration_images: int | None = None,
) -> list[str]:
    """Every problem with the request that needs no checkpoint, all at once."""
    problems = []
    if quantize is not None and quantize not in QUANTIZE:
        problems.append(f"--quantize must be one of {', '.join(QUANTIZE)}, got {quantize!r}")
    elif quantize is not None and fmt != "onnx":
        problems.append(f"--quantize {quantize} writes an ONNX model (onnxruntime's quantization); add --format onnx")
    if calibration_images is not None and quantize is None:
        problems.append("--calibration-images calibrates --quantize int8; add --quantize int8, or drop it")
    if calibration_images is not None and calibration_images < 1:
        problems.append(f"--calibration-images must be at least 1, got {calibration_images}")
    if subnet not in SUBNETS and not _is_width(subnet):
        problems.append(f"--subnet must be one of {', '.join(SUBNETS)} or a slimmable run's widthW (e.g. width0.5), got {subnet!r}")
    if fmt not in FORMATS:
        problems.append(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if keep_rate is not None and macs_ratio is not None:
        problems.append("give --keep-rate or --macs-ratio, not both")
    if (keep_rate is not None or macs_ratio is not None) and subnet != "static":
        problems.append("--keep-rate and --macs-ratio choose the static sub-network's channels; add --subnet static")
    if channel_multiple is not None and subnet != "static":
        problems.append("--channel-multiple rounds the static sub-network's channel counts; add --subnet static, or drop it")
    if keep_rate is not None and not 0.0 <= keep_rate <= 1.0:
        problems.append(f"--keep-rate must be in [0, 1], got {keep_rate:g}")
    if macs_ratio is not None and not 0.0 < macs_ratio <= 1.0:
        problems.append(f"--macs-ratio must be in (0, 1], got {macs_ratio:g}")
    if channel_multiple is not None and channel_multiple < 1:
        problems.append(f"--channel-multiple must be at least 1, got {channel_multiple}")
    if fmt == "torchvision" and subnet != "dense":
        problems.append(
            "--format torchvision writes the dense encoder (torchvision's networks have fixed channel counts); use --subnet dense, "
            f"or --format pt, torchscript or onnx for the {subnet} sub-network"
        )
    if fmt == "onnx":
        try:
            require("onnx", "onnxscript", "onnxruntime")
        except UserError as exc:
            problems.append(str(exc))
    folder = Path(out).resolve().parent
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if Path(out).is_dir():
        problems.append(f"--out {out} is a folder; give a file name such as {Path(out) / ('encoder' + SUFFIXES.get(fmt, ('.pt',))[0])}")
    elif (
        fmt in SUFFIXES
        and not (quantize is not None and fmt != "onnx")  # said above: add --format onnx
        and any(Path(out).suffix.lower() in names for f, names in SUFFIXES.items() if f != fmt)
        and Path(out).suffix.lower() not in SUFFIXES[fmt]
    ):  # a file named for another format would be read as that format, and fail
        problems.append(
            f"--out {out} names a {Path(out).suffix} file, but --format is {fmt}; name it *{SUFFIXES[fmt][0]}, or give the --format "
            f"the name says"
        )
    elif Path(out).is_file() and fmt in SUFFIXES and Path(out).suffix.lower() not in SUFFIXES[fmt]:
        problems.append(
            f"--out {out} exists and is not a {fmt} file (a {fmt} export is named *{' or *'.join(SUFFIXES[fmt])}); "
            f"choose a new name: export overwrites only its own kind of file"
        )
    elif Path(out).is_file() and fmt in SUFFIXES and not _looks_like_a_model(Path(out), fmt):
        problems.append(
            f"--out {out} exists and is not a model file (it does not begin as a {fmt} file does); choose a new name: "
            f"export overwrites only model files"
        )
    elif not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        problems.append(f"--out: cannot write in {existing}; choose a folder you can write to")
    return problems


def _looks_like_a_model(path: Path, fmt: str) -> bool:
    """Whether the file begins as a model file of `fmt` does: an ONNX model with its first protobuf field (ir_version,
    tag 0x08), a torch file as a zip archive or a pickle; so a user's notes named *.onnx or *.pt are never overwritten."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    if fmt == "onnx":
        return head[:1] == b"\x08"
    return head == b"PK\x03\x04" or head[:1] == b"\x80"


def export(
    checkpoint: str,
    out: str,
    subnet: str = "dense",
    fmt: str = "pt",
    keep_rate: float | None = None,
    macs_ratio: float | None = None,
    channel_multiple: int | None = None,
    data_dir: str | None = None,
    device: str = "auto",
    probe: bool = True,
    quantize: str | None = None,
    calibration_images: int | None = None,
    latency_ms: float | None = None,
    runtime: str | None = None,
    threads: int = 1,
    batch_size: int = 1,
    log=None,
) -> dict:
    """Write the export; returns what was measured (and, for static and INT8, recorded in the run's summary)."""
    log = log or (lambda message: print(message, file=sys.stderr))
    problems = check_request(subnet, fmt, out, keep_rate, macs_ratio, channel_multiple, quantize, calibration_images)
    problems += check_target(latency_ms, keep_rate, macs_ratio, subnet, runtime, threads, batch_size, quantize)
    if not problems:  # never over the checkpoint it reads, nor over a file a run needs
        problems = write_problems("--out", out, reads=(checkpoint,))
        if fmt == "torchvision":  # its construction file is written beside it
            problems += write_problems("--out's construction file", sidecar_path(out), reads=(checkpoint,))
        if latency_ms is not None:  # and the latency curve's picture
            problems += write_problems("--out's latency picture", curve_path(out), reads=(checkpoint,))
    if problems:
        raise UserError("\n".join(problems))
    state = load_checkpoint(checkpoint)
    if "finetune" in state:  # a fine-tune: its own sub-network and head
        from .classifier import export_classifier

        if subnet != "dense" or keep_rate is not None or macs_ratio is not None or channel_multiple is not None:
            raise UserError(
                f"{checkpoint} is a fine-tune of the {state['finetune']['subnet']} sub-network: export writes that network and its head; "
                f"drop --subnet, --keep-rate, --macs-ratio and --channel-multiple (fine-tune another sub-network to export it)"
            )
        result = export_classifier(state, checkpoint, out, fmt, quantize, calibration_images, log)
        if quantize is not None:
            record(Path(checkpoint), result, log)
        return result
    objective, cfg = restore_objective(state, checkpoint)
    if subnet == "static" and cfg.mode in ("dense", "slimmable"):
        what = "a dense-only run (mode dense)" if cfg.mode == "dense" else "a slimmable run: it trains widths, not gates"
        raise UserError(
            f"{checkpoint} is {what}; its gates never trained, so they choose no channels; "
            f"export --subnet dense{' or a widthW' if cfg.mode == 'slimmable' else ''}, or a static sub-network of a dual or gated run"
        )
    dev = select_device(device)
    backbone = objective.backbone.to(dev).eval()
    transform = EvalTransform.for_dataset(cfg.dataset, cfg.crop_size)
    size = transform.crop_size
    result: dict = {"subnet": subnet, "format": fmt, "file": str(Path(out).resolve())}  # the summary is read from anywhere
    splits = None
    if subnet == "dense":
        net = plain_network(backbone, "dense")
        result.update(macs=net.macs(size), macs_ratio=1.0)
        if quantize is not None:  # fp32 and INT8 are measured side by side
            splits = run_data(cfg, dev, log, data_dir)
            result.update(measure(net, splits, dev, cfg, probe) if splits.labeled else {"knn_top1": None})
    elif _is_width(subnet):
        if subnet not in objective.subnets:
            raise UserError(
                f"--subnet {subnet}: {checkpoint} has no such width (mode {cfg.mode}; its sub-networks: {', '.join(objective.subnets)})"
            )
        net = plain_network(backbone, subnet)
        splits = run_data(cfg, dev, log, data_dir)
        dense_macs = backbone.channel_costs(size).macs(backbone.gated_channels)
        result.update(
            macs=net.macs(size),
            macs_ratio=net.macs(size) / dense_macs,
            **(measure(net, splits, dev, cfg, probe) if splits.labeled else {"knn_top1": None}),
        )
    else:
        splits = run_data(cfg, dev, log, data_dir)
        frequency = extract(
            backbone, splits.train if splits.labeled else splits.pretrain, splits, "gated", dev, precision=cfg.precision
        ).channel_frequency
        rounding_by_default = channel_multiple is None
        if channel_multiple is None:
            channel_multiple = default_channel_multiple(backbone, frequency, size, fmt, keep_rate, macs_ratio, latency_ms, cfg, log)
        if latency_ms is not None:
            runtime = runtime or ("onnxruntime" if fmt == "onnx" else "torch")
            target = TargetRequest(latency_ms, runtime, threads, batch_size, quantize, calibration_images)
            try:
                keep_rate, result["latency_target"] = keep_rate_for_latency(
                    backbone, frequency, size, channel_multiple, target, splits, cfg, dev, log
                )
            except NoCandidate as missed:
                if not rounding_by_default or channel_multiple == 1:
                    raise
                log(f"{missed} (in multiples of {channel_multiple}): trying the gates' exact counts, which reach smaller networks")
                channel_multiple = 1
                keep_rate, result["latency_target"] = keep_rate_for_latency(
                    backbone, frequency, size, channel_multiple, target, splits, cfg, dev, log
                )
            result["latency_target"]["plot"] = str(curve_path(out))
        elif keep_rate is None:
            keep_rate = keep_rate_for(backbone, frequency, macs_ratio if macs_ratio is not None else cfg.budget, size, channel_multiple)
        net = plain_network(backbone, "gated", keep=kept_channels(frequency, keep_rate, channel_multiple))
        dense_macs = backbone.channel_costs(size).macs(backbone.gated_channels)
        result.update(
            keep_rate=keep_rate,
            channel_multiple=channel_multiple,
            macs=net.macs(size),
            macs_ratio=net.macs(size) / dense_macs,
            channels=net.mid_channels,
            **(measure(net, splits, dev, cfg, probe) if splits.labeled else {"knn_top1": None}),
        )
    if fmt == "pt":
        write_pt(net, subnet, transform, cfg.to_dict(), Path(out), macs_ratio=result["macs_ratio"])
    elif fmt == "torchscript":
        write_torchscript(net, Path(out))
    elif fmt == "onnx":
        about = describe(transform, subnet, result["macs"], result["macs_ratio"], "features", arch=cfg.arch)
        data = with_metadata(onnx_bytes(net, size), about)
        result["onnx_max_abs_diff"] = verify_onnx(data, net, size)
        if quantize is not None:

            def score(int8: bytes) -> dict:  # the INT8 file measured as the fp32 network was
                return measure(OnnxNetwork(int8), splits, torch.device("cpu"), cfg, probe) if splits.labeled else {"knn_top1": None}

            result["int8"] = int8_report(data, splits, calibration_images, score, result, "knn_top1")
            data = result["int8"].pop("data")
        write_bytes(Path(out), data)
    else:
        result.update(write_torchvision(backbone.cpu(), transform, Path(out)))
    if "latency_target" in result:
        target = result["latency_target"]
        curve = [Measured(**m) for m in target["curve"]]
        chosen = next(m for m in curve if m.index == target["chosen"])
        title = f"static candidates, {target['runtime']}{' INT8' if target['int8'] else ''}, {target['threads']} thread(s), batch {target['batch']}"
        plot(curve, chosen, target["target_ms"], curve_path(out), title)
    if subnet == "static" or quantize is not None:
        record(Path(checkpoint), result, log)
    return result


def run_data(cfg, device, log, data_dir: str | None):
    """The run's images (measurements, calibration); a folder that moved since training is one line naming --data-dir."""
    folder = data_dir or cfg.data_dir
    if folder and not Path(folder).exists():
        flag = f"--data-dir {data_dir}: no such folder" if data_dir else f"the run's data folder {folder} is gone (moved or deleted)"
        raise UserError(f"{flag}; give the folder's new place with --data-dir")
    return load_run_data(cfg, device, warn=log, data_dir=data_dir)


def curve_path(out: str | Path) -> Path:
    """Where `--latency-ms` draws the latencies it measured: beside --out."""
    return Path(out).with_suffix(".latency.png")


@dataclass(frozen=True)
class TargetRequest:
    latency_ms: float
    runtime: str
    threads: int
    batch: int
    quantize: str | None
    calibration_images: int | None


def keep_rate_for_latency(
    backbone, frequency, size: int, multiple: int, target: TargetRequest, splits, cfg, device, log
) -> tuple[float, dict]:
    """The keep rate of the largest static network (most channels) whose median latency on this machine meets the
    target, and the curve measured on the way (MACs ratio, keep rate, latency, kNN of each candidate timed)."""
    costs = backbone.channel_costs(size)  # one pass of the network serves every candidate's MACs
    full = costs.macs(backbone.gated_channels)
    rates: list[float] = []
    for ratio in RATIOS:  # candidates from the most channels to the fewest; ratios no keep rate reaches end the list
        try:
            q = keep_rate_for(backbone, frequency, ratio, size, multiple, costs)
        except UserError:
            break
        if not rates or q != rates[-1]:
            rates.append(q)

    @functools.cache  # each candidate timed is built once, for its timing and its kNN
    def network(i: int):
        return plain_network(backbone, "gated", keep=kept_channels(frequency, rates[i], multiple))

    count = calibration_count(splits, target.calibration_images) if target.quantize else 0

    def calibration():
        return calibration_batches(splits, count)

    time_of = timer(target.runtime, size, target.threads, target.batch, calibration if target.quantize else None)

    def latency_of(i: int) -> float:
        ms = time_of(network(i))
        log(f"latency target {target.latency_ms:g} ms: candidate {i + 1}/{len(rates)} (keep rate {rates[i]:.4g}) took {ms:.3g} ms")
        return ms

    chosen, measured = search(len(rates), latency_of, target.latency_ms)
    curve = []
    for i, ms in sorted(measured.items()):
        net = network(i)
        knn = measure(net, splits, device, cfg, probe=False)["knn_top1"] if splits.labeled else None
        curve.append(Measured(i, rates[i], net.macs(size) / full, ms, knn))
    if chosen is None:
        raise no_candidate(target.latency_ms, curve[-1], target.runtime, target.threads, target.batch)
    return rates[chosen], {
        "target_ms": target.latency_ms,
        "runtime": target.runtime,
        "threads": target.threads,
        "batch": target.batch,
        "int8": target.quantize is not None,
        "chosen": chosen,
        "candidates": len(rates),
        "curve": [m.__dict__ for m in curve],
    }


def measure(net: nn.Module, splits, device: torch.device, cfg, probe: bool) -> dict:
    """kNN top-1 and (fast) linear-probe accuracy of a plain network, as `gatedssl eval` measures the passes."""
    adapter = PlainAsBackbone(net, splits.crop_size).to(device)
    train = extract(adapter, splits.train, splits, "dense", device, precision=cfg.precision)
    test = extract(adapter, splits.test, splits, "dense", device, precision=cfg.precision)
    top1 = knn_top1(
        train.features,
        splits.train.labels.to(device),
        test.features,
        splits.test.labels.to(device),
        len(splits.train.classes),
        cfg.knn_protocol,
        cfg.knn_k,
        cfg.knn_temperature,
    )
    measured = {"knn_top1": top1}
    if probe:
        measured["probe"] = linear_probe(adapter, splits, "dense", device, precision=cfg.precision, progress=False).to_dict()
    return measured


def record(checkpoint: Path, result: dict, log=None) -> None:
    """The latest static export goes under "static" in RUN/summary.json, the latest INT8 export of each sub-network
    under "int8" (when the checkpoint is a run's and the run has one)."""
    run = run_folder_of(checkpoint)
    if run is None and checkpoint.parent.name == "checkpoints" and (checkpoint.parent.parent / "labels.txt").is_file():
        run = checkpoint.parent.parent  # a fine-tune's folder (FT/checkpoints, FT/labels.txt, FT/summary.json)
    if run is None or not (run / "summary.json").exists():
        return
    summary = read_summary(run / "summary.json")
    if summary is None:
        (log or print)(
            f"warning: {run / 'summary.json'} is unreadable; the static export is not recorded in it (`gatedssl eval` writes it)"
        )
        return
    if result["subnet"] == "static" and "classes" not in result:  # a pretraining run's static export
        summary["static"] = result
    if "int8" in result:
        summary.setdefault("int8", {})[result["subnet"]] = result
    write_summary(run / "summary.json", summary)
