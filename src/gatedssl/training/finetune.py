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
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import __version__, losses
from ..checkpoint import (
    check_checkpoint,
    load_latest,
    read_weights,
    rng_state,
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
from ..models.classifier import Classifier
from ..precision import autocast, resolve_precision
from ..progress import image_bar
from ..summary import write_summary
from .calibrate import calibrate_gates
from .finetune_plan import FinetuneConfig, folder_problems, recipe_values, request_problems, run_problems
from .guards import LossGuard, StopSignals
from .lock import RunLock
from .optim import warmup_cosine
from .run_folder import RunPaths, append_line, record_failure, remove_own_files, run_folder_problems, truncate_metrics


# ---------------------------------------------------------------------------------------------- setup
@dataclass
class Setup:
    run: PretrainConfig
    splits: DatasetSplits
    train_index: torch.Tensor  # the labelled subset, indices into splits.train
    model: Classifier
    device: torch.device
    values: dict  # the recipe's numbers


def finetune_data(cfg: FinetuneConfig, run: PretrainConfig, log) -> DatasetSplits:
    """The labelled images a fine-tune trains and tests on (the run's, or a transfer's), normalised as the run's were."""
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
    return splits


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
    splits = finetune_data(cfg, run, log)
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
            todo = order[step * batch : steps_per_epoch * batch]  # one reader per epoch: a streamed folder decodes ahead
            for s, x in zip(range(step, steps_per_epoch), read_batches(images, todo, batch, device)):
                rows = order[s * batch : (s + 1) * batch]
                x = augment(x)
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
    everything = torch.arange(len(test.labels))
    for rows, x in zip(everything.split(batch_size), read_batches(test.images, everything, batch_size, device)):
        x = normalize(center_crop(x, splits.crop_size), splits.mean, splits.std)
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
