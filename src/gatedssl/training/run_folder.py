"""A run folder: its paths, what may be written into it, and the record of failed attempts.

Everything here reads or writes files only (no training): the trainer, the sweep and a second loop
(fine-tuning) share it."""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoint import atomic_write, is_checkpoint_name, same_file, trained_epochs
from ..config import PretrainConfig
from ..errors import UserError
from ..factory import build_objective
from .lock import STALE_S, RunLock


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
    (a run that failed before it began, writing nothing, leaves nothing; a fine-tune begins with its checkpoints folder)."""
    if not ((paths.root / "config.yaml").exists() or paths.checkpoints.is_dir()):
        return
    record = {
        "time": round(time.time(), 1),
        "exit_code": exit_code,
        "error": message.splitlines()[0][:400],
        "from": newest_checkpoint(paths),
    }
    append_line(paths.failures, record)


def append_line(path: Path, record: dict) -> None:
    """One JSON line at the end of `path`; after a torn last line (a crash mid-write) it starts a line of its own."""
    with open(path, "ab+") as fh:  # appends go to the end whatever the read position
        end = fh.seek(0, os.SEEK_END)
        torn = end > 0 and fh.seek(end - 1) >= 0 and fh.read(1) != b"\n"
        fh.write((b"\n" if torn else b"") + json.dumps(record).encode() + b"\n")


def newest_checkpoint(paths: RunPaths) -> str | None:
    """The newest checkpoint's name: where a restart resumes from."""
    names = sorted(p.name for p in paths.checkpoints.glob("step_*.pt"))
    return names[-1] if names else None


def read_records(path: Path) -> list[dict]:
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
    last = read_records(paths.failures)[-2:]
    same = len(last) == 2 and all(last[0].get(k) == last[1].get(k) for k in ("exit_code", "error", "from"))
    if same and last[1].get("from") == newest_checkpoint(paths):
        raise UserError(
            f"--resume auto: the last two attempts failed the same way ({str(last[1].get('error'))[:200]}); not trying again. "
            f"Fix the cause, then resume (the attempts are in {paths.failures})"
        )


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


def truncate_metrics(path: Path, epochs_kept: int) -> None:
    """Keep the metric lines of the epochs the checkpoint holds (later ones will be trained again); a torn or garbage line goes."""
    if not path.exists():
        return
    kept = [r for r in read_records(path) if isinstance(r.get("epoch"), int) and r["epoch"] <= epochs_kept]
    atomic_write(path, lambda fh: fh.write("".join(json.dumps(r) + "\n" for r in kept).encode()))
