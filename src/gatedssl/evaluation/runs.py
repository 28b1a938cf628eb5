"""Re-evaluating a saved run from its checkpoint alone."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..checkpoint import load_checkpoint, run_folder_of, write_problems
from ..config import validate
from ..data.sources import load_run_data
from ..errors import UserError
from ..factory import restore_objective, select_device
from ..summary import make_summary, write_summary
from .evaluate import evaluate
from .probe import linear_probe


def load_run(path: str, data_dir: str | None = None, device: str = "auto", knn_protocol: str | None = None):
    """A checkpoint's state, its network (on the device), its settings and its data, as the run saw them."""
    state = load_checkpoint(path)
    objective, cfg = restore_objective(state, path)
    if cfg.dataset == "embedded":  # the shipped images: no folder is read (older runs may have stored one anyway)
        if data_dir:
            raise UserError(
                f"--data-dir: {path} was trained on the embedded data, which ships with gatedssl and reads no folder; drop --data-dir"
            )
        cfg = dataclasses.replace(cfg, data_dir=None)
    cfg = dataclasses.replace(
        cfg, device=device, **({"data_dir": data_dir} if data_dir else {}), **({"knn_protocol": knn_protocol} if knn_protocol else {})
    )
    problems = [p for p in validate(cfg) if not p.startswith("init_from:")]  # a post-hoc run's weights are all in its checkpoint
    if problems:
        raise UserError("\n".join(problems))
    dev = select_device(cfg.device)
    objective.to(dev)
    splits = load_run_data(cfg, dev)
    return state, objective, cfg, dev, splits


def evaluate_checkpoint(
    path: str,
    *,
    data_dir: str | None = None,
    device: str = "auto",
    knn_protocol: str | None = None,
    out: str | None = None,
    probe: str | None = None,
    probe_seeds: int = 1,
    progress: bool = True,
) -> tuple[dict, Path]:
    """Rebuild the run's network from the checkpoint's own config, evaluate it, write the summary.

    probe: also a linear probe ("fast" or "paper") of each sub-network, stored as dense.probe, gated.probe, ...
    """
    if probe_seeds < 1:
        raise UserError(f"--probe-seeds must be at least 1, got {probe_seeds}")
    run = run_folder_of(path)
    target = Path(out) if out else summary_target(path)
    problems = write_problems("--out", target, reads=(path,), allowed=(run / "summary.json",) if run else ())
    if problems:
        raise UserError("\n".join(problems))
    state, objective, cfg, dev, splits = load_run(path, data_dir, device, knn_protocol)
    if probe is not None and not splits.labeled:
        raise UserError(
            f"--probe {probe}: the run's data is unlabeled ({splits.unlabeled_reason}); a linear probe needs labelled "
            f"train/<class>/ and val/<class>/ folders"
        )
    result = evaluate(objective.backbone, splits, dev, cfg.knn_protocol, cfg.knn_k, cfg.knn_temperature, cfg.precision, objective.subnets)
    summary = make_summary(cfg, splits, result, state.get("init_eval"), state.get("train_seconds"), dev)
    summary["epochs_trained"] = state.get("epoch")
    if state.get("calibration"):
        summary["gate_calibration"] = state["calibration"]
    if probe is not None:
        for name in objective.subnets:
            result = linear_probe(
                objective.backbone, splits, name, dev, protocol=probe, seeds=probe_seeds, progress=progress, precision=cfg.precision
            )
            summary[name]["probe"] = result.to_dict()
    earlier = read_summary(run / "summary.json") if run else None
    for key in ("training_compute", "warmup_steps", "static"):  # what training recorded, and the latest static export, stay with the run
        if earlier and key in earlier:
            summary[key] = earlier[key]
    write_summary(target, summary)
    return summary, target


def summary_target(checkpoint: str) -> Path:
    """Where `gatedssl eval` writes without --out: the run's summary.json when the checkpoint sits in RUN/checkpoints/,
    else beside the checkpoint as NAME.summary.json (a checkpoint copied elsewhere has no run folder to write into)."""
    run = run_folder_of(checkpoint)
    return run / "summary.json" if run else Path(checkpoint).absolute().with_name(Path(checkpoint).stem + ".summary.json")


def read_summary(path: Path) -> dict | None:
    """A summary.json as a dict, or None when it is missing or unreadable (torn, not a mapping): it is rewritten whole."""
    try:
        summary = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None
