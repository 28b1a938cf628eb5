"""The pretraining loop: one function a reader can follow from data to checkpoint.

Data live on the training device as uint8 (or, for folders too large, arrive a batch at a
time from DataLoader workers); each step draws a batch by index, makes two augmented views on the device, asks the objective for its loss terms, and steps the
optimizer. Metrics are summed on the device and read once per epoch, so the step never
waits on the host. The loop knows nothing of VICReg or gates: that is the objective's job.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
import warnings
from collections.abc import Callable

import torch
from torch.nn.parallel import DistributedDataParallel

from .. import distributed
from ..config import PretrainConfig, save_yaml, warmup_steps
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
from ..progress import image_bar
from ..reporting.curves import plot_training_curves
from ..summary import make_summary, write_summary
from .calibrate import calibrate_gates, set_offset
from .compute import StepCost, mask_flops, step_cost
from .guards import LossGuard, StopSignals
from .init_from import load_pretrained
from .lock import RunLock
from .loggers import RunLoggers
from .optim import build_optimizer, warmup_cosine
from .plan import RunPlan, plan_run
from .run_folder import RunPaths, append_line, record_failure, remove_own_files
from .state import Checkpointer, TrainState

# fp16: GradScaler skips the optimizer step whose gradients overflowed while the schedule moves on, as intended
warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step..` before `optimizer.step..`")


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
    cfg: PretrainConfig | RunPlan,
    *,
    resume: bool | str = False,
    overwrite: bool = False,
    on_epoch_end: Callable[[int], None] | None = None,
    on_step_end: Callable[[int, int], None] | None = None,
    progress: bool = True,
    log=None,
) -> dict:
    """Pretrain the sub-networks the run's mode declares; returns the summary dict.

    cfg: the settings (checked here by plan_run), or a RunPlan already made from them (resume and overwrite are
    then the plan's). resume: True continues from the last checkpoint; "auto" continues where there is one, else
    starts (and returns a finished run's summary). The run folder is held (RunLock) while the run lives.
    Raises RunStopped when a signal or a non-finite loss ends the run early (with a checkpoint
    of the last good state), UserError for anything the user can fix.
    """
    plan = cfg if isinstance(cfg, RunPlan) else plan_run(cfg, resume, overwrite)
    # under torchrun: join its ranks (the device was checked with the other settings)
    joined = distributed.env_world_size() > 1 and distributed.init(distributed.local_device(select_device(plan.cfg.device)))
    try:
        return _pretrain(plan, on_epoch_end, on_step_end, progress, log)
    finally:
        if joined:
            distributed.close()


def _pretrain(plan: RunPlan, on_epoch_end, on_step_end, progress: bool, log) -> dict:
    main = distributed.shard().is_main  # only rank 0 prints and writes
    log = (log or (lambda message: print(message, file=sys.stderr))) if main else (lambda message: None)
    paths = plan.paths
    if plan.finished is not None:
        log(f"--resume auto: {paths.root} holds a finished run; nothing to do")
        return plan.finished
    distributed.barrier()  # every rank has read the folder before rank 0 takes it and changes it
    loggers = RunLoggers(plan.cfg, paths.root, plan.resume, enabled=main, warn=log)  # closed with the run's outcome, however it ends
    with RunLock(paths.root) if main else contextlib.nullcontext(), loggers:
        try:
            return _run(plan.cfg, paths, plan.resume, plan.overwrite, on_epoch_end, on_step_end, progress and main, log, loggers)
        except RunStopped as exc:
            if exc.exit_code != EXIT_SIGNAL and main:  # a stop asked for is no failure
                record_failure(paths, exc.exit_code, str(exc))
            raise
        except (Exception, KeyboardInterrupt) as exc:
            if main:
                record_failure(paths, 2 if isinstance(exc, UserError) else 1, f"{type(exc).__name__}: {exc}")
            raise


def _run(
    cfg: PretrainConfig, paths: RunPaths, resume: bool, overwrite: bool, on_epoch_end, on_step_end, progress: bool, log, loggers: RunLoggers
) -> dict:
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

    loggers.start()  # after --overwrite's clean-up: TensorBoard's new events file must not be removed with the old ones
    bar = image_bar(total_steps * cfg.batch_size, "pretrain", progress, (state.epoch * steps_per_epoch + state.step) * cfg.batch_size)
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
            if (
                epoch + 1 == cfg.epochs and objective.mode.budget and cfg.calibrate_gates
            ):  # before the last online kNN: it sees the final gates
                state.calibration = calibrate(objective.backbone, splits, cfg, device, me, log)
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
                _log(paths, loggers, record)
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

    if not me.is_main:
        return distributed.from_main(None)  # rank 0 evaluates (kNN, probe) alone and writes; every rank returns its summary
    summary = make_summary(cfg, splits, _evaluate(objective, splits, device, cfg), state.init_eval, state.train_seconds, device)
    summary["warmup_steps"] = warmup_steps(cfg, steps_per_epoch)
    summary["training_compute"] = training_compute(cfg, state, device)
    if state.calibration is not None:
        summary["gate_calibration"] = state.calibration
    summary.update(_launch(cfg, me))
    plot_training_curves(
        paths.metrics,
        paths.root / "curves.png",
        cfg.budget if objective.mode.budget else None,
        f"{cfg.dataset} | {cfg.arch} w{cfg.width} | {cfg.method} {cfg.mode} | budget {cfg.budget:g}",
    )
    write_summary(paths.summary, summary)
    loggers.log_summary(summary)  # after summary.json is written: MLflow keeps it as an artifact
    return distributed.from_main(summary)


def calibrate(backbone, splits, cfg: PretrainConfig, device: torch.device, me: distributed.Shard, log) -> dict:
    """Rank 0 finds the gates' offset that meets the budget on training images; every rank then holds it."""
    record = calibrate_gates(backbone, splits, cfg.budget, device, cfg.precision) if me.is_main else None
    record = distributed.from_main(record)
    set_offset(backbone, record["offset"])
    log(
        f"gates calibrated to the budget {cfg.budget:g}: thresholded MACs ratio on {record['images']} training images "
        f"{record['ratio_before']:.3f} -> {record['ratio_after']:.3f} (logit offset {record['offset']:+.3f}; --no-calibrate-gates keeps it at 0)"
    )
    return record


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


def _log(paths: RunPaths, loggers: RunLoggers, record: dict) -> None:
    append_line(paths.metrics, record)  # the record the reports read, whatever --logger says
    loggers.log_epoch(record)
