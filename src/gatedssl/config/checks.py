"""What is wrong with a set of settings: one line per problem, all of them at once."""

from __future__ import annotations

import math
import os
import sys
from dataclasses import fields
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from ..names import WIDTH_MULTIPLIER_ARCHS
from .settings import CROP_SIZES, PretrainConfig

_INT64 = 2**63  # what torch (seeds, sizes) can hold; a float field's int must also convert to a float


def _type_ok(value: Any, annotation: str) -> bool:
    base = annotation.replace(" | None", "")
    if value is None:
        return "None" in annotation
    if base == "bool":
        return isinstance(value, bool)
    if base == "int":
        return isinstance(value, int) and not isinstance(value, bool) and -_INT64 < value < _INT64
    if base == "float":
        return isinstance(value, float) or (isinstance(value, int) and not isinstance(value, bool) and -_INT64 < value < _INT64)
    if base == "list[float]":
        return isinstance(value, (list, tuple)) and all(_type_ok(v, "float") for v in value)
    return isinstance(value, str) and "\x00" not in value and _encodable(value)


def _encodable(text: str) -> bool:
    """Whether the system can take the text as a path (YAML can write a lone surrogate such as "\\ud800")."""
    try:
        os.fsencode(text)
    except UnicodeError:
        return False
    return True


def _show(value: Any) -> str:
    """A value for an error line: short, and never an exception (Python refuses to print ints of over 4,300 digits)."""
    try:
        text = repr(value)
    except ValueError:
        text = "a number of over 4,300 digits"
    return text if len(text) <= 60 else text[:57] + "..."


def type_problems(cfg: PretrainConfig) -> list[str]:
    """One line per setting of the wrong type (or a number out of any sensible range): resolve() and validate() need typed values."""
    problems = []
    for f in fields(cfg):
        value, annotation = getattr(cfg, f.name), str(f.type)
        if not _type_ok(value, annotation):
            kind = annotation.replace(" | None", "").replace("list[float]", "a list of numbers").replace("str", "text")
            kind = {"int": "an integer", "float": "a number", "bool": "true or false"}.get(kind, kind)
            problems.append(f"{f.name}: expected {kind}, got {_show(value)}")
    return problems


def validate(cfg: PretrainConfig) -> list[str]:
    """Every problem with the settings, one line each (empty when all is well)."""
    problems = type_problems(cfg)
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if any(p.startswith(f"{f.name}: ") for p in problems):
            continue
        choices, nargs = f.metadata.get("choices"), f.metadata.get("nargs")
        if choices and value is not None and value not in choices:
            problems.append(f"{f.name}: {value!r} is not one of {', '.join(map(str, choices))}")
        elif isinstance(nargs, int) and value is not None and len(value) != nargs:
            problems.append(f"{f.name}: expected {nargs} numbers, got {len(value)}")
        elif any(isinstance(v, float) and not math.isfinite(v) for v in (value if isinstance(value, (list, tuple)) else [value])):
            problems.append(f"{f.name}: must be finite, got {value}")
    if problems:
        return problems

    def check(ok: bool, message: str) -> None:
        if not ok:
            problems.append(message)

    check(0 < cfg.budget <= 1, f"budget: {cfg.budget} is outside (0, 1]; give the gated pass's share of the dense MACs, e.g. 0.5")
    check(
        cfg.stem_padding in (None, 1) or cfg.arch not in WIDTH_MULTIPLIER_ARCHS,
        f"stem_padding: {cfg.stem_padding} applies to the ResNets' CIFAR stem; {cfg.arch}'s stem is torchvision's (drop --stem-padding)",
    )
    if cfg.width is not None and cfg.arch in WIDTH_MULTIPLIER_ARCHS:
        check(0 < cfg.width <= 4, f"width: {cfg.width:g} is outside (0, 4]; for {cfg.arch} it is the width multiplier, e.g. 1.0 or 0.5")
    elif cfg.width is not None:
        check(
            float(cfg.width).is_integer() and cfg.width >= 1,
            f"width: {cfg.width:g} is not a channel count; for {cfg.arch} it is the first stage's channels, e.g. 64 (a width "
            "multiplier is for the MobileNets)",
        )
    for name in (
        "epochs",
        "batch_size",
        "proj_dim",
        "checkpoint_every",
        "keep_checkpoints",
        "knn_k",
        "limit_per_class",
        "crop_size",
    ):
        value = getattr(cfg, name)
        check(value is None or value >= 1, f"{name}: must be a positive integer, got {value}")
    for name, most, why in (
        ("width", 4096, "64 is the standard ResNet"),  # (a MobileNet's is checked above)
        ("proj_dim", 65536, "the papers use 2048 to 8192"),
        ("crop_size", 4096, "ImageNet is trained at 224"),
        ("data_workers", 256, "the default is the CPU cores, at most 16"),
    ):
        value = getattr(cfg, name)
        check(value is None or value <= most, f"{name}: {value} is beyond what a run can hold ({why}); use at most {most}")
    for name in ("tau", "lr", "knn_temperature", "gate_lr_scale"):
        value = getattr(cfg, name)
        check(value is None or value > 0, f"{name}: must be > 0, got {value}")
    for name in (
        "budget_weight",
        "bound_weight",
        "anneal",
        "gate_warmup_epochs",
        "weight_decay",
        "warmup_epochs",
        "lars_eta",
        "skip_nonfinite",
        "data_workers",
        "eval_every",
        "checkpoint_minutes",
    ):
        value = getattr(cfg, name)
        check(value is None or value >= 0, f"{name}: must be >= 0, got {value}")
    check(cfg.vicreg_weights is None or min(cfg.vicreg_weights) >= 0, f"vicreg_weights: must be >= 0, got {cfg.vicreg_weights}")
    check(cfg.blur_p is None or all(0 <= p <= 1 for p in cfg.blur_p), f"blur_p: probabilities must be in [0, 1], got {cfg.blur_p}")
    check(0 <= cfg.momentum < 1, f"momentum: must be in [0, 1), got {cfg.momentum}")
    check(0 <= cfg.ema_momentum <= 1, f"ema_momentum: must be in [0, 1], got {cfg.ema_momentum}")
    if cfg.epochs is not None and cfg.epochs >= 1:
        check(
            cfg.gate_warmup_epochs < cfg.epochs or cfg.mode == "dense",
            f"gate_warmup_epochs: {cfg.gate_warmup_epochs} leaves no gated epoch of {cfg.epochs}",
        )
    if cfg.widths is not None:
        check(len(cfg.widths) > 0, "widths: give at least one width in (0, 1], e.g. --widths 0.25 0.5 0.75 1.0")
        bad = [w for w in cfg.widths if not 0 < w <= 1]
        check(not bad, f"widths: {', '.join(f'{w:g}' for w in bad)} outside (0, 1]; a width is the share of every layer's channels kept")
        check(cfg.mode == "slimmable", f"widths: apply to --mode slimmable, not {cfg.mode}")
    check(cfg.slim_random >= 0, f"slim_random: must be >= 0, got {cfg.slim_random}")
    if cfg.mode == "posthoc":
        check(
            cfg.init_from is not None,
            "init_from: --mode posthoc adds gates to a pretrained encoder; give --init-from RUN_FOLDER (a gatedssl run) "
            "or a torchvision-format ResNet state dict",
        )
        check(cfg.separate_bn, "separate_bn: --mode posthoc trains a gated BN set of its own; drop --no-separate-bn")
    else:
        check(cfg.init_from is None, f"init_from: applies to --mode posthoc, not {cfg.mode}")
        check(not cfg.finetune_dense, f"finetune_dense: applies to --mode posthoc, not {cfg.mode}")
    if cfg.init_from is not None:
        check(os.path.exists(cfg.init_from), f"init_from: {cfg.init_from} does not exist; give a gatedssl run folder or a state dict file")
    if cfg.mode in ("slimmable", "posthoc"):
        check(cfg.gate_warmup_epochs == 0, f"gate_warmup_epochs: --mode {cfg.mode} has no dense warm-up; leave it at 0")
    world = int(os.environ.get("WORLD_SIZE", "1"))  # torchrun's
    if cfg.batch_size is not None:
        check(cfg.batch_size >= 2, "batch_size: SSL losses need at least 2 images per batch")
        check(
            cfg.batch_size % world == 0,
            f"batch_size: {cfg.batch_size} (the global batch) does not divide by the {world} ranks torchrun started; "
            f"use a multiple of {world}, e.g. {max(world, cfg.batch_size // world * world)}",
        )
        check(
            cfg.batch_size < 2 or cfg.batch_size % world or cfg.batch_size // world >= 2,
            f"batch_size: {cfg.batch_size} over the {world} ranks torchrun started is {cfg.batch_size // world} image per rank; "
            f"BatchNorm and the losses need at least 2 on each: use --batch-size {2 * world} or more",
        )
    check(
        world == 1 or cfg.data_pipeline == "device",
        "data_pipeline: --data-pipeline loader is the single-process baseline; under torchrun use the device pipeline (the default)",
    )
    check(
        cfg.dataset == "embedded" or cfg.data_dir is not None or cfg.dataset != "imagefolder",
        "data_dir: --dataset imagefolder needs --data-dir DIR (with DIR/train/<class>/ and DIR/val/<class>/)",
    )
    check(
        cfg.crop_size is None or cfg.dataset == "imagefolder",
        f"crop_size: applies to --dataset imagefolder; {cfg.dataset} has a fixed size",
    )
    check(
        cfg.data_dir is None or cfg.dataset != "embedded",
        f"data_dir: the embedded dataset ships with gatedssl and reads no folder; to train on {cfg.data_dir} add "
        "--dataset imagefolder (class folders; or cifar10, cifar100, stl10 for torchvision's files)",
    )
    problems += crop_problems(cfg)
    check(
        cfg.storage != "stream" or cfg.dataset != "embedded",
        "storage: the embedded dataset is held in memory; --storage stream reads image folders (--dataset imagefolder)",
    )
    problems += logger_problems(cfg.logger)
    if cfg.out is not None:
        problems += path_problems("out", cfg.out)
    if cfg.data_dir is not None and cfg.dataset != "embedded":
        check(os.path.isdir(cfg.data_dir), f"data_dir: {cfg.data_dir} is not a folder; give the folder that holds the {cfg.dataset} files")
    if cfg.device.startswith("cuda") or cfg.sync_bn:
        import torch

        check(
            not cfg.device.startswith("cuda") or torch.cuda.is_available(),
            f"device: {cfg.device} asked for but no CUDA device is available; use --device cpu or auto",
        )
        check(
            not cfg.sync_bn or (cfg.device != "cpu" and torch.cuda.is_available()),
            "sync_bn: PyTorch's SyncBatchNorm runs on CUDA only, and this run is on the CPU; drop --sync-bn",
        )
    elif cfg.device not in ("auto", "cpu"):
        problems.append(f"device: {cfg.device!r} is not one of auto, cpu, cuda, cuda:N")
    return problems


LOGGERS = ("tensorboard", "mlflow", "wandb", "none")  # --logger's names; training/loggers.py has a backend for each but none
LOGGER_EXTRAS = ("mlflow", "wandb")  # backends an extra installs: `pip install 'gatedssl[NAME]'` gives the module NAME


def logger_names(value: str) -> list[str]:
    """--logger's backends, in order, each once ("none" names none)."""
    return [name for name in dict.fromkeys(part.strip() for part in value.split(",")) if name != "none"]


def logger_problems(value: str) -> list[str]:
    """Unknown names, "none" beside others, and a backend whose package is missing: checked before anything is written."""
    names = [part.strip() for part in value.split(",")]
    unknown = [name for name in names if name not in LOGGERS]
    if unknown:
        return [
            f"logger: {', '.join(map(repr, unknown))} {'is' if len(unknown) == 1 else 'are'} not one of {', '.join(LOGGERS)} "
            f"(comma-separated for several, e.g. tensorboard,mlflow)"
        ]
    if "none" in names and len(set(names)) > 1:
        return [f"logger: none logs to metrics.jsonl only and cannot be combined with {', '.join(n for n in names if n != 'none')}"]
    return [
        f"logger: {name} is not installed; pip install 'gatedssl[{name}]'"
        for name in logger_names(value)
        if name in LOGGER_EXTRAS and not _importable(name)
    ]


def _importable(module: str) -> bool:
    if module in sys.modules:  # a test's stand-in, or None for a module made unimportable
        return sys.modules[module] is not None
    return find_spec(module) is not None


NAME_MAX, PATH_MAX = 255, 4095  # bytes of one file name and of a whole path (Linux, macOS)


def path_problems(name: str, path: str) -> list[str]:
    """A path the system cannot create: a name over NAME_MAX bytes or the whole over PATH_MAX."""
    long = [part for part in Path(path).parts if len(os.fsencode(part)) > NAME_MAX]
    if long:
        return [
            f"{name}: the name {long[0][:40]}... is {len(os.fsencode(long[0]))} bytes long; a file or folder name has at most {NAME_MAX}"
        ]
    if len(os.fsencode(path)) > PATH_MAX:
        return [f"{name}: the path is {len(os.fsencode(path))} bytes long; a path has at most {PATH_MAX}"]
    return []


def last_map_side(crop_size: int, stem: str, stem_padding: int) -> int:
    """Side of the last stage's feature map: the stem (cifar: 3x3 conv, stride 1; imagenet: 7x7/2 conv and a
    3x3/2 max-pool), then three stride-2 stages, each rounding up."""
    side = crop_size + 2 * stem_padding - 2 if stem == "cifar" else -(-crop_size // 4)
    for _ in range(3):
        side = -(-side // 2)
    return side


def crop_problems(cfg: PretrainConfig) -> list[str]:
    """The images must leave the last stage at least a 2x2 map: at 1x1 a single image has one value per channel,
    which BatchNorm cannot normalise in training (the MACs are counted on one image)."""
    if cfg.stem is None or (cfg.stem == "cifar" and cfg.stem_padding is None):
        return []  # not resolved yet
    crop, padding = cfg.crop_size or CROP_SIZES.get(cfg.dataset, 224), cfg.stem_padding or 1
    if crop < 1 or last_map_side(crop, cfg.stem, padding) >= 2:
        return []
    smallest = next(n for n in range(1, 1000) if last_map_side(n, cfg.stem, padding) >= 2)
    stem = f"the {cfg.stem} stem" + (f" padded by {padding}" if cfg.stem == "cifar" else "")
    if cfg.crop_size is None:
        return [f"stem: {stem} shrinks {cfg.dataset}'s {crop} px images to a 1x1 map in the last stage; use --stem cifar"]
    return [f"crop_size: {crop} px is too small for {stem} (a 1x1 map in the last stage); use --crop-size {smallest} or more"]
