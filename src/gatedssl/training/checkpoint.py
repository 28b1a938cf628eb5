"""Checkpoints that are never half-written, and that let a resumed run continue bit for bit.

A checkpoint holds the config, model (backbone + heads + teacher), optimizer, scheduler,
the epoch reached and every RNG state, so that the random stream after a resume is the one
the uninterrupted run would have drawn.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError

FORMAT_VERSION = 1


def atomic_write(path: Path, write) -> None:
    """Write via a temporary file in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    state = {"format_version": FORMAT_VERSION, **state}
    atomic_write(path, lambda fh: torch.save(state, fh))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint; any problem becomes one line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found; give RUN/checkpoints/last.pt of a pretraining run")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # truncated or not a torch file
        raise UserError(f"checkpoint {path} cannot be read ({type(exc).__name__}); it may be truncated or not a gatedssl checkpoint")
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise UserError(f"checkpoint {path} is not a gatedssl checkpoint (no model/config inside)")
    if state.get("format_version") != FORMAT_VERSION:
        raise UserError(f"checkpoint {path} has format version {state.get('format_version')}, this gatedssl reads {FORMAT_VERSION}")
    return state
