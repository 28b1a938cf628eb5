"""Every pretraining setting as one typed dataclass, with the tables that fill in the settings left as None.

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
from dataclasses import dataclass, field
from typing import Any

from ..names import ARCH_NAMES as ARCHS
from ..names import DATASET_NAMES as DATASETS
from ..names import KNN_PROTOCOLS, METHOD_NAMES, MODE_NAMES, PAIRINGS, PIPELINES, STORAGES

FLAG_GROUPS = (
    "data and augmentation",
    "model",
    "method and mode",
    "budget",
    "optimisation",
    "evaluation",
    "run folder and faults",
    "speed",
    "distributed (torchrun)",
)  # the order `gatedssl pretrain --help` shows them in
_group = FLAG_GROUPS[0]


def section(name: str) -> None:
    """In PretrainConfig's body: the settings below belong to group `name` (their --help heading)."""
    global _group
    if name not in FLAG_GROUPS:
        raise ValueError(f"unknown flag group {name!r}")
    _group = name


def _opt(default: Any, help: str, choices: tuple | None = None, nargs: int | str | None = None) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices, "nargs": nargs, "group": _group})


RECIPE_NAMES = ("reference", "embedded")


@dataclass
class PretrainConfig:
    section("data and augmentation")
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
    section("model")
    arch: str = _opt("resnet18", "backbone", ARCHS)
    width: float | None = _opt(
        None,
        "ResNets: channels of the first stage (64 = standard; recipe: 8 on embedded, 64 otherwise); MobileNets: torchvision's "
        "width multiplier (1.0 = standard; recipe: 0.25 on embedded, 1.0 otherwise)",
    )
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
    section("method and mode")
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
        "reference",
        "reference: (gated view 1, dense view 2) only; symmetric: also the swapped pair; plus-dense: also B1's pair (dense "
        "view 1, dense view 2), which costs a third pass; the pairs' losses are averaged",
        PAIRINGS,
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
    section("budget")
    budget: float = _opt(0.5, "target fraction t_d of the dense MACs for the gated pass, in (0, 1]")
    calibrate_gates: bool = _opt(
        True,
        "at the end of a gated run, shift every gate's logit by one offset so that the thresholded gates spend the "
        "budget on the training images (training samples noisy gates, evaluation thresholds them: the two spend differently)",
    )
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
    section("optimisation")
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
    section("data and augmentation")
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
    section("evaluation")
    eval_every: int = _opt(
        0,
        "every N epochs, kNN top-1 of the passes during training (at most 5,000 train and 1,000 test images; "
        "in metrics.jsonl and curves.png); 0: only at the end",
    )
    knn_protocol: str = _opt(
        "weighted", "kNN: weighted cosine vote (solo-learn convention) or 1nn Euclidean (the reference scripts)", KNN_PROTOCOLS
    )
    knn_k: int = _opt(200, "neighbours for the weighted kNN")
    knn_temperature: float = _opt(0.07, "temperature of the weighted kNN vote")
    section("speed")
    device: str = _opt("auto", "auto (CUDA when present), cpu, cuda or cuda:N")
    section("run folder and faults")
    seed: int = _opt(0, "random seed")
    out: str | None = _opt(None, "run folder; default runs/<dataset>-<arch>-w<width>-<method>-<mode>-b<budget>-s<seed>")
    checkpoint_every: int = _opt(10, "write a checkpoint every N epochs (and at the end, and on SIGTERM/SIGINT)")
    checkpoint_minutes: float = _opt(
        0.0, "also write one mid-epoch every M minutes, so that a preempted long epoch loses at most that much (0: off)"
    )
    keep_checkpoints: int = _opt(2, "how many checkpoints to keep (--resume falls back to an older one if the newest is unreadable)")
    skip_nonfinite: int = _opt(0, "skip up to N batches whose loss is not finite instead of stopping (checks the loss every step)")
    section("speed")
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
        PIPELINES,
    )
    section("distributed (torchrun)")
    gather: bool = _opt(
        True,
        "under torchrun, losses that couple samples (VICReg's variance and covariance, Barlow Twins, SimCLR's negatives) "
        "see the global batch; --no-gather: each rank's own batch (the reference's per-GPU VICReg, with --sync-bn)",
    )
    sync_bn: bool = _opt(False, "under torchrun, BatchNorm statistics over the global batch (SyncBatchNorm, as the reference); CUDA only")
    section("speed")
    storage: str = _opt(
        "auto",
        "folder datasets: memory decodes every image once and holds it (on the device for training); stream decodes from the files every epoch in DataLoader workers (on the GPU with nvJPEG under CUDA); auto holds what fits in half the free memory",
        STORAGES,
    )
    data_workers: int | None = _opt(None, "DataLoader workers that read streamed files (default: the CPU cores, at most 16)")
    section("data and augmentation")
    limit_per_class: int | None = _opt(None, "use at most N images per class of each split (quick trials)")
    section("run folder and faults")
    strict: bool = _opt(False, "an unreadable image file ends the run (default: skipped, counted and named)")
    logger: str = _opt(
        "tensorboard",
        "where the scalars and the final summary go besides metrics.jsonl: tensorboard (RUN/tb), mlflow (RUN/mlruns unless "
        "MLFLOW_TRACKING_URI is set), wandb (WANDB_MODE from the environment), none; comma-separated for several, e.g. "
        "tensorboard,mlflow; mlflow and wandb are extras: pip install 'gatedssl[mlflow]'",
    )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


MOBILENET_WIDTHS = {"embedded": 0.25, "default": 1.0}  # what the recipes' ResNet widths 8 and 64 are for a MobileNet

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
