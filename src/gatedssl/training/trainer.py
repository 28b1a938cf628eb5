"""The pretraining loop: one function a reader can follow from data to checkpoint.

Data live on the training device as uint8 (or, for folders too large, arrive a batch at a
time from DataLoader workers); each step draws a batch by index, makes two augmented views on the device, asks the objective for its loss terms, and steps the
optimizer. Metrics are summed on the device and read once per epoch, so the step never
waits on the host. The loop knows nothing of VICReg or gates: that is the objective's job.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from .. import __version__, distributed
from ..checkpoint import (
    atomic_write,
    first_mismatch,
    is_checkpoint_name,
    load_latest,
    newest_progress,
    rng_state,
    same_file,
    save_run_checkpoint,
    set_rng_state,
    trained_epochs,
)
from ..config import PretrainConfig, load_stored, resolve, save_yaml, upgrade_stored, validate, warmup_steps
from ..data.augment import recipe
from ..data.pipelines import make_views
from ..data.sources import load_run_data
from ..data.streaming import ImageFiles
from ..errors import EXIT_NONFINITE, EXIT_SIGNAL, RunStopped, UserError
from ..evaluation.evaluate import evaluate, online_knn
from ..factory import build_objective, select_device
from ..methods import JointObjective
from ..models.syncbn import convert_sync_bn
from ..precision import autocast, grad_scaler
from ..reporting.curves import plot_training_curves
from ..summary import make_summary, write_summary
from .compute import StepCost, mask_flops, step_cost
from .guards import LossGuard
from .init_from import load_pretrained
from .lock import STALE_S, RunLock
from .optim import build_optimizer, warmup_cosine

# fp16: GradScaler skips the optimizer step whose gradients overflowed while the schedule moves on, as intended
warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step..` before `optimizer.step..`")


@dataclass
class RunPaths:
    root: Path

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def failures(self) -> Path:
        return self.root / "failures.jsonl"


def run_folder_problems(paths: RunPaths, resume: bool, overwrite: bool) -> list[str]:
    held = RunLock(paths.root).holder()
    if held is not None:
        return [
            f"{paths.root} is held by a live run: pid {held.get('pid')} on host {held.get('host')} (heartbeat {held['age']:.0f} s ago); "
            f"stop it first, or wait: a lock whose heartbeat stops for {STALE_S:.0f} s is taken over"
        ]
    if resume:
        return [] if has_checkpoint(paths) else [f"--resume: no checkpoint in {paths.checkpoints}; start the run without --resume"]
    if overwrite or not paths.root.exists():
        return []
    if training_finished(paths):
        return [f"{paths.root} already holds a finished run; choose another --out or pass --overwrite"]
    if has_checkpoint(paths):
        return [f"{paths.root} holds an unfinished run; pass --resume to continue it or --overwrite to start again"]
    if paths.summary.exists():
        return [f"{paths.root} already holds a run's summary.json; choose another --out or pass --overwrite"]
    return []


def storage_problems(cfg: PretrainConfig) -> list[str]:
    """The run folder must be writable and have room for two checkpoints (one being written, one kept)."""
    folder = Path(cfg.out).resolve()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        return [f"out: cannot write in {existing}; choose an --out folder you can write to"]
    with torch.device("meta"):
        numel = sum(p.numel() for p in build_objective(cfg).parameters())
    needed = 2 * 3 * 4 * numel  # weights + momentum + teacher/buffers margin, float32, twice
    free = shutil.disk_usage(existing).free
    if free < needed:
        return [
            f"out: {free / 2**20:.0f} MiB free in {existing}, a checkpoint needs about {needed / 2**20:.0f} MiB; free some space or choose another --out"
        ]
    return []


def with_run_settings(cfg: PretrainConfig, given: set[str] | None = None) -> PretrainConfig:
    """On --resume, settings the user did not give take the run's own values, not today's defaults: a run
    continues as it began (also one written before a default changed: gatedssl 0.1.0's runs have no recipe).
    given: the settings given on the command line (or --config); None (the API): those that are not None."""
    stored = run_settings(resolve(cfg).out)
    if stored is None:
        return cfg
    values = cfg.to_dict()
    unset = {k for k, v in values.items() if v is None} if given is None else set(values) - set(given) - {"out"}
    return PretrainConfig(**{k: stored[k] if k in unset and k in stored else v for k, v in values.items()})


def run_settings(out: str) -> dict | None:
    """The run's own settings: its newest readable checkpoint's (what a resume continues, and is checked against),
    else config.yaml's (a run that has no checkpoint yet); None when neither can be read."""
    progress = newest_progress(RunPaths(Path(out)).checkpoints)
    return upgrade_stored(progress["config"]) if progress is not None else load_stored(out)


def given_differ(cfg: PretrainConfig, given: set[str]) -> list[str]:
    """--resume with a setting given that differs from the run's own: one problem naming them all."""
    stored = run_settings(cfg.out)
    if stored is None:
        return []
    values = cfg.to_dict()
    changed = sorted(k for k in given if k not in _MAY_CHANGE_ON_RESUME and k in stored and stored[k] != values.get(k))
    if not changed:
        return []
    named = "; ".join(f"--{k.replace('_', '-')} {values[k]} (the run has {stored[k]})" for k in changed)
    return [
        f"--resume: the settings differ from the run's own: {named}; drop them to continue the run with its own settings, "
        f"or start a new run (another --out, or --overwrite)"
    ]


def has_checkpoint(paths: RunPaths) -> bool:
    return paths.checkpoints.is_dir() and any(p.name == "last.pt" or p.name.startswith("step_") for p in paths.checkpoints.glob("*.pt"))


def training_finished(paths: RunPaths) -> bool:
    """The training ended: the newest readable checkpoint holds every epoch. Not "summary.json exists": `gatedssl eval`
    writes one for any checkpoint, also of a run stopped half-way."""
    done = trained_epochs(paths.checkpoints)
    return done is not None and done[0] >= done[1]


def finished_summary(paths: RunPaths) -> dict | None:
    """A finished run's summary; None if the training did not finish or its summary is unreadable (its end is then done again)."""
    if not training_finished(paths):
        return None
    try:
        summary = json.loads(paths.summary.read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def resume_wanted(cfg: PretrainConfig, resume: bool | str) -> bool:
    """--resume auto (a scheduler's requeue, torchrun's restarts): continue where a checkpoint is, else start."""
    if resume != "auto":
        return bool(resume)
    paths = RunPaths(Path(resolve(cfg).out))
    return has_checkpoint(paths) and finished_summary(paths) is None


def finished_already(cfg: PretrainConfig, resume: bool | str) -> bool:
    """--resume auto on a finished run: nothing to do (a requeue after the end)."""
    return resume == "auto" and finished_summary(RunPaths(Path(resolve(cfg).out))) is not None


def preflight(cfg: PretrainConfig, resume: bool | str, overwrite: bool, given: set[str] | None = None) -> PretrainConfig:
    """Every check that needs no data or compute, all problems reported at once.

    given: the settings the user gave (the CLI's flags and --config); on --resume the others are the run's own."""
    if finished_already(cfg, resume):
        return resolve(with_run_settings(cfg, given))
    auto, resume = resume == "auto", resume_wanted(cfg, resume)
    if resume or auto:
        cfg = with_run_settings(cfg, given if resume else None)
    cfg = resolve(cfg)
    problems = validate(cfg)
    if not problems and resume and given is not None:
        problems = given_differ(cfg, given)
    if not problems:
        problems = run_folder_problems(RunPaths(Path(cfg.out)), resume, overwrite) + storage_problems(cfg)
    if not problems and overwrite and not resume:
        problems = init_from_problems(cfg)
    if problems:
        raise UserError("\n".join(problems))
    if auto:
        repeated_failure_problem(RunPaths(Path(cfg.out)))
    return cfg


def init_from_problems(cfg: PretrainConfig) -> list[str]:
    """--overwrite removes the run's checkpoints: --init-from must not be one of them (nor the run folder itself)."""
    if cfg.init_from is None:
        return []
    paths, source = RunPaths(Path(cfg.out)), Path(cfg.init_from)
    inside = same_file(source, paths.root) or any(
        same_file(source, p) for p in paths.checkpoints.glob("*.pt") if is_checkpoint_name(p.name)
    )
    if not inside:
        return []
    return [
        f"--init-from {cfg.init_from} is the run in {cfg.out} that --overwrite would replace; copy it elsewhere first, or choose another --out"
    ]


def record_failure(paths: RunPaths, exit_code: int, message: str) -> None:
    """One line per run that ended in an error, for --resume auto to notice a failure that repeats
    (a run that failed before it began, writing nothing, leaves nothing)."""
    if not (paths.root / "config.yaml").exists():
        return
    record = {"time": round(time.time(), 1), "exit_code": exit_code, "error": message.splitlines()[0][:400], "from": _newest(paths)}
    _append_line(paths.failures, record)


def _append_line(path: Path, record: dict) -> None:
    """One JSON line at the end of `path`; after a torn last line (a crash mid-write) it starts a line of its own."""
    with open(path, "ab+") as fh:  # appends go to the end whatever the read position
        end = fh.seek(0, os.SEEK_END)
        torn = end > 0 and fh.seek(end - 1) >= 0 and fh.read(1) != b"\n"
        fh.write((b"\n" if torn else b"") + json.dumps(record).encode() + b"\n")


def _newest(paths: RunPaths) -> str | None:
    """The newest checkpoint's name: where a restart resumes from."""
    names = sorted(p.name for p in paths.checkpoints.glob("step_*.pt"))
    return names[-1] if names else None


def _records(path: Path) -> list[dict]:
    """The JSON-object lines of a .jsonl file gatedssl appends to; a torn line (a crash mid-write) or garbage is skipped:
    a requeue after a crash is exactly when one is there."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def repeated_failure_problem(paths: RunPaths) -> None:
    """--resume auto stops a run whose last two attempts failed the same way (the same error, from the same
    checkpoint, which is still the newest): under torchrun --max-restarts or a requeue loop, a third attempt
    would only fail again. A run that got further since (a fix, then a checkpoint) is tried again."""
    last = _records(paths.failures)[-2:]
    same = len(last) == 2 and all(last[0].get(k) == last[1].get(k) for k in ("exit_code", "error", "from"))
    if same and last[1].get("from") == _newest(paths):
        raise UserError(
            f"--resume auto: the last two attempts failed the same way ({str(last[1].get('error'))[:200]}); not trying again. "
            f"Fix the cause, then resume (the attempts are in {paths.failures})"
        )


_MAY_CHANGE_ON_RESUME = {
    "storage",
    "data_workers",
    "eval_every",
    "checkpoint_minutes",
    "out",
}  # how the same images are read, not which; what is watched; where the folder lives now (a moved run resumes)


class StopSignals:
    """Turns SIGTERM and SIGINT into a request the loop honours after the current step."""

    def __init__(self):
        self.received: str | None = None
        self.finishing = False  # a rank stopping on purpose (exit 75)
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if self.finishing and self._previous and distributed.shard().world > 1:
            # on its way out with exit 75: when another rank exits first, torchrun SIGTERMs this one (even during
            # interpreter shutdown, where a Python handler no longer runs), which would turn 75 into -15
            signal.signal(signal.SIGTERM, signal.SIG_IGN)


@dataclass
class TrainState:
    """Where a run stands, besides its modules: what a checkpoint holds so that a resumed run continues bit-exactly."""

    epoch: int = 0  # whole epochs done
    step: int = 0  # steps done of the next epoch
    order: torch.Tensor | None = None  # that epoch's image order (None: draw one)
    sums: dict = field(default_factory=dict)  # the epoch's summed loss terms, on the device
    init_eval: dict | None = None  # the evaluation at initialisation
    train_seconds: float = 0.0
    executed_flops: float = 0.0  # what the hardware did (gatedssl.training.compute)
    mask_flops: float = 0.0  # what the masks imply
    pretraining: dict | None = None  # posthoc: the source run's training compute
    loss_reference: float | None = None  # the run's first loss: the loss guard's yardstick (gatedssl.training.guards)

    def state_dict(self) -> dict:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["order"] = None if self.order is None else self.order.cpu()
        values["sums"] = {k: v.cpu() for k, v in self.sums.items()}
        return values

    def load_state_dict(self, values: dict, device: torch.device) -> None:
        for f in fields(self):
            if f.name in values:  # checkpoints of older versions lack the compute fields: they stay at zero
                setattr(self, f.name, values[f.name])
        self.order = None if self.order is None else self.order.to(device)
        self.sums = {k: v.to(device) for k, v in self.sums.items()}


class Checkpointer:
    """Writes the modules, the optimizer, the schedule and the TrainState as one file (atomic, keeping the last few), and reads it back."""

    def __init__(self, paths: RunPaths, cfg: PretrainConfig, objective, optimizer, scheduler, scaler, steps_per_epoch: int):
        self.paths, self.cfg, self.steps_per_epoch = paths, cfg, steps_per_epoch
        self.objective, self.optimizer, self.scheduler, self.scaler = objective, optimizer, scheduler, scaler

    def save(self, state: TrainState) -> Path | None:
        """Every rank calls it at the same step (its RNG state goes in); rank 0 writes."""
        rngs = distributed.all_objects(rng_state())
        if not distributed.shard().is_main:
            return None
        return save_run_checkpoint(
            self.paths.checkpoints,
            state.epoch * self.steps_per_epoch + state.step,
            {
                "config": self.cfg.to_dict(),
                "model": self.objective.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": None if self.scaler is None else self.scaler.state_dict(),
                **state.state_dict(),
                "rng": rngs[0],
                "rng_per_rank": rngs,  # equal by the global-draw rule (gatedssl.distributed); kept per rank all the same
                "world_size": len(rngs),
                "gatedssl_version": __version__,
            },
            keep=self.cfg.keep_checkpoints,
        )

    def restore(self, device: torch.device, log) -> TrainState:
        """The newest readable checkpoint's state, after checking that it was written with these settings."""
        me = distributed.shard()
        if me.is_main:
            for stale in self.paths.checkpoints.glob(".*.tmp-*"):  # left by a process killed while writing
                stale.unlink()
        distributed.barrier()
        saved, path = load_latest(self.paths.checkpoints, report=log)
        stored, now = upgrade_stored(saved["config"]), self.cfg.to_dict()
        changed = sorted(k for k in now if k not in _MAY_CHANGE_ON_RESUME and stored.get(k) != now[k])
        if changed:
            raise UserError(
                f"--resume: the settings differ from the checkpoint's ({', '.join(changed)}); resume with the run's own settings"
            )
        try:
            self.objective.load_state_dict(saved["model"])
        except RuntimeError as exc:
            raise UserError(f"checkpoint {path} does not match the network its settings describe ({first_mismatch(exc)})") from None
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        if self.scaler is not None and saved.get("scaler"):
            self.scaler.load_state_dict(saved["scaler"])
        state = TrainState()
        state.load_state_dict(saved, device)
        per_rank, was = saved.get("rng_per_rank"), saved.get("world_size", 1)
        set_rng_state(per_rank[me.rank] if per_rank and was == me.world else saved["rng"])
        if me.is_main:
            _truncate_metrics(self.paths.metrics, state.epoch)
        log(f"resuming from {path}: epoch {state.epoch + 1}, step {state.step + 1} of {self.steps_per_epoch}")
        if was != me.world:
            log(
                f"note: the checkpoint was written by {was} process(es), this run has {me.world}: the global batches, their order "
                f"and their views are the same (drawn for the global batch), but BatchNorm now sees {self.cfg.batch_size // me.world} "
                f"images per rank instead of {self.cfg.batch_size // was}, so the run is not bit-identical to one that kept {was}"
            )
        return state


def stop_on_bad_loss(guard: LossGuard, state: TrainState, epoch: int, cfg: PretrainConfig, paths: RunPaths, warmup: int) -> None:
    """Before a checkpoint and at every epoch end (one host read): keep the guard's yardstick in the state, and stop
    every rank if any rank's loss exploded or stopped being finite, saying what to change."""
    state.loss_reference = guard.reference_value()
    problem = guard.problem(epoch)
    (anywhere,) = distributed.agree(problem is not None)  # every rank stops, or none
    if anywhere and problem is None:
        raise RunStopped(f"the loss diverged on another rank at epoch {epoch + 1}; stopped without saving this epoch", EXIT_NONFINITE)
    if problem is not None:
        raise RunStopped(
            f"{problem}; stopped without saving this epoch; the last good checkpoint is kept in {paths.checkpoints}. "
            f"The run diverged: lower --lr (now {cfg.lr:g} per 256 images) or lengthen the warm-up (--warmup-epochs; now {warmup} steps)"
            + ("" if cfg.skip_nonfinite else ", or skip rare bad batches with --skip-nonfinite N"),
            EXIT_NONFINITE,
        )


def pretrain(
    cfg: PretrainConfig,
    *,
    resume: bool | str = False,
    overwrite: bool = False,
    on_epoch_end: Callable[[int], None] | None = None,
    on_step_end: Callable[[int, int], None] | None = None,
    progress: bool = True,
    log=None,
) -> dict:
    """Pretrain the sub-networks the run's mode declares; returns the summary dict.

    resume: True continues from the last checkpoint; "auto" continues where there is one, else starts
    (and returns a finished run's summary). The run folder is held (RunLock) while the run lives.
    Raises RunStopped when a signal or a non-finite loss ends the run early (with a checkpoint
    of the last good state), UserError for anything the user can fix.
    """
    # under torchrun: join its ranks (the device is checked with the other settings in preflight)
    joined = distributed.env_world_size() > 1 and distributed.init(distributed.local_device(select_device(cfg.device)))
    try:
        return _pretrain(cfg, resume, overwrite, on_epoch_end, on_step_end, progress, log)
    finally:
        if joined:
            distributed.close()


def _pretrain(cfg: PretrainConfig, resume: bool | str, overwrite: bool, on_epoch_end, on_step_end, progress: bool, log) -> dict:
    main = distributed.shard().is_main  # only rank 0 prints and writes
    log = (log or (lambda message: print(message, file=sys.stderr))) if main else (lambda message: None)
    cfg = preflight(cfg, resume, overwrite)
    paths = RunPaths(Path(cfg.out))
    summary = finished_summary(paths) if resume == "auto" else None
    if summary is not None:
        log(f"--resume auto: {paths.root} holds a finished run; nothing to do")
        return summary
    resume = resume_wanted(cfg, resume)
    distributed.barrier()  # every rank has read the folder before rank 0 takes it and changes it
    with RunLock(paths.root) if main else contextlib.nullcontext():
        try:
            return _run(cfg, paths, resume, overwrite, on_epoch_end, on_step_end, progress and main, log)
        except RunStopped as exc:
            if exc.exit_code != EXIT_SIGNAL and main:  # a stop asked for is no failure
                record_failure(paths, exc.exit_code, str(exc))
            raise
        except (Exception, KeyboardInterrupt) as exc:
            if main:
                record_failure(paths, 2 if isinstance(exc, UserError) else 1, f"{type(exc).__name__}: {exc}")
            raise


def _run(cfg: PretrainConfig, paths: RunPaths, resume: bool, overwrite: bool, on_epoch_end, on_step_end, progress: bool, log) -> dict:
    device = distributed.local_device(select_device(cfg.device))
    me = distributed.shard()
    torch.manual_seed(cfg.seed)  # the same on every rank: all draws are for the global batch

    splits = load_run_data(cfg, device, warn=log)
    if not me.is_main and isinstance(splits.pretrain.images, ImageFiles):  # a file only this rank reads: it says so itself
        splits.pretrain.images.warn = lambda message: print(f"rank {me.rank}: {message}", file=sys.stderr)
    if not splits.labeled:
        log(
            f"kNN{' (--eval-every)' if cfg.eval_every else ''} and linear probe skipped: {splits.unlabeled_reason} "
            f"(pretraining only; MACs are measured on the pretraining images)"
        )
    augments = tuple(recipe(splits.crop_size, splits.mean, splits.std, interpolation=cfg.crop_interpolation, blur_p=p) for p in cfg.blur_p)
    views = make_views(cfg.data_pipeline, splits.pretrain.images, augments, cfg.batch_size, device)
    steps_per_epoch = len(views)
    if steps_per_epoch == 0:
        raise UserError(
            f"batch_size {cfg.batch_size} is larger than the {len(splits.pretrain.labels)} pretraining images; use a smaller --batch-size"
        )

    objective = build_objective(cfg)
    pretraining = load_pretrained(cfg, objective.backbone, log=log) if cfg.init_from and not resume else None
    if cfg.sync_bn:
        convert_sync_bn(objective)
    objective = objective.to(device, memory_format=torch.channels_last)
    if cfg.compile:
        objective.backbone.compile()
    lr = cfg.lr * cfg.batch_size / 256
    optimizer = build_optimizer(
        objective, cfg.optimizer, lr, cfg.weight_decay, cfg.momentum, cfg.lars_eta, cfg.gate_lr_scale, cfg.gate_lars
    )
    total_steps = cfg.epochs * steps_per_epoch
    scheduler = warmup_cosine(optimizer, warmup_steps(cfg, steps_per_epoch), total_steps)
    scaler = grad_scaler(device, cfg.precision)
    checkpoints = Checkpointer(paths, cfg, objective, optimizer, scheduler, scaler, steps_per_epoch)
    costs = {on: step_cost(cfg, splits.crop_size, on) for on in ((False, True) if cfg.gate_warmup_epochs else (True,))}

    if resume:
        state = checkpoints.restore(device, log)
    else:
        state = TrainState(pretraining=pretraining)
        if me.is_main:
            if overwrite:
                remove_own_files(paths)
            paths.checkpoints.mkdir(parents=True, exist_ok=True)
            for stale in (paths.metrics, paths.summary):
                stale.unlink(missing_ok=True)
            save_yaml(cfg, paths.root / "config.yaml", launch=_launch(cfg, me))
            state.init_eval = _evaluate(objective, splits, device, cfg)  # rank 0 alone; the others wait in DDP's first broadcast
        torch.manual_seed(cfg.seed)  # the training stream does not depend on evaluation
    # One process per device: gradients are averaged over ranks in backward. Parameters a step leaves unused
    # (gates in the warm-up, widths not drawn) keep no gradient, as in one process.
    model = (
        objective
        if me.world == 1
        else DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=leaves_parameters_unused(cfg)
        )
    )

    writer = _tensorboard(paths.root / "tb") if me.is_main else None
    bar = tqdm(
        total=total_steps * cfg.batch_size,
        initial=(state.epoch * steps_per_epoch + state.step) * cfg.batch_size,
        unit="img",
        unit_scale=True,
        desc="pretrain",
        disable=not progress,
        dynamic_ncols=True,
        mininterval=1.0,
    )
    objective.train()
    skipped, last_save, stopping, signal_name = 0, time.monotonic(), False, ""
    guard, warmup = LossGuard(device, state.loss_reference), warmup_steps(cfg, steps_per_epoch)
    with StopSignals() as stop:
        for epoch in range(state.epoch, cfg.epochs):
            t0 = time.perf_counter()
            gates_on = epoch >= cfg.gate_warmup_epochs
            if state.step == 0 or state.order is None:
                state.order, state.sums = views.new_order(), {}
            guard.new_epoch()
            for step, (x1, x2) in enumerate(views.epoch(state.order, state.step), start=state.step):
                terms = train_step(
                    model,
                    optimizer,
                    scheduler,
                    x1,
                    x2,
                    (epoch + step / steps_per_epoch) / cfg.epochs,
                    gates_on,
                    guard=cfg.skip_nonfinite > 0,
                    precision=cfg.precision,
                    scaler=scaler,
                )
                if terms is None:
                    skipped += 1
                    log(
                        f"warning: non-finite loss at epoch {epoch + 1}, step {step + 1}: batch skipped ({skipped} of {cfg.skip_nonfinite} allowed)"
                    )
                    if skipped > cfg.skip_nonfinite:
                        raise RunStopped(
                            f"non-finite loss in more than {cfg.skip_nonfinite} batches; the last good checkpoint is kept in {paths.checkpoints}",
                            EXIT_NONFINITE,
                        )
                else:
                    guard.observe(step, terms)
                    for key, value in terms.items():
                        state.sums[key] = state.sums.get(key, 0) + value
                bar.update(cfg.batch_size)
                if on_step_end is not None:
                    on_step_end(epoch, step)
                # every rank stops or saves at the same step: a signal to any rank, a due time on any clock
                # and a loss that exploded on any rank stops them all at once, not at the epoch's end
                stopping, due, diverged = distributed.agree(
                    stop.received is not None,
                    bool(cfg.checkpoint_minutes) and time.monotonic() - last_save > 60 * cfg.checkpoint_minutes,
                    guard.tripped(),
                )
                if diverged:
                    stop_on_bad_loss(guard, state, epoch, cfg, paths, warmup)
                signal_name = stop.received or "a signal to another rank"
                if due and step + 1 < steps_per_epoch:
                    stop_on_bad_loss(guard, state, epoch, cfg, paths, warmup)  # a preempted long epoch loses at most this long
                    elapsed = time.perf_counter() - t0
                    checkpoints.save(dataclasses.replace(state, epoch=epoch, step=step + 1, train_seconds=state.train_seconds + elapsed))
                    last_save = time.monotonic()
                if stopping and step + 1 < steps_per_epoch:
                    stop_on_bad_loss(guard, state, epoch, cfg, paths, warmup)
                    state.train_seconds += time.perf_counter() - t0
                    state.epoch, state.step = epoch, step + 1
                    saved = checkpoints.save(state)
                    stop.finishing = True
                    distributed.barrier()  # no rank leaves before rank 0 has written: torchrun stops the rest when one exits
                    raise RunStopped(
                        f"stopped by {signal_name} at epoch {epoch + 1}, step {step + 1}; checkpoint {saved} written; continue with --resume",
                        EXIT_SIGNAL,
                    )
            stop_on_bad_loss(guard, state, epoch, cfg, paths, warmup)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            state.train_seconds += seconds
            sums = distributed.mean_over_ranks(state.sums)  # what the log shows: the global batch's terms
            record = _epoch_record(epoch, sums, steps_per_epoch - skipped, seconds, cfg.batch_size, scheduler.get_last_lr()[0])
            _count_compute(state, costs[gates_on], steps_per_epoch, record["macs_ratio"], cfg.batch_size)
            if cfg.eval_every and splits.labeled and (epoch + 1) % cfg.eval_every == 0 and me.is_main:
                t_eval = time.perf_counter()
                record.update(
                    online_knn(
                        objective.backbone,
                        splits,
                        device,
                        objective.subnets,
                        cfg.knn_protocol,
                        cfg.knn_k,
                        cfg.knn_temperature,
                        cfg.precision,
                    )
                )
                record["eval_seconds"] = round(time.perf_counter() - t_eval, 3)
            if me.is_main:
                _log(paths, writer, record)
            bar.set_postfix(loss=f"{record['loss']:.3g}", macs=f"{record['macs_ratio']:.2f}", refresh=False)
            state.epoch, state.step, state.order, state.sums = epoch + 1, 0, None, {}
            if stopping or (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs:
                saved = checkpoints.save(state)
                last_save = time.monotonic()
            if stopping and epoch + 1 < cfg.epochs:
                stop.finishing = True
                distributed.barrier()
                raise RunStopped(
                    f"stopped by {signal_name} after epoch {epoch + 1}; checkpoint {saved} written; continue with --resume", EXIT_SIGNAL
                )
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1)
    bar.close()
    if writer is not None:
        writer.close()

    if not me.is_main:
        return distributed.from_main(None)  # rank 0 evaluates (kNN, probe) alone and writes; every rank returns its summary
    summary = make_summary(cfg, splits, _evaluate(objective, splits, device, cfg), state.init_eval, state.train_seconds, device)
    summary["warmup_steps"] = warmup_steps(cfg, steps_per_epoch)
    summary["training_compute"] = training_compute(cfg, state, device)
    summary.update(_launch(cfg, me))
    plot_training_curves(
        paths.metrics,
        paths.root / "curves.png",
        cfg.budget if objective.mode.budget else None,
        f"{cfg.dataset} | {cfg.arch} w{cfg.width} | {cfg.method} {cfg.mode} | budget {cfg.budget:g}",
    )
    write_summary(paths.summary, summary)
    return distributed.from_main(summary)


def leaves_parameters_unused(cfg: PretrainConfig) -> bool:
    """Whether some step uses only part of the network: DDP must then look for the unused parameters (a graph
    traversal per step). Only a dual run without a warm-up uses all of it every step (gated mode never uses the
    dense BN set; slimmable draws widths; post-hoc freezes; a warm-up leaves the gates out); a test checks this
    against one step of every mode and method."""
    return not (cfg.mode == "dual" and cfg.gate_warmup_epochs == 0)


def _launch(cfg: PretrainConfig, me: distributed.Shard) -> dict:
    """How the run was spread: the global batch is cfg.batch_size, split evenly over the ranks."""
    return {"world_size": me.world, "per_rank_batch": cfg.batch_size // me.world}


def _evaluate(objective: JointObjective, splits, device: torch.device, cfg: PretrainConfig) -> dict:
    return evaluate(objective.backbone, splits, device, cfg.knn_protocol, cfg.knn_k, cfg.knn_temperature, cfg.precision, objective.subnets)


def _count_compute(state: TrainState, cost: StepCost, steps: int, macs_ratio: float, batch_size: int) -> None:
    """Add an epoch's executed and mask-implied FLOPs (from its mean gated MACs ratio) to the state."""
    executed = cost.flops * steps
    state.executed_flops += executed
    state.mask_flops += mask_flops(cost, executed, steps, macs_ratio * steps, batch_size)


def training_compute(cfg: PretrainConfig, state: TrainState, device: torch.device) -> dict:
    """The run's training cost; post-hoc gating also records its pretraining's, and the two together."""
    own = {"executed_flops": state.executed_flops, "mask_flops": state.mask_flops, "seconds": round(state.train_seconds, 2)}
    result = {**own, "device": _device_name(device)}
    if cfg.mode == "posthoc":
        pre = state.pretraining
        result["pretraining"] = pre
        if pre is not None:
            result["total"] = {k: None if pre.get(k) is None else round(own[k] + pre[k], 2) for k in own}
    return result


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def train_step(
    objective: JointObjective | DistributedDataParallel,
    optimizer,
    scheduler,
    x1: torch.Tensor,
    x2: torch.Tensor,
    progress: float,
    gates_on: bool = True,
    fast: bool = True,
    guard: bool = False,
    precision: str = "auto",
    scaler: torch.amp.GradScaler | None = None,
) -> dict[str, torch.Tensor] | None:
    """One optimisation step on a pair of views; returns the detached loss terms (no host sync).

    guard: check the loss on the host first and skip the update (None) if it is not finite;
    that costs a sync per step, so it is only on with --skip-nonfinite.

    fast: channels_last (10% faster on CPU too, BENCHMARKS.md) and autocast in `precision`
    (see gatedssl.precision); off only for the eager fp32 baseline. scaler: fp16's loss scaling
    (a step whose gradients overflow is skipped by the scaler, and the scale lowered).
    """
    if fast:
        x1, x2 = x1.contiguous(memory_format=torch.channels_last), x2.contiguous(memory_format=torch.channels_last)
    with autocast(x1.device, precision if fast else "fp32"):
        terms = objective(x1, x2, progress, gates_on)
    if guard and any(distributed.agree(not torch.isfinite(terms["loss"]).item())):  # every rank skips, or none
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()  # the schedule stays on the run's step count
        return None
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        terms["loss"].backward()
        optimizer.step()
    else:
        scaler.scale(terms["loss"]).backward()
        scaler.step(optimizer)
        scaler.update()
    scheduler.step()
    getattr(objective, "module", objective).update_teacher(progress)  # DDP wraps the objective under torchrun
    return {key: value.detach().float() for key, value in terms.items()}


def _epoch_record(epoch: int, sums: dict, steps: int, seconds: float, batch_size: int, lr: float) -> dict:
    record = {"epoch": epoch + 1}
    for key, value in sums.items():
        mean = (value / steps).tolist()
        record[key] = [round(v, 5) for v in mean] if isinstance(mean, list) else mean
    record.update(lr=lr, epoch_seconds=round(seconds, 3), images_per_second=round(steps * batch_size / seconds, 1))
    return record


def remove_own_files(paths: RunPaths) -> None:
    """--overwrite removes what gatedssl wrote into the run folder, and nothing else: a file of the user's own stays."""
    if paths.checkpoints.is_dir():
        for path in paths.checkpoints.iterdir():
            if path.is_file() and is_checkpoint_name(path.name):
                path.unlink()
    for path in (paths.metrics, paths.summary, paths.failures, paths.root / "curves.png"):
        path.unlink(missing_ok=True)  # an earlier run's attempts and results are not this one's
    for path in (paths.root / "tb").glob("events.out.tfevents.*"):
        path.unlink()


def _truncate_metrics(path: Path, epochs_kept: int) -> None:
    """Keep the metric lines of the epochs the checkpoint holds (later ones will be trained again); a torn or garbage line goes."""
    if not path.exists():
        return
    kept = [r for r in _records(path) if isinstance(r.get("epoch"), int) and r["epoch"] <= epochs_kept]
    atomic_write(path, lambda fh: fh.write("".join(json.dumps(r) + "\n" for r in kept).encode()))


def _tensorboard(log_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency, but a broken install must not stop training
        return None
    return SummaryWriter(log_dir=str(log_dir))


def _log(paths: RunPaths, writer, record: dict) -> None:
    _append_line(paths.metrics, record)
    if writer is None:
        return
    step = record["epoch"]
    for key, value in record.items():
        if key == "density":
            for i, d in enumerate(value):
                writer.add_scalar(f"density/block{i}", d, step)
        elif key.startswith("knn_"):
            writer.add_scalar(f"knn/{key[4:]}", value, step)
        elif key != "epoch":
            writer.add_scalar(f"train/{key}", value, step)
