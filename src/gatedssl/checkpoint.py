"""Checkpoints that are never half-written, and that let a resumed run continue bit for bit.

A checkpoint holds the config, model (backbone + heads + teacher), optimizer, scheduler,
the epoch reached and every RNG state, so that the random stream after a resume is the one
the uninterrupted run would have drawn.
"""

from __future__ import annotations

import copy
import functools
import os
import pickle
import random
from pathlib import Path
from typing import Any

import torch

from .errors import UserError

FORMAT_VERSION = 3  # 2: settings gained the recipe's choices (config.upgrade_stored reads 1's as what 0.1.0 did); 3: modes slimmable and posthoc, training compute
READABLE_VERSIONS = (1, 2, 3)


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
    try:
        atomic_write(path, lambda fh: torch.save(state, fh))
    except OSError as exc:
        raise UserError(f"could not write checkpoint {path} ({exc.strerror or exc}); the previous checkpoint is intact") from exc


def save_run_checkpoint(folder: Path, global_step: int, state: dict[str, Any], keep: int) -> Path:
    """Write step_NNNNNNNN.pt, point last.pt at it (hard link, atomic rename), keep the newest `keep`."""
    folder = Path(folder)
    path = folder / f"step_{global_step:08d}.pt"
    save_checkpoint(path, state)
    tmp = folder / f".last.pt.tmp-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp)
    except OSError:  # no hard links here: a second copy
        save_checkpoint(tmp, state)
    os.replace(tmp, folder / "last.pt")
    for old in sorted(folder.glob("step_*.pt"))[:-keep]:
        old.unlink()
    return path


def load_latest(folder: Path, report=print) -> tuple[dict[str, Any], Path]:
    """The newest readable checkpoint: last.pt, else the retained ones newest first, saying so."""
    folder = Path(folder)
    candidates = checkpoint_candidates(folder)
    seen, problems = set(), []
    for path in candidates:
        if not path.exists():
            continue
        inode = path.stat().st_ino
        if inode in seen:
            continue
        seen.add(inode)
        try:
            state = load_checkpoint(path)
        except UserError as exc:
            problems.append(str(exc))
            continue
        for problem in problems:
            report(f"warning: {problem}; falling back to {path}")
        return state, path
    if problems:
        raise UserError(f"no readable checkpoint in {folder}: {problems[0]}")
    raise UserError(f"--resume: no checkpoint in {folder}; start the run without --resume")


def checkpoint_candidates(folder: Path) -> list[Path]:
    """A run's checkpoints in the order a resume tries them: last.pt, then the retained ones newest first."""
    folder = Path(folder)
    return [folder / "last.pt", *sorted(folder.glob("step_*.pt"), reverse=True)]


def newest_progress(folder: Path) -> dict[str, Any] | None:
    """The newest readable checkpoint's epoch, step and settings (what a resume continues from), or None. Read as a
    memory map: only the few values asked for leave the disk, so a large checkpoint costs no time."""
    for path in checkpoint_candidates(folder):
        try:
            stat = path.stat()
            return copy.deepcopy(_progress(str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns))
        except Exception:  # missing, torn, foreign: the next one is what a resume would use
            continue
    return None


@functools.lru_cache(maxsize=8)
def _progress(path: str, inode: int, size: int, mtime_ns: int) -> dict[str, Any]:
    """One file's progress, read once per version of it (preflight asks several times)."""
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    progress = {"epoch": int(state["epoch"]), "step": int(state.get("step", 0)), "config": dict(state["config"])}
    progress["epochs"] = int(progress["config"]["epochs"])
    return progress


def trained_epochs(folder: Path) -> tuple[int, int] | None:
    """(epochs done, epochs planned) by the newest readable checkpoint, or None if none is readable."""
    progress = newest_progress(folder)
    return None if progress is None else (progress["epoch"], progress["epochs"])


def read_weights(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """torch.load with weights_only=True: tensors and plain data only, so a file from someone else
    cannot run code. Any problem becomes one line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} not found; give RUN/checkpoints/last.pt of a pretraining run or a file from `gatedssl export`")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # running code from a pickle needs a GLOBAL (a function or class to import); the weights-only
        # unpickler names the one it refused. Other unpickling errors are damaged or foreign files.
        found = next((line.strip() for line in str(exc).splitlines() if "GLOBAL" in line), None)
        if found is not None:
            raise UserError(
                f"{what} {path} refused: it holds Python objects that would run code when unpickled ({found[:120]}); "
                f"gatedssl reads tensors and plain data only; use a file written by gatedssl"
            ) from None
        raise UserError(f"{what} {path} cannot be read (UnpicklingError); it may be truncated or not a torch file") from None
    except Exception as exc:  # truncated or not a torch file
        raise UserError(f"{what} {path} cannot be read ({type(exc).__name__}); it may be truncated or not a gatedssl file") from None


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a training checkpoint (weights only); any problem becomes one line naming the file."""
    return check_checkpoint(read_weights(path), path)


def check_checkpoint(state: Any, path: str | os.PathLike) -> dict[str, Any]:
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict) or not isinstance(state.get("config"), dict):
        raise UserError(f"checkpoint {path} is not a gatedssl checkpoint (no model/config inside)")
    if state.get("format_version") not in READABLE_VERSIONS:
        raise UserError(
            f"checkpoint {path} has format version {state.get('format_version')}, this gatedssl reads "
            f"{', '.join(map(str, READABLE_VERSIONS))}; use the gatedssl version that wrote it ({state.get('gatedssl_version', 'unknown')})"
        )
    return state


def first_mismatch(exc: RuntimeError) -> str:
    """The first concrete line of a load_state_dict error (a size mismatch or a missing key)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    detail = lines[1] if len(lines) > 1 else lines[0] if lines else "state dict mismatch"
    return detail if len(detail) <= 200 else detail[:197] + "..."


# Where a command may write. Checked before anything is written: an output that is one of the command's own inputs,
# or a file a run folder needs, would be lost the moment the command succeeds.
RUN_FILES = ("config.yaml", "summary.json", "metrics.jsonl", "failures.jsonl", ".lock", "curves.png")


def is_run_folder(folder: str | os.PathLike) -> bool:
    """A folder `gatedssl pretrain` wrote into: it holds the run's settings and its checkpoint folder."""
    folder = Path(folder)
    return (folder / "config.yaml").is_file() and (folder / "checkpoints").is_dir()


def run_folder_of(checkpoint: str | os.PathLike) -> Path | None:
    """RUN when the checkpoint sits in RUN/checkpoints/ beside RUN/config.yaml (as given, or where a link points), else None:
    a checkpoint copied elsewhere has no run folder, and its parent's parent is nobody's."""
    for path in dict.fromkeys((Path(checkpoint).absolute(), Path(checkpoint).resolve())):
        if path.parent.name == "checkpoints" and (path.parent.parent / "config.yaml").is_file():
            return path.parent.parent
    return None


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """The same file after links: symbolic (resolve) and hard (last.pt is a hard link to the newest step_*.pt)."""
    if Path(a).resolve() == Path(b).resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def is_checkpoint_name(name: str) -> bool:
    """A name gatedssl gives the files in RUN/checkpoints/: last.pt, step_*.pt, and their temporary files (.NAME.tmp-PID)."""
    return name == "last.pt" or (name.startswith("step_") and name.endswith(".pt")) or (name.startswith(".") and ".tmp-" in name)


def write_problems(flag: str, out: str | os.PathLike, reads: tuple = (), allowed: tuple = ()) -> list[str]:
    """What is wrong with writing `out`: it is a file the command reads, or a file a run folder needs
    (a checkpoint, config.yaml, summary.json, ...) other than the `allowed` ones."""
    out = Path(out)
    for path in reads:
        if same_file(out, path):
            return [f"{flag} {out} is {path}, which this command reads; choose another {flag}"]
    if any(same_file(out, path) for path in allowed):
        return []
    target = out.resolve()
    if target.is_dir():
        return [f"{flag} {out} is a folder; give a file name"]
    folder = target.parent
    if folder.name == "checkpoints" and is_run_folder(folder.parent) and is_checkpoint_name(target.name):
        return [f"{flag} {out} would replace a checkpoint of the run in {folder.parent}; write it outside its checkpoints/ folder"]
    if target.name in RUN_FILES and is_run_folder(folder):
        return [f"{flag} {out} would replace the {target.name} of the run in {folder}; choose another {flag}"]
    return []


def report_out_problems(out: str | os.PathLike) -> list[str]:
    """A report writes report.md, tables and PNGs (and removes its own older PNGs) in its folder: never in or under a run folder."""
    out = Path(out).resolve()
    inside = next((p for p in (out, *out.parents) if is_run_folder(p)), None)
    if inside is None:
        return []
    return [f"--out {out} is inside the run folder {inside}; the report would write among the run's files; choose a folder outside it"]
