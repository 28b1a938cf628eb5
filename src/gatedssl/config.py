"""Every pretraining setting as one typed dataclass: YAML in, CLI flags out, validation.

Settings left as None are filled in two layers. The dataset sets the sizes (`SIZES`: a
CPU-sized demo on the embedded data, the paper's run elsewhere). The recipe (`RECIPES`,
`--recipe`) sets the method's choices: `reference` is the public reference code's choice on
every point where it differs from the original papers (the default for real datasets),
`embedded` the CPU demo's choices, which are also what gatedssl 0.1.0 did. The resolved
configuration is printed at start and saved with the run, so nothing is implicit.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError
from .names import ARCH_NAMES as ARCHS
from .names import DATASET_NAMES as DATASETS
from .names import METHOD_NAMES, MODE_NAMES


def _opt(default: Any, help: str, choices: tuple | None = None, nargs: int | str | None = None) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices, "nargs": nargs})


RECIPE_NAMES = ("reference", "embedded")


@dataclass
class PretrainConfig:
    # data
    dataset: str = _opt(
        "embedded", "dataset to pretrain on; 'embedded' is a 5,000-image CIFAR-10 subset shipped with the package", DATASETS
    )
    data_dir: str | None = _opt(None, "folder holding the dataset (torchvision's files, or train/ and val|test/ class folders)")
    crop_size: int | None = _opt(
        None,
        "imagefolder: training crop and evaluation size in px, images stored at crop x 256/224 (default 224; "
        "give the images' own size for small pictures, e.g. 32: the stem follows, cifar up to 64 px)",
    )
    recipe: str | None = _opt(
        None,
        "the method's choices on every point where the reference code differs from the papers: reference (its choices; "
        "default for real datasets) or embedded (the CPU demo's, = gatedssl 0.1.0's; default on embedded). "
        "Each choice below can also be set on its own",
        RECIPE_NAMES,
    )
    # network
    arch: str = _opt("resnet18", "backbone", ARCHS)
    width: int | None = _opt(None, "channels of the first stage (64 = standard ResNet); recipe: 8 on embedded, 64 otherwise")
    stem: str | None = _opt(
        None, "stem: 'cifar' (3x3, no max-pool) or 'imagenet' (7x7/2 + max-pool); recipe: cifar up to 64 px", ("cifar", "imagenet")
    )
    stem_padding: int | None = _opt(
        None,
        "padding of the CIFAR stem's 3x3 conv: 2 (reference: 34x34 maps, 703.6 M dense MACs at width 64) "
        "or 1 (32x32, 555.4 M); recipe: reference 2, embedded 1",
        (1, 2),
    )
    separate_bn: bool = _opt(True, "one BN set per pass in each block (as in the reference runs)")
    tau: float = _opt(2 / 3, "gate temperature of the Gumbel-sigmoid")
    gate_bias: bool | None = _opt(None, "a bias on the gate's last 1x1 conv; recipe: reference no, embedded yes")
    # method
    method: str = _opt("vicreg", "self-supervised loss", METHOD_NAMES)
    mode: str = _opt(
        "dual",
        "dual: view 1 gated + view 2 dense (the paper); dense: no gates (baseline B1); gated: both views gated (B2); "
        "slimmable: fixed widths sharing weights, the smaller ones distilled in place from the full one (DSPNet); "
        "posthoc: gates trained on a pretrained dense encoder (--init-from)",
        MODE_NAMES,
    )
    widths: list[float] | None = _opt(
        None, "slimmable: the widths trained, each in (0, 1]; 1.0 (the dense network) is always one (default 1.0 0.75 0.5 0.25)", nargs="+"
    )
    slim_random: int = _opt(1, "slimmable: widths drawn at random each step besides the full and the smallest (the sandwich rule)")
    init_from: str | None = _opt(
        None, "posthoc: the pretrained encoder, a gatedssl run folder (or its checkpoint) or a torchvision-format ResNet state dict"
    )
    finetune_dense: bool = _opt(
        False, "posthoc: let the dense weights move too (they are frozen by default, BN in eval mode); adds the Dual SSL pair"
    )
    pairing: str = _opt(
        "reference", "reference: (gated view 1, dense view 2) only; symmetric: also the swapped pair, averaged", ("reference", "symmetric")
    )
    vicreg_variance: str | None = _opt(
        None,
        "VICReg's variance term: sum of the two branches' hinges (solo-learn's form, the reference) or their "
        "mean (the original VICReg code: half the effective weight); recipe: reference sum, embedded mean",
        ("sum", "mean"),
    )
    vicreg_weights: list[float] | None = _opt(
        None, "VICReg's invariance, variance and covariance weights, meant in the chosen variance form (default 25 25 1)", nargs=3
    )
    proj_dim: int | None = _opt(None, "projector width; recipe: the method's paper value (2048; BYOL 4096), 512 on embedded")
    # budget
    budget: float = _opt(0.5, "target fraction t_d of the dense MACs for the gated pass, in (0, 1]")
    budget_weight: float = _opt(5.0, "lambda: weight of the budget loss")
    bound_weight: float = _opt(1.0, "gamma: weight of the per-block bound loss")
    bound_target: str = _opt("sqrt", "per-block density the bounds start at: sqrt(t_d) (reference) or t_d", ("sqrt", "linear"))
    bound_density: str | None = _opt(
        None,
        "a block's density in the bound loss: l1 (the L1 norm of the hard mask, the reference: a closed channel gets "
        "no gradient from the bounds) or mean (every gate gets gradient); recipe: reference l1, embedded mean",
        ("l1", "mean"),
    )
    anneal: float = _opt(10.0, "alpha * epochs: the bounds open as p = exp(-anneal * epoch / epochs) (reference 0.02 * 500)")
    anneal_from: str | None = _opt(
        None,
        "where the bounds' clock starts: gates (when the gates switch on after --gate-warmup-epochs, the reference) "
        "or start (epoch 0); recipe: reference gates, embedded start",
        ("gates", "start"),
    )
    anneal_clock: str | None = _opt(
        None,
        "how often p moves: epoch (set once per epoch, the reference) or step (every step); recipe: reference epoch, embedded step",
        ("epoch", "step"),
    )
    gate_warmup_epochs: int = _opt(0, "first epochs dense only, without gates or budget losses")
    # optimisation
    epochs: int | None = _opt(None, "training epochs; recipe: 16 on embedded, 500 otherwise")
    batch_size: int | None = _opt(None, "images per step (two views each); recipe: 128 on embedded, 512 otherwise")
    optimizer: str = _opt("lars", "optimizer", ("lars", "sgd", "adamw"))
    lr: float | None = _opt(None, "base learning rate for batch 256, scaled by batch/256; default 0.3 (lars/sgd), 1e-3 (adamw)")
    weight_decay: float | None = _opt(None, "weight decay (not on gates, biases, norms); default 1e-4 (lars/sgd), 0.05 (adamw)")
    gate_lr_scale: float | None = _opt(
        None, "learning-rate multiplier of the gate parameters; default: 1 (paper), 10 on embedded so a short run reaches its budget"
    )
    gate_lars: bool | None = _opt(
        None,
        "gate weights through LARS in their own group (no weight decay; the reference) rather than plain SGD; "
        "recipe: reference yes, embedded no",
    )
    momentum: float = _opt(0.9, "SGD momentum")
    lars_eta: float = _opt(0.02, "LARS trust coefficient")
    warmup_epochs: float | None = _opt(
        None,
        "linear lr warm-up epochs before the cosine decay; default: 10 epochs, at least 500 steps, at most "
        "a quarter of the run, never under 150 steps (the paper's 500 epochs x 97 steps: 970 steps, its 10 epochs; "
        "40 epochs x 15 steps: 150; the embedded demo's 16 x 39: 156; a run shorter than 150 steps warms up "
        "throughout). gatedssl 0.1.0 used 2% of the epochs",
    )
    ema_momentum: float = _opt(0.99, "BYOL teacher momentum at the start (rises to 1)")
    # augmentation
    crop_interpolation: str | None = _opt(
        None,
        "RandomResizedCrop's resampling: bicubic (PIL's, as the reference computes it on PIL images) or "
        "bilinear; recipe: reference bicubic, embedded bilinear",
        ("bicubic", "bilinear"),
    )
    blur_p: list[float] | None = _opt(
        None,
        "Gaussian blur probability of view 1 and view 2; recipe: reference per dataset (CIFAR-100: 0 0.2, "
        "others none), embedded 0.5 0.5 above 64 px, none below",
        nargs=2,
    )
    # evaluation
    eval_every: int = _opt(
        0,
        "every N epochs, kNN top-1 of the passes during training (at most 5,000 train and 1,000 test images; "
        "in metrics.jsonl and curves.png); 0: only at the end",
    )
    knn_protocol: str = _opt(
        "weighted", "kNN: weighted cosine vote (solo-learn convention) or 1nn Euclidean (the reference scripts)", ("weighted", "1nn")
    )
    knn_k: int = _opt(200, "neighbours for the weighted kNN")
    knn_temperature: float = _opt(0.07, "temperature of the weighted kNN vote")
    # run
    device: str = _opt("auto", "auto (CUDA when present), cpu, cuda or cuda:N")
    seed: int = _opt(0, "random seed")
    out: str | None = _opt(None, "run folder; default runs/<dataset>-<arch>-w<width>-<method>-<mode>-b<budget>-s<seed>")
    checkpoint_every: int = _opt(10, "write a checkpoint every N epochs (and at the end, and on SIGTERM/SIGINT)")
    checkpoint_minutes: float = _opt(
        0.0, "also write one mid-epoch every M minutes, so that a preempted long epoch loses at most that much (0: off)"
    )
    keep_checkpoints: int = _opt(2, "how many checkpoints to keep (--resume falls back to an older one if the newest is unreadable)")
    skip_nonfinite: int = _opt(0, "skip up to N batches whose loss is not finite instead of stopping (checks the loss every step)")
    compile: bool = _opt(
        False, "torch.compile the backbone: the first steps wait for the compiler (about a minute on 2 CPU cores), then faster steps"
    )
    precision: str = _opt(
        "auto",
        "forward pass in bf16 or fp16 autocast, or fp32; auto: bf16 on CUDA GPUs that have it, fp16 with a loss scaler on "
        "those that do not (V100, T4), fp32 on the CPU (bf16 there: up to 1.9x faster on CPUs with AVX512-BF16/AMX, "
        "a few kNN points lower on the CPU demo)",
        ("auto", "bf16", "fp16", "fp32"),
    )
    data_pipeline: str = _opt(
        "device",
        "device: views made on the training device in whole batches; loader: torchvision transforms per image in DataLoader workers (the common baseline)",
        ("device", "loader"),
    )
    gather: bool = _opt(
        True,
        "under torchrun, losses that couple samples (VICReg's variance and covariance, Barlow Twins, SimCLR's negatives) "
        "see the global batch; --no-gather: each rank's own batch (the reference's per-GPU VICReg, with --sync-bn)",
    )
    sync_bn: bool = _opt(False, "under torchrun, BatchNorm statistics over the global batch (SyncBatchNorm, as the reference); CUDA only")
    storage: str = _opt(
        "auto",
        "folder datasets: memory decodes every image once and holds it (on the device for training); stream decodes from the files every epoch in DataLoader workers (on the GPU with nvJPEG under CUDA); auto holds what fits in half the free memory",
        ("auto", "memory", "stream"),
    )
    data_workers: int | None = _opt(None, "DataLoader workers that read streamed files (default: the CPU cores, at most 16)")
    limit_per_class: int | None = _opt(None, "use at most N images per class of each split (quick trials)")
    strict: bool = _opt(False, "an unreadable image file ends the run (default: skipped, counted and named)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SIZES: dict[str, dict[str, Any]] = {
    # sized so that `gatedssl pretrain` finishes in about 3 minutes on 2 CPU cores
    "embedded": dict(width=8, proj_dim=512, epochs=16, batch_size=128, gate_lr_scale=10.0),
    "default": dict(width=64, epochs=500, batch_size=512, gate_lr_scale=1.0),
}
RECIPES: dict[str, dict[str, Any]] = {
    "reference": dict(
        stem_padding=2,
        gate_bias=False,
        gate_lars=True,
        vicreg_variance="sum",
        bound_density="l1",
        anneal_from="gates",
        anneal_clock="epoch",
        crop_interpolation="bicubic",
    ),
    "embedded": dict(
        stem_padding=1,
        gate_bias=True,
        gate_lars=False,
        vicreg_variance="mean",
        bound_density="mean",
        anneal_from="start",
        anneal_clock="step",
        crop_interpolation="bilinear",
    ),
}
REFERENCE_BLUR = {"cifar100": [0.0, 0.2]}  # the reference blurs CIFAR-100's second view only; CIFAR-10, STL-10, ImageNet-100 not at all
LEGACY_RECIPE = "embedded"  # settings of runs written by gatedssl 0.1.0 (checkpoint format 1), which had no recipes: its choices
# (0.1.0's warm-up, 2% of the epochs, is in those runs' settings as a number)
OPTIMIZER_DEFAULTS = {
    "lars": dict(lr=0.3, weight_decay=1e-4),
    "sgd": dict(lr=0.3, weight_decay=1e-4),
    "adamw": dict(lr=1e-3, weight_decay=0.05),
}
CROP_SIZES = {"embedded": 32, "cifar10": 32, "cifar100": 32, "stl10": 96, "imagefolder": 224}


def default_recipe(dataset: str) -> str:
    return "embedded" if dataset == "embedded" else "reference"


def size_blur(crop_size: int) -> list[float]:
    """0.1.0's blur: none at CIFAR scale, p 0.5 on both views above 64 px."""
    return [0.0, 0.0] if crop_size <= 64 else [0.5, 0.5]


def resolve(cfg: PretrainConfig) -> PretrainConfig:
    """Fill the sizes and the recipe's choices (settings left as None). Returns a new config.

    Raises UserError for settings of the wrong type: the defaults are looked up by them."""
    problems = type_problems(cfg)
    if problems:
        raise UserError("\n".join(problems))
    values = cfg.to_dict()
    if values["recipe"] is None:
        values["recipe"] = default_recipe(cfg.dataset)
    crop_size = values["crop_size"] or CROP_SIZES.get(cfg.dataset, 224)
    defaults = {
        **SIZES["default"],
        **SIZES.get(cfg.dataset, {}),
        **RECIPES.get(values["recipe"], {}),
        **OPTIMIZER_DEFAULTS.get(cfg.optimizer, {}),
        "vicreg_weights": [25.0, 25.0, 1.0],
        "stem": "cifar" if crop_size <= 64 else "imagenet",
        "blur_p": REFERENCE_BLUR.get(cfg.dataset, [0.0, 0.0]) if values["recipe"] == "reference" else size_blur(crop_size),
    }
    for key, value in defaults.items():
        if values.get(key) is None:
            values[key] = value
    if cfg.mode == "posthoc" and cfg.epochs is None:
        values["epochs"] = max(1, round(POSTHOC_EPOCH_SHARE * values["epochs"]))
    if cfg.mode == "slimmable" and values["widths"] != []:  # an empty list stays empty: validate() names it
        values["widths"] = sorted(
            {1.0, *[canonical_width(w) for w in (DEFAULT_WIDTHS if values["widths"] is None else values["widths"])]}, reverse=True
        )
    if values["out"] is None:
        values["out"] = str(Path("runs") / default_run_name(values))
    return PretrainConfig(**values)


DEFAULT_WIDTHS = (1.0, 0.75, 0.5, 0.25)


def canonical_width(width: float) -> float:
    """The width its sub-network's name says (width0.333333 for 0.3333333): the name is how a width's BN set,
    checkpoints and reports find it, so two widths of one name are one width (and 0.9999999 is the dense network)."""
    width = float(width)
    return float(f"{width:g}") if math.isfinite(width) else width


POSTHOC_EPOCH_SHARE = 0.2  # post-hoc gating trains a fifth of the dataset's pretraining epochs (embedded: 3, others: 100)


MIN_WARMUP_STEPS = 150  # the fewest steps the lr takes to rise to its peak (BENCHMARKS.md, "Short runs of the default recipe")


def warmup_steps(cfg: PretrainConfig, steps_per_epoch: int) -> int:
    """Linear warm-up length in steps: --warmup-epochs if set, else 10 epochs, at least 500 steps, at most a
    quarter of the run, and never fewer than MIN_WARMUP_STEPS. The reference's run gets its 10 epochs (970
    steps). A fresh network cannot take the peak lr within a few dozen steps: a 45-step run warmed up in 11
    diverged in 3 of 3 seeds, so a run shorter than 150 steps warms up throughout (its lr ends below the
    peak, as the reference's own 10-epoch warm-up would leave it) and a longer one keeps most of its length
    for training after the warm-up."""
    if cfg.warmup_epochs is not None:
        return round(cfg.warmup_epochs * steps_per_epoch)
    total = cfg.epochs * steps_per_epoch
    return max(min(max(10 * steps_per_epoch, 500), total // 4), MIN_WARMUP_STEPS)


def default_run_name(v: dict[str, Any]) -> str:
    return f"{v['dataset']}-{v['arch']}-w{v['width']}-{v['method']}-{v['mode']}-b{v['budget']:g}-s{v['seed']}"


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
    for name in (
        "width",
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
        ("width", 4096, "64 is the standard ResNet"),
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


SHIPPED_CONFIGS = Path(__file__).with_name("configs")  # the paper's runs: --config cifar10 | cifar100 | stl10 | imagenet100


def shipped_configs() -> list[str]:
    return sorted(p.stem for p in SHIPPED_CONFIGS.glob("*.yaml"))


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML config, a file or a shipped config's name; unknown keys are an error (a typo must not be silently ignored).

    Values are read as a user means them: a number YAML 1.1 reads as text (`lr: 1e-1`) is a number, and one
    number where a list is expected (`widths: 0.5`) a list of one; resolve() and validate() judge the rest."""
    if not os.path.exists(path) and str(path) in shipped_configs():
        path = SHIPPED_CONFIGS / f"{path}.yaml"
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except FileNotFoundError:
        raise UserError(
            f"config file {path} not found; give a YAML file or one of the shipped configs: {', '.join(shipped_configs())}"
        ) from None
    except IsADirectoryError:
        raise UserError(f"config file {path} is a folder; give the YAML file itself (e.g. {Path(path) / 'config.yaml'})") from None
    except OSError as exc:
        raise UserError(f"config file {path} cannot be read ({exc.strerror or exc}); check its permissions") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"config file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except yaml.YAMLError as exc:
        raise UserError(f"config file {path} is not valid YAML: {_yaml_problem(exc)}") from None
    except (ValueError, RecursionError) as exc:  # PyYAML's own limits, e.g. an integer of over 4,300 digits, nesting
        raise UserError(f"config file {path} cannot be read: {str(exc).splitlines()[0][:200] or type(exc).__name__}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of setting: value")
    names = {f.name: str(f.type).replace(" | None", "") for f in fields(PretrainConfig)}
    not_names = [("null" if k is None else str(k).lower() if isinstance(k, bool) else _show(k)) for k in data if not isinstance(k, str)]
    if not_names:
        raise UserError(
            f"config file {path}: key(s) {', '.join(not_names)} are not setting names; write `setting: value`, e.g. `budget: 0.3`"
        )
    data = {k.replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise UserError(f"config file {path}: unknown key(s) {', '.join(unknown)}; see `gatedssl pretrain --help` for the settings")
    return {k: _as_meant(v, names[k]) for k, v in data.items()}


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's reason and where, in one line ("found unhashable key at line 1, column 1")."""
    problem, mark = getattr(exc, "problem", None), getattr(exc, "problem_mark", None)
    if not problem:
        return str(exc).splitlines()[0]
    return f"{problem}" + (f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "")


def _as_meant(value: Any, kind: str) -> Any:
    """A YAML value as the setting's type means it, where that is unambiguous; anything else unchanged (validate names it)."""
    if kind == "list[float]":
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            value = [value]
        return [_as_meant(v, "float") for v in value] if isinstance(value, list) else value
    if kind in ("float", "int") and isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        if kind == "float":
            return number
        return int(number) if number.is_integer() and abs(number) < _INT64 else value
    return value


def upgrade_stored(values: dict[str, Any]) -> dict[str, Any]:
    """A run's stored settings with what older gatedssl did for every key it did not write yet.

    Weight shapes do not change with most of these choices (a CIFAR stem padded by 2 has the
    same kernel), so a missing key must read as the old behaviour, never as today's default."""
    values = {
        "recipe": LEGACY_RECIPE,
        **RECIPES[LEGACY_RECIPE],
        "vicreg_weights": [25.0, 25.0, 1.0],
        **{k: None for k in ("widths", "init_from")},
        "slim_random": 1,
        "finetune_dense": False,
        "checkpoint_minutes": 0.0,
        "gather": True,
        "sync_bn": False,
        **values,
    }
    if "blur_p" not in values:
        values["blur_p"] = size_blur(values.get("crop_size") or CROP_SIZES.get(values.get("dataset"), 224))
    return values


def load_stored(run_folder: str | os.PathLike) -> dict[str, Any] | None:
    """The settings a run folder's config.yaml holds (upgraded), or None if it has none readable."""
    try:
        with open(Path(run_folder) / "config.yaml") as fh:
            values = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError):
        return None
    return upgrade_stored(values) if isinstance(values, dict) else None


def save_yaml(cfg: PretrainConfig, path: str | os.PathLike, launch: dict | None = None) -> None:
    """The settings; `launch` (world size, per-rank batch) goes in as a comment: facts of the launch, not settings."""
    with open(path, "w") as fh:
        if launch:
            fh.write("# launched with " + ", ".join(f"{k}: {v}" for k, v in launch.items()) + "\n")
        yaml.safe_dump(cfg.to_dict(), fh, sort_keys=False)
