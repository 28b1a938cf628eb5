"""Fine-tuning: a pretrained run's sub-network and a linear head, trained end to end on labels.

The second loop of the package. It shares the pretraining's machinery rather than copying it: the run
folder's rules and failure record (run_folder), the folder lock, the stop signals and the loss guard
(guards), the atomic checkpoints (checkpoint), the gates' calibration. What is its own: the labelled
subset (data.labels), one augmented view per image and a cross-entropy loss, and for the gated
sub-network the budget term, kept on so that the fine-tuned network still spends the run's budget.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import __version__, losses
from ..checkpoint import (
    check_checkpoint,
    is_run_folder,
    load_latest,
    read_weights,
    rng_state,
    run_folder_of,
    save_run_checkpoint,
    set_rng_state,
)
from ..config import PretrainConfig
from ..data.augment import BatchAugment, center_crop, crop_flip, normalize
from ..data.labels import balanced_subset, fraction_problems, read_label_list, write_label_list
from ..data.sources import DatasetSplits, eval_geometry, load_run_data
from ..data.streaming import read_batches
from ..errors import EXIT_NONFINITE, EXIT_SIGNAL, RunStopped, UserError
from ..evaluation.evaluate import extract
from ..factory import build_objective, restore_objective, select_device
from ..models.classifier import FINETUNE_SUBNETS, Classifier
from ..names import parse_subnet
from ..precision import autocast, resolve_precision
from ..progress import image_bar
from ..summary import write_summary
from .calibrate import calibrate_gates
from .guards import LossGuard, StopSignals
from .lock import RunLock
from .optim import warmup_cosine
from .run_folder import RunPaths, append_line, record_failure, remove_own_files, run_folder_problems, truncate_metrics

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


OWN_FILES = {"checkpoints", "labels.txt", "metrics.jsonl", "summary.json", ".lock"}  # what a fine-tune writes into its folder


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


# ---------------------------------------------------------------------------------------------- setup
@dataclass
class Setup:
    run: PretrainConfig
    splits: DatasetSplits
    train_index: torch.Tensor  # the labelled subset, indices into splits.train
    model: Classifier
    device: torch.device
    values: dict  # the recipe's numbers


def prepare(cfg: FinetuneConfig, log) -> Setup:
    path = Path(cfg.checkpoint)
    if not path.is_file():
        raise UserError(f"--checkpoint {cfg.checkpoint}: no such file; give RUN/checkpoints/last.pt of a pretraining run")
    state = check_checkpoint(read_weights(path), path)
    if "finetune" in state:
        raise UserError(f"--checkpoint {cfg.checkpoint} is a fine-tune's; give the pretraining run's checkpoint")
    objective, run = restore_objective(state, path)
    problems = run_problems(cfg, run)
    if problems:
        raise UserError("\n".join(problems))
    device = select_device(cfg.device)
    crop = eval_geometry(run.dataset, run.crop_size)[0]  # the run's crop size, also for another dataset
    dataset = cfg.dataset or run.dataset
    if cfg.data_dir and dataset == "embedded":
        raise UserError(
            f"--data-dir {cfg.data_dir}: the run trained on the embedded data, which has no folder; add --dataset imagefolder to fine-tune on it"
        )
    transfer = cfg.dataset is not None and cfg.dataset != run.dataset or (cfg.data_dir is not None and cfg.data_dir != run.data_dir)
    data_cfg = dataclasses.replace(
        run,
        dataset=dataset,
        data_dir=cfg.data_dir if cfg.dataset or cfg.data_dir else run.data_dir,
        crop_size=crop if dataset == "imagefolder" else run.crop_size,  # the other datasets have their fixed size
        limit_per_class=None if transfer else run.limit_per_class,  # the run's quick-trial limit is its own images'
    )
    splits = load_run_data(data_cfg, "cpu", warn=log)
    if data_cfg.dataset != run.dataset:  # transfer: the images are normalised as the run's were (its crop size too)
        _, _, mean, std = eval_geometry(run.dataset, run.crop_size)
        splits = dataclasses.replace(splits, mean=tuple(mean), std=tuple(std))
    if not splits.labeled:
        raise UserError(
            f"fine-tuning needs labels: {splits.unlabeled_reason}; give --dataset/--data-dir with train/ and test/ class folders"
        )
    labels, classes = splits.train.labels, splits.train.classes
    if cfg.label_list is not None:
        index = read_label_list(cfg.label_list, splits.train.image_names(), classes)
    else:
        problems = fraction_problems(cfg.label_fraction, labels, classes)
        if problems:
            raise UserError("\n".join(problems))
        index = balanced_subset(labels, len(classes), cfg.label_fraction, cfg.seed)
    missing = sorted(set(range(len(classes))) - set(labels[index].tolist()))
    if missing:
        log(
            f"warning: the labelled images hold no image of {len(missing)} of the {len(classes)} classes "
            f"({', '.join(classes[c] for c in missing[:5])}{', ...' if len(missing) > 5 else ''}); the classifier cannot learn them"
        )
    torch.manual_seed(cfg.seed)
    backbone = objective.backbone if cfg.init == "pretrained" else build_objective(run).backbone
    keep = static_channels(cfg, objective.backbone, splits, device, run) if cfg.subnet == "static" else None
    model = Classifier(backbone, cfg.subnet, classes, keep)
    return Setup(run, splits, index, model, device, recipe_values(cfg, len(index)))


def static_channels(cfg: FinetuneConfig, backbone, splits: DatasetSplits, device, run: PretrainConfig) -> list[torch.Tensor]:
    """The channels `gatedssl export --subnet static` keeps: by --keep-rate, else the largest network within the run's budget."""
    from ..export.static import keep_rate_for, kept_channels

    frequency = extract(backbone.to(device), splits.train, splits, "gated", device).channel_frequency
    backbone.cpu()
    rate = cfg.keep_rate if cfg.keep_rate is not None else keep_rate_for(backbone, frequency, run.budget, splits.crop_size)
    return kept_channels(frequency, rate)


def trainable(cfg: FinetuneConfig, model: Classifier) -> None:
    """Which parameters learn; the frozen parts also stay in eval mode (their BN statistics kept)."""
    if cfg.freeze_backbone:
        model.backbone.requires_grad_(False)
    elif cfg.freeze_gates or cfg.subnet != "gated":
        for gate in model.backbone.gates:  # unused (or kept) gates: no decay, no drift
            gate.requires_grad_(False)


def set_train_mode(cfg: FinetuneConfig, model: Classifier) -> None:
    model.train()
    if cfg.freeze_backbone:
        model.backbone.eval()
    elif cfg.freeze_gates or cfg.subnet != "gated":
        for gate in model.backbone.gates:
            gate.eval()


def build_optimizer(model: Classifier, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    rest = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]  # BN and biases: no decay
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.SGD([g for g in groups if g["params"]], lr=lr, momentum=0.9, nesterov=True)


def augmentation(splits: DatasetSplits, recipe: str) -> BatchAugment:
    """Crop and flip only (the semi-supervised protocol's); the colour augmentations are the SSL task's. The crops
    keep a quarter of the image or more by default (small images), as little as 8 % in `semi` (SimCLR's)."""
    return BatchAugment(crop_flip(splits.crop_size, splits.mean, splits.std, min_scale=0.08 if recipe == "semi" else 0.25))


# ---------------------------------------------------------------------------------------------- the loop
def finetune(cfg: FinetuneConfig, resume: bool = False, overwrite: bool = False, progress: bool = True, log=None) -> dict:
    """Fine-tune and evaluate; returns the summary (also written to OUT/summary.json)."""
    log = log or (lambda message: print(message, file=sys.stderr))
    problems = request_problems(cfg) + folder_problems(cfg, resume, overwrite)
    paths = RunPaths(Path(cfg.out))
    if not problems:
        problems = run_folder_problems(paths, resume, overwrite)
    if problems:
        raise UserError("\n".join(problems))
    setup = prepare(cfg, log)
    with RunLock(paths.root):
        try:
            return _train(cfg, setup, paths, resume, overwrite, progress, log)
        except RunStopped as exc:
            if exc.exit_code != EXIT_SIGNAL:
                record_failure(paths, exc.exit_code, str(exc))
            raise
        except (Exception, KeyboardInterrupt) as exc:
            record_failure(paths, 2 if isinstance(exc, UserError) else 1, f"{type(exc).__name__}: {exc}")
            raise


def _train(cfg: FinetuneConfig, setup: Setup, paths: RunPaths, resume: bool, overwrite: bool, progress: bool, log) -> dict:
    model, splits, device, values = setup.model.to(device=setup.device), setup.splits, setup.device, setup.values
    index, run = setup.train_index, setup.run
    precision = resolve_precision(device, run.precision)
    trainable(cfg, model)
    steps_per_epoch = math.ceil(len(index) / cfg.batch_size)
    batch = len(index) // steps_per_epoch  # equal batches that cover the labelled images (200 at --batch-size 128: 2 x 100)
    epochs, total = values["epochs"], values["epochs"] * steps_per_epoch
    optimizer = build_optimizer(model, values["lr"] * batch / 256, values["weight_decay"])
    scheduler = warmup_cosine(optimizer, max(1, round(values["warmup"] * total)), total)
    augment = augmentation(splits, cfg.recipe)
    budget = cfg.subnet == "gated" and not cfg.freeze_gates and not cfg.freeze_backbone
    budget_weight = run.budget_weight if cfg.budget_weight is None else cfg.budget_weight
    target = (run.budget, budget_weight) if budget else None
    epoch, step, seconds = 0, 0, 0.0
    stored = eval_geometry(splits.name, splits.crop_size)[1]
    transform = {"crop_size": splits.crop_size, "stored_size": stored, "mean": list(splits.mean), "std": list(splits.std)}
    record = {"finetune": cfg.to_dict(), "config": {**cfg.to_dict(), "epochs": epochs}, "run_config": run.to_dict(), "transform": transform}
    if resume:
        saved, where = load_latest(paths.checkpoints, report=log)
        was, now = saved.get("finetune", {}), cfg.to_dict()
        changed = [k for k in now if k not in ("checkpoint_minutes", "device") and was.get(k) != now[k]]
        if changed:
            named = "; ".join(f"--{k.replace('_', '-')} {now[k]} (the fine-tune has {was.get(k)})" for k in changed)
            raise UserError(
                f"--resume: the settings differ from the fine-tune's own in {paths.root}: {named}; resume with the same settings"
            )
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        epoch, step, seconds = saved["epoch"], saved["step"], saved["train_seconds"]
        set_rng_state(saved["rng"])
        truncate_metrics(paths.metrics, epoch)
        log(f"resuming from {where}: epoch {epoch + 1}, step {step + 1} of {steps_per_epoch}")
    else:
        if overwrite:
            remove_own_files(paths)
        paths.checkpoints.mkdir(parents=True, exist_ok=True)
        for stale in (paths.metrics, paths.summary):
            stale.unlink(missing_ok=True)
        write_label_list(paths.root / "labels.txt", splits.train.image_names(), index)
        torch.manual_seed(cfg.seed)

    def save(epoch: int, step: int, seconds: float) -> Path:
        state = {
            **record,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "step": step,
            "train_seconds": seconds,
            "classes": model.classes,
            "labels_used": len(index),
            "rng": rng_state(),
            "gatedssl_version": __version__,
        }
        return save_run_checkpoint(paths.checkpoints, epoch * steps_per_epoch + step, state, keep=2)

    smoothing = values["label_smoothing"]
    images, labels = splits.train.images, splits.train.labels
    bar = image_bar(total * batch, "finetune", progress, (epoch * steps_per_epoch + step) * batch)
    guard, last_save = LossGuard(device), time.monotonic()
    with StopSignals() as stop:
        while epoch < epochs:
            t0 = time.perf_counter()
            set_train_mode(cfg, model)
            order = index[torch.randperm(len(index), generator=torch.Generator().manual_seed(cfg.seed * 100003 + epoch))]
            sums = torch.zeros(3, device=device)  # loss, correct, MACs ratio
            guard.new_epoch()
            for s in range(step, steps_per_epoch):
                rows = order[s * batch : (s + 1) * batch]
                x = augment(next(read_batches(images, rows, batch, device)))
                terms = train_step(model, optimizer, scheduler, x, labels[rows].to(device), smoothing, precision, target)
                guard.observe(s, {"loss": terms[0]})
                sums += terms
                bar.update(batch)
                due = cfg.checkpoint_minutes and time.monotonic() - last_save > 60 * cfg.checkpoint_minutes
                if (stop.received or due or guard.tripped()) and s + 1 < steps_per_epoch:
                    _stop_on_bad_loss(guard, epoch)
                    seconds += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    saved = save(epoch, s + 1, seconds)
                    last_save = time.monotonic()
                    if stop.received:
                        raise RunStopped(
                            f"stopped by {stop.received} at epoch {epoch + 1}, step {s + 1}; checkpoint {saved} written; continue with --resume",
                            EXIT_SIGNAL,
                        )
            _stop_on_bad_loss(guard, epoch)
            seconds += time.perf_counter() - t0
            done = steps_per_epoch - step
            loss_mean, acc, macs_ratio = (sums / done).tolist()
            line = {
                "epoch": epoch + 1,
                "loss": loss_mean,
                "train_top1": 100 * acc,
                "macs_ratio": macs_ratio,
                "lr": scheduler.get_last_lr()[0],
            }
            append_line(paths.metrics, line)
            bar.set_postfix(loss=f"{loss_mean:.3g}", acc=f"{100 * acc:.1f}", refresh=False)
            epoch, step = epoch + 1, 0
            if epoch == epochs or stop.received:
                saved = save(epoch, 0, seconds)
                last_save = time.monotonic()
            if stop.received and epoch < epochs:
                raise RunStopped(
                    f"stopped by {stop.received} after epoch {epoch}; checkpoint {saved} written; continue with --resume", EXIT_SIGNAL
                )
    bar.close()
    return _finish(cfg, setup, paths, seconds, epochs, budget, log, save)


def train_step(model: Classifier, optimizer, scheduler, x: torch.Tensor, y: torch.Tensor, smoothing: float, precision: str, budget=None):
    """One step on an augmented batch; returns (loss, accuracy, MACs ratio) on the device (no host sync).
    budget: (target, weight) adds the budget loss on the gated sub-network's MACs."""
    with autocast(x.device, precision):
        logits, out = model(x.contiguous(memory_format=torch.channels_last))
    loss = F.cross_entropy(logits.float(), y, label_smoothing=smoothing)
    if budget is not None:
        loss = loss + losses.budget_loss(out.macs, out.dense_macs, *budget)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    ratio = out.macs.detach().float().mean() / out.dense_macs
    return torch.stack([loss.detach(), (logits.detach().argmax(1) == y).float().mean(), ratio])


def _stop_on_bad_loss(guard: LossGuard, epoch: int) -> None:
    problem = guard.problem(epoch)
    if problem is not None:
        raise RunStopped(f"{problem}; stopped without saving this epoch. The fine-tune diverged: lower --lr", EXIT_NONFINITE)


def _finish(cfg: FinetuneConfig, setup: Setup, paths: RunPaths, seconds: float, epochs: int, budget: bool, log, save) -> dict:
    model, splits, device = setup.model, setup.splits, setup.device
    before = evaluate_classifier(model, splits, device)
    calibration = None
    if cfg.subnet == "gated" and cfg.calibrate_gates and not cfg.freeze_gates and not cfg.freeze_backbone:
        view = dataclasses.replace(splits, pretrain=splits.train)  # the calibration measures training images
        calibration = calibrate_gates(model.backbone, view, setup.run.budget, device)
        save(epochs, 0, seconds)  # the calibrated gates are the fine-tune's result
    result = evaluate_classifier(model, splits, device) if calibration else before
    summary = {
        "kind": "finetune",
        "subnet": cfg.subnet,
        "init": cfg.init,
        "checkpoint": str(cfg.checkpoint),
        "dataset": splits.name,
        "classes": model.classes,
        "labels_used": len(setup.train_index),
        "train_images": len(splits.train.labels),
        "run_dataset": setup.run.dataset,
        "label_fraction": None if cfg.label_list else cfg.label_fraction,
        "label_list": cfg.label_list,
        "epochs": epochs,
        **{k: v for k, v in setup.values.items() if k != "epochs"},
        "recipe": cfg.recipe,
        "freeze_backbone": cfg.freeze_backbone,
        "freeze_gates": cfg.freeze_gates,
        "budget": setup.run.budget if cfg.subnet in ("gated", "static") else None,
        "budget_loss": budget,
        **result,
        "before_calibration": before if calibration else None,
        "gate_calibration": calibration,
        "train_seconds": round(seconds, 2),
        "device": str(device),
    }
    write_summary(paths.summary, summary)
    return summary


@torch.no_grad()
def evaluate_classifier(model: Classifier, splits: DatasetSplits, device: torch.device, batch_size: int = 500) -> dict:
    """Top-1 on the test split and the MACs the sub-network spent there (eval mode: thresholded gates)."""
    was = model.training
    model.eval()
    test, correct, macs, dense = splits.test, 0, [], 0
    gate_macs = sum(g.macs for g in model.backbone.gates) if model.subnet_name == "static" else 0  # static runs no gate
    for rows in torch.arange(len(test.labels)).split(batch_size):
        x = normalize(center_crop(next(read_batches(test.images, rows, batch_size, device)), splits.crop_size), splits.mean, splits.std)
        logits, out = model(x.contiguous(memory_format=torch.channels_last))
        correct += int((logits.argmax(1).cpu() == test.labels[rows]).sum())
        macs.append(out.macs.float().cpu() - gate_macs)
        dense = out.dense_macs
    model.train(was)
    mean = torch.cat(macs).mean().item()
    return {
        "top1": round(100 * correct / len(test.labels), 2),
        "macs": round(mean),
        "macs_ratio": round(mean / dense, 4),
        "test_images": len(test.labels),
    }
