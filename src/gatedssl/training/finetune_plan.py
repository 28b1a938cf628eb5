"""What a fine-tune is asked to do, its recipe's numbers, and every check before anything is read or written.

The fine-tuning loop (finetune.py) takes a FinetuneConfig these checks passed: bad input is one line, and
the pretraining run, a user's own files or a finished fine-tune are never written over.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoint import is_run_folder, run_folder_of
from ..config import PretrainConfig
from ..models.classifier import FINETUNE_SUBNETS
from ..names import parse_subnet

RECIPES = ("default", "semi")
INITS = ("pretrained", "random")
TARGET_STEPS = 1000  # the default length: about this many steps, within [10, 100] epochs


@dataclass(frozen=True)
class FinetuneConfig:
    """What a fine-tune is asked to do; None: follow the run (data) or the recipe (schedule)."""

    checkpoint: str
    out: str
    subnet: str = "dense"
    dataset: str | None = None
    data_dir: str | None = None
    label_fraction: float = 1.0
    label_list: str | None = None
    init: str = "pretrained"
    recipe: str = "default"
    epochs: int | None = None
    lr: float | None = None  # per 256 images
    batch_size: int = 128
    weight_decay: float | None = None
    label_smoothing: float | None = None
    freeze_backbone: bool = False
    freeze_gates: bool = False
    calibrate_gates: bool = True
    budget_weight: float | None = None  # gated: the budget loss's weight (default: the run's)
    keep_rate: float | None = None  # static: the channels kept (default: the run's budget as the MACs target)
    seed: int = 0
    device: str = "auto"
    checkpoint_minutes: float = 10.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def recipe_values(cfg: FinetuneConfig, labelled: int) -> dict:
    """The schedule a recipe gives for this many labelled images, with what the user set on top.

    default: SGD with Nesterov momentum, 5 % linear warm-up then cosine, lr 0.1 per 256, weight decay 5e-4,
    label smoothing 0.1, about TARGET_STEPS steps. semi: SimCLR's semi-supervised protocol (Chen et al. 2020,
    appendix B.5), which DSPNet follows: Nesterov momentum 0.9, lr 0.05 per 256, no warm-up, no weight decay,
    no label smoothing, crop and flip only; 60 epochs below 10 % of the labels, 30 from there on."""
    steps_per_epoch = math.ceil(labelled / cfg.batch_size)
    if cfg.recipe == "semi":
        epochs = 60 if cfg.label_fraction < 0.1 else 30
        values = {"epochs": epochs, "lr": 0.05, "weight_decay": 0.0, "label_smoothing": 0.0, "warmup": 0.0}
    else:
        epochs = min(100, max(10, math.ceil(TARGET_STEPS / steps_per_epoch)))
        values = {"epochs": epochs, "lr": 0.1, "weight_decay": 5e-4, "label_smoothing": 0.1, "warmup": 0.05}
    for key in ("epochs", "lr", "weight_decay", "label_smoothing"):
        if getattr(cfg, key) is not None:
            values[key] = getattr(cfg, key)
    return values


# ---------------------------------------------------------------------------------------------- checks
def request_problems(cfg: FinetuneConfig) -> list[str]:
    """Every problem that needs neither the checkpoint nor the data."""
    problems = []
    if cfg.subnet not in FINETUNE_SUBNETS:
        try:
            if parse_subnet(cfg.subnet)[0] != "width":
                raise ValueError
        except ValueError:
            problems.append(f"--subnet must be one of {', '.join(FINETUNE_SUBNETS)} or a slimmable run's widthW, got {cfg.subnet!r}")
    if cfg.label_list is not None and cfg.label_fraction != 1.0:
        problems.append("give --label-fraction or --label-list, not both")
    if not 0.0 < cfg.label_fraction <= 1.0:
        problems.append(f"--label-fraction must be in (0, 1], got {cfg.label_fraction:g}")
    if cfg.init not in INITS:
        problems.append(f"--init must be one of {', '.join(INITS)}, got {cfg.init!r}")
    if cfg.recipe not in RECIPES:
        problems.append(f"--recipe must be one of {', '.join(RECIPES)}, got {cfg.recipe!r}")
    for name in ("epochs", "batch_size"):
        value = getattr(cfg, name)
        if value is not None and value < 1:
            problems.append(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if cfg.lr is not None and not cfg.lr > 0:
        problems.append(f"--lr must be positive, got {cfg.lr:g}")
    if cfg.weight_decay is not None and cfg.weight_decay < 0:
        problems.append(f"--weight-decay must be >= 0, got {cfg.weight_decay:g}")
    if cfg.label_smoothing is not None and not 0 <= cfg.label_smoothing < 1:
        problems.append(f"--label-smoothing must be in [0, 1), got {cfg.label_smoothing:g}")
    if cfg.freeze_gates and cfg.subnet != "gated":
        problems.append(f"--freeze-gates keeps the gates of the gated sub-network fixed; --subnet {cfg.subnet} has none")
    if cfg.budget_weight is not None and (cfg.subnet != "gated" or cfg.budget_weight < 0):
        problems.append(f"--budget-weight must be >= 0 and weighs the gated sub-network's budget loss; --subnet is {cfg.subnet}")
    if cfg.freeze_gates and cfg.budget_weight is not None:
        problems.append("--budget-weight weighs the budget loss, which --freeze-gates turns off: give one of them")
    if cfg.checkpoint_minutes < 0:
        problems.append(f"--checkpoint-minutes must be >= 0 (0: at epoch ends only), got {cfg.checkpoint_minutes:g}")
    if cfg.keep_rate is not None and cfg.subnet != "static":
        problems.append("--keep-rate chooses the static sub-network's channels; add --subnet static")
    if cfg.keep_rate is not None and not 0 <= cfg.keep_rate <= 1:
        problems.append(f"--keep-rate must be in [0, 1], got {cfg.keep_rate:g}")
    return problems


def run_problems(cfg: FinetuneConfig, run: PretrainConfig) -> list[str]:
    """Problems of this request with this pretrained run."""
    gated_run = run.mode in ("dual", "gated", "posthoc")
    if cfg.subnet in ("gated", "static") and not gated_run:
        return [
            f"--subnet {cfg.subnet}: {cfg.checkpoint} is a {run.mode} run, it has no gates; fine-tune its dense network (--subnet dense)"
        ]
    if cfg.subnet not in FINETUNE_SUBNETS:
        width = parse_subnet(cfg.subnet)[1]
        if width < 1 and width not in (run.widths or ()):
            have = ", ".join(f"width{w:g}" for w in run.widths or ()) or "none (not a slimmable run)"
            return [f"--subnet {cfg.subnet}: {cfg.checkpoint} has no such width; it has {have}"]
    return []


OWN_FILES = {
    "checkpoints",
    "labels.txt",
    "metrics.jsonl",
    "summary.json",
    "failures.jsonl",
    ".lock",
}  # what a fine-tune writes into its folder


def folder_problems(cfg: FinetuneConfig, resume: bool, overwrite: bool) -> list[str]:
    """--out must be a folder of its own: never the pretraining run (or a folder holding it), never a folder of the
    user's own files, even with --overwrite (which replaces a fine-tune, nothing else)."""
    if not str(cfg.out).strip():
        return ["--out: give a folder for the fine-tune, e.g. --out ft-dense"]
    out, problems = Path(cfg.out), []
    if resume and overwrite:
        problems.append("--resume continues the fine-tune in --out, --overwrite replaces it: give one of them")
    if out.exists() and not out.is_dir():
        return problems + [f"--out {out} is a file; give a folder for the fine-tune"]
    source = Path(cfg.checkpoint).resolve()
    run = run_folder_of(cfg.checkpoint)
    inside = run is not None and any(out.resolve().is_relative_to(run.resolve() / part) for part in ("checkpoints", "tb"))
    if is_run_folder(out) or source.is_relative_to(out.resolve()) or inside:  # RUN/finetune/NAME is fine: a sweep puts them there
        problems.append(
            f"--out {out} is (or holds) the pretraining run {run or source.parent}, or its checkpoints; give the fine-tune a folder of its own"
        )
    elif out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in OWN_FILES and not p.name.startswith("."))
        if foreign:
            listed = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            problems.append(f"--out {out} holds files a fine-tune did not write ({listed}); give a new or empty folder")
    existing = next(p for p in (out.resolve(), *out.resolve().parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        problems.append(f"--out: cannot write in {existing}; choose a folder you can write to")
    if cfg.device not in ("auto", "cpu") and not (cfg.device == "cuda" or cfg.device.startswith("cuda:")):
        problems.append(f"--device {cfg.device!r} is not one of auto, cpu, cuda, cuda:N")
    elif cfg.device.startswith("cuda") and not torch.cuda.is_available():
        problems.append(f"--device {cfg.device}: no CUDA device is available; use --device cpu or auto")
    return problems
