"""A run's summary.json: what it holds, writing it whole, and the table printed from it (reporting.runs reads it back)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from . import __version__
from .checkpoint import atomic_write
from .config import PretrainConfig
from .data.sources import DatasetSplits
from .precision import resolve_precision
from .reporting.runs import subnet_names


def make_summary(
    cfg: PretrainConfig, splits: DatasetSplits, final: dict, init_eval: dict | None, train_seconds: float | None, device: torch.device
) -> dict:
    summary = {
        "dataset": cfg.dataset,
        "recipe": cfg.recipe,
        "method": cfg.method,
        "mode": cfg.mode,
        "pairing": cfg.pairing,
        "arch": cfg.arch,
        "width": cfg.width,
        "stem": cfg.stem,
        "stem_padding": cfg.stem_padding if cfg.stem == "cifar" else 3,
        "budget": cfg.budget,
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
        "subnets": subnet_names(final),
        **{name: final[name] for name in subnet_names(final)},
        "knn": final["knn"],
        "data": {
            "pretrain_images": len(splits.pretrain.labels),
            "train_images": len(splits.train.labels) if splits.labeled else 0,
            "test_images": len(splits.test.labels) if splits.labeled else 0,
            "labeled": splits.labeled,
        },
        "device": str(device),
        "precision": resolve_precision(device, cfg.precision),
        "gatedssl_version": __version__,
        "torch_version": torch.__version__,
    }
    if cfg.widths is not None:
        summary["widths"] = cfg.widths
    if cfg.init_from is not None:
        summary["init_from"] = cfg.init_from
    if init_eval is not None:
        summary["init"] = {name: init_eval[name] for name in subnet_names(init_eval)}
    if train_seconds is not None:
        summary["train_seconds"] = round(train_seconds, 2)
    return summary


def write_summary(path: Path, summary: dict) -> None:
    atomic_write(path, lambda fh: fh.write(json.dumps(summary, indent=2).encode()))


def format_summary(summary: dict) -> str:
    """The short table printed at the end of a run (and by `gatedssl eval`)."""
    init = summary.get("init", {})
    knn = summary["knn"]
    knn_name = f"kNN top-1 ({'weighted, k=' + str(knn['k']) if knn['protocol'] == 'weighted' else '1-NN'})"
    passes = ("dense",) if summary.get("mode") == "dense" else subnet_names(summary)
    probe = summary["dense"].get("probe")
    header = ["pass", knn_name, "at init"]
    if probe:
        header.append(f"linear probe top-1 ({probe['protocol']}, {probe['seeds']} seed{'s' if probe['seeds'] > 1 else ''})")
    rows = [tuple(header + ["MACs/image", "MACs vs dense"])]
    for name in passes:
        res = summary[name]
        at_init = init.get(name, {}).get("knn_top1")
        row = [name, "-" if res["knn_top1"] is None else f"{res['knn_top1']:.2f} %", "-" if at_init is None else f"{at_init:.2f} %"]
        if probe:
            p = res.get("probe")
            row.append("-" if p is None else f"{p['top1']:.2f} %" + (f" +- {p['top1_std']:.2f}" if p["seeds"] > 1 else ""))
        rows.append(tuple(row + [f"{res['macs'] / 1e6:.1f} M", f"{res['macs_ratio']:.3f}"]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    head = f"{summary['dataset']} | {summary['arch']} w{summary['width']} | {summary['method']} {summary['mode']} | budget {summary['budget']:g} | {summary['epochs']} epochs"
    if "train_seconds" in summary:
        seconds = summary["train_seconds"]
        head += f" | trained in {seconds:.1f} s" if seconds < 10 else f" | trained in {seconds:.0f} s"
    return "\n".join([head, *lines])
