"""What a checkpoint holds besides the modules, and the Checkpointer that writes and restores it."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from .. import __version__, distributed
from ..checkpoint import first_mismatch, load_latest, rng_state, save_run_checkpoint, set_rng_state
from ..config import PretrainConfig, upgrade_stored
from ..errors import UserError
from .plan import MAY_CHANGE_ON_RESUME
from .run_folder import RunPaths, truncate_metrics


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
    calibration: dict | None = None  # the gates' budget calibration at the end of the run (gatedssl.training.calibrate)

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
        changed = sorted(k for k in now if k not in MAY_CHANGE_ON_RESUME and stored.get(k) != now[k])
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
            truncate_metrics(self.paths.metrics, state.epoch)
        log(f"resuming from {path}: epoch {state.epoch + 1}, step {state.step + 1} of {self.steps_per_epoch}")
        if was != me.world:
            log(
                f"note: the checkpoint was written by {was} process(es), this run has {me.world}: the global batches, their order "
                f"and their views are the same (drawn for the global batch), but BatchNorm now sees {self.cfg.batch_size // me.world} "
                f"images per rank instead of {self.cfg.batch_size // was}, so the run is not bit-identical to one that kept {was}"
            )
        return state
