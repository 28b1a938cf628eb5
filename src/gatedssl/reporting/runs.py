"""Finished runs and how their summary.json is read: the one reader of the summary's schema, older summaries included.

Torch-free and matplotlib-free, so that gatedssl.summary (which writes summaries) can share `subnet_names` with the report.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from ..errors import UserError
from ..methods.modes import MODES

# How the report names each mode, and which modes train gates: the Mode entries' own (gatedssl.methods.modes)
MODE_LABEL = {name: mode.report_label for name, mode in MODES.items()}
SYSTEM_LABEL = {name: mode.label for name, mode in MODES.items()}
GATED_MODES = tuple(name for name, mode in MODES.items() if mode.budget)  # their gated sub-network is a network of its own
RUN_MARKERS = ("config.yaml", "metrics.jsonl", "checkpoints")  # what makes a folder a (possibly unfinished) run
NOT_SUBNETS = ("knn", "init", "data", "static", "training_compute")


def subnet_names(record: dict) -> list[str]:
    """The sub-networks a summary or an evaluation holds, dense first.

    Summaries written before `subnets` existed had dense (and gated unless B1); an evaluation lists none: its
    sub-networks are its entries with a MACs ratio."""
    if record.get("subnets") is not None:
        return list(record["subnets"])
    if "mode" in record:
        return ["dense"] if record["mode"] == "dense" else ["dense", "gated"]
    return [k for k in record if k not in NOT_SUBNETS and isinstance(record[k], dict) and "macs_ratio" in record[k]]


def stem_padding(summary: dict):
    """The CIFAR stem's padding; 0.1.0 wrote none (its CIFAR stem padded by 1)."""
    return summary.get("stem_padding", 1 if summary["dataset"] in ("embedded", "cifar10", "cifar100") else None)


@dataclass
class Run:
    """One finished run folder and its summary."""

    path: Path
    summary: dict
    name: str = ""  # unique within a report; used in file names

    @property
    def mode(self) -> str:
        return self.summary["mode"]

    @property
    def budget(self) -> float:
        return float(self.summary["budget"])

    @property
    def seed(self):
        return self.summary.get("seed")

    @property
    def pairing(self) -> str:
        return self.summary.get("pairing", "reference")

    @property
    def epochs(self) -> int:
        """Epochs the evaluated weights were trained for (an evaluated intermediate checkpoint says so)."""
        return self.summary.get("epochs_trained", self.summary.get("epochs"))

    @property
    def gated_pass(self) -> bool:
        """Whether the run trained its gates (Dual, B2, post-hoc); a dense-mode run's gated numbers mean nothing."""
        return self.mode in GATED_MODES

    @property
    def has_budget(self) -> bool:
        """Whether t_d means something: B1 trains no gates, a slimmable run's widths set its cost."""
        return self.mode not in ("dense", "slimmable")

    @property
    def subnets(self) -> list[str]:
        return subnet_names(self.summary)

    @property
    def passes(self) -> tuple[str, ...]:
        """The sub-networks whose numbers mean something: B1 has no trained gates, B2 no trained dense network."""
        return {"dense": ("dense",), "gated": ("gated",)}.get(self.mode, tuple(self.subnets))

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"


class FoundRuns(NamedTuple):
    runs: list[Run]  # finished runs, in a stable order
    skipped: list[Path]  # run folders without summary.json (unfinished or failed)


def _is_run_folder(folder: Path) -> bool:
    return (folder / "summary.json").is_file() or any((folder / m).exists() for m in RUN_MARKERS)


def _load_summary(folder: Path) -> dict:
    path = folder / "summary.json"
    try:
        summary = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(
            f"{path} cannot be read as JSON ({exc}); re-create it with `gatedssl eval --checkpoint {folder}/checkpoints/last.pt`"
        ) from None
    if not isinstance(summary, dict):
        raise UserError(
            f"{path} holds a JSON {type(summary).__name__}, not a run's summary; "
            f"re-create it with `gatedssl eval --checkpoint {folder}/checkpoints/last.pt`"
        )
    if summary.get("kind") == "finetune":
        raise UserError(
            f"{path} is a fine-tune's summary (gatedssl finetune); give the pretraining run or sweep folder: "
            f"the fine-tunes under it (RUN/finetune/, SWEEP/finetune-random/) are reported with it"
        )
    required = ["dataset", "method", "mode", "arch", "width", "budget", "epochs", "dense", "knn"]
    missing = [k for k in required if k not in summary]
    subnets = summary.get("subnets", [])
    if not missing and (not isinstance(subnets, list) or not all(isinstance(n, str) for n in subnets)):
        missing = ["subnets as a list of names"]
    if not missing:
        missing = [
            f"{name}.{k}"
            for name in subnet_names(summary)
            for k in ("knn_top1", "macs", "macs_ratio")
            if not isinstance(summary.get(name), dict) or k not in summary[name]
        ]
    if missing:
        raise UserError(f"{path} lacks {', '.join(missing)}; it was not written by this gatedssl (re-create it with `gatedssl eval`)")
    return summary


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "run"


def find_runs(paths: Iterable[str | Path]) -> FoundRuns:
    """Finished runs in `paths`: run folders (with summary.json) or sweep folders (runs one level down).

    Run folders without summary.json are skipped and listed in `skipped`. Raises UserError for a
    path that does not exist, or when no finished run is found at all.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    if not paths:
        raise UserError("no run or sweep folder given")
    folders: list[Path] = []
    skipped: list[Path] = []
    for given in paths:
        path = given.parent if given.name == "summary.json" and given.is_file() else given
        if not path.exists():
            raise UserError(f"{given} does not exist; give run folders (with summary.json) or sweep folders holding them")
        if not path.is_dir():
            raise UserError(f"{given} is a file; give run folders (with summary.json) or sweep folders holding them")
        if _is_run_folder(path):
            candidates = [path]
        else:
            candidates = sorted(p for p in path.iterdir() if p.is_dir() and _is_run_folder(p))
        for folder in candidates:
            (folders if (folder / "summary.json").is_file() else skipped).append(folder)
    seen, runs = set(), []
    for folder in folders:
        key = folder.resolve()
        if key not in seen:
            seen.add(key)
            summary = _load_summary(folder)
            if summary.get("data", {}).get("labeled", True):
                runs.append(Run(folder, summary))
            else:  # pretrained on unlabeled images: no accuracy to put in a trade-off
                skipped.append(folder)
    skipped = list(dict.fromkeys(skipped))
    if not runs:
        where = ", ".join(str(p) for p in paths)
        extra = f" ({len(skipped)} unfinished or unlabeled run folder(s) skipped)" if skipped else ""
        raise UserError(f"no finished runs (folders with summary.json) found in {where}{extra}")
    _name_runs(runs)
    return FoundRuns(runs, skipped)


def _name_runs(runs: list[Run]) -> None:
    """Unique, file-name-safe names: the folder name, prefixed by its parent's where folders share names."""
    names = [_safe_name(r.path.name) for r in runs]
    counts = defaultdict(int)
    for n in names:
        counts[n] += 1
    names = [_safe_name(f"{r.path.resolve().parent.name}_{r.path.name}") if counts[n] > 1 else n for r, n in zip(runs, names)]
    used: set[str] = set()
    for run, name in zip(runs, names):
        unique, i = name, 2
        while unique in used:
            unique, i = f"{name}_{i}", i + 1
        used.add(unique)
        run.name = unique
