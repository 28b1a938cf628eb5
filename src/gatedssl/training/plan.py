"""From the settings a user gave to the settings a run trains with: resumes take the run's own, every
check that needs no data runs before anything is written, all problems are reported at once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..checkpoint import newest_progress
from ..config import PretrainConfig, load_stored, resolve, type_problems, upgrade_stored, validate
from ..errors import UserError
from .run_folder import (
    RunPaths,
    finished_summary,
    has_checkpoint,
    init_from_problems,
    repeated_failure_problem,
    run_folder_problems,
    storage_problems,
)


@dataclass(frozen=True)
class RunPlan:
    """A run's settings resolved once, and what its folder asks for: the trainer takes it as it is."""

    cfg: PretrainConfig  # resolved: every setting filled in
    resume: bool  # continue from the folder's checkpoint
    overwrite: bool  # replace what an earlier run wrote into the folder
    finished: dict | None = None  # --resume auto on a finished run: its summary, and nothing to do

    @property
    def paths(self) -> RunPaths:
        return RunPaths(Path(self.cfg.out))


def plan_run(cfg: PretrainConfig, resume: bool | str = False, overwrite: bool = False, given: set[str] | None = None) -> RunPlan:
    """Every check that needs no data or compute, all problems reported at once (UserError).

    resume: True, False or "auto" (a scheduler's requeue, torchrun's restarts: continue where a checkpoint is, else
    start; a finished run is left alone). given: the settings the user gave (the CLI's flags and --config); on a
    resume the others take the run's own values, not today's defaults."""
    problems = type_problems(cfg)  # before anything reads a setting
    if problems:
        raise UserError("\n".join(problems))
    paths = RunPaths(Path(cfg.out if cfg.out is not None else resolve(cfg).out))  # a default --out depends on the settings
    auto = resume == "auto"
    finished = finished_summary(paths) if auto else None
    if finished is not None:
        return RunPlan(resolve(with_run_settings(cfg, paths, given)), False, overwrite, finished)
    resume = has_checkpoint(paths) if auto else bool(resume)
    if resume or auto:
        cfg = with_run_settings(cfg, paths, given if resume else None)
    cfg = resolve(cfg)
    # a setting that differs from the run's own is the problem to name first (a given --arch makes the run's width invalid)
    problems = given_differ(cfg, paths, given) if resume and given is not None else []
    problems = problems or validate(cfg)
    if not problems:
        problems = run_folder_problems(paths, resume, overwrite) + storage_problems(cfg)
    if not problems and overwrite and not resume:
        problems = init_from_problems(cfg)
    if problems:
        raise UserError("\n".join(problems))
    if auto:
        repeated_failure_problem(paths)
    return RunPlan(cfg, resume, overwrite)


def with_run_settings(cfg: PretrainConfig, paths: RunPaths, given: set[str] | None = None) -> PretrainConfig:
    """Settings the user did not give take the run's own values: a run continues as it began (also one written
    before a default changed: gatedssl 0.1.0's runs have no recipe). given None (the API): those that are None."""
    stored = run_settings(paths)
    if stored is None:
        return cfg
    values = cfg.to_dict()
    unset = {k for k, v in values.items() if v is None} if given is None else set(values) - set(given) - {"out"}
    return PretrainConfig(**{k: stored[k] if k in unset and k in stored else v for k, v in values.items()})


def run_settings(paths: RunPaths) -> dict | None:
    """The run's own settings: its newest readable checkpoint's (what a resume continues, and is checked against),
    else config.yaml's (a run that has no checkpoint yet); None when neither can be read."""
    progress = newest_progress(paths.checkpoints)
    return upgrade_stored(progress["config"]) if progress is not None else load_stored(paths.root)


def given_differ(cfg: PretrainConfig, paths: RunPaths, given: set[str]) -> list[str]:
    """--resume with a setting given that differs from the run's own: one problem naming them all."""
    stored = run_settings(paths)
    if stored is None:
        return []
    values = cfg.to_dict()
    changed = sorted(k for k in given if k not in MAY_CHANGE_ON_RESUME and k in stored and stored[k] != values.get(k))
    if not changed:
        return []
    named = "; ".join(f"--{k.replace('_', '-')} {values[k]} (the run has {stored[k]})" for k in changed)
    return [
        f"--resume: the settings differ from the run's own: {named}; drop them to continue the run with its own settings, "
        f"or start a new run (another --out, or --overwrite)"
    ]


MAY_CHANGE_ON_RESUME = {
    "storage",
    "data_workers",
    "eval_every",
    "checkpoint_minutes",
    "out",
    "logger",
}  # how the same images are read, not which; what is watched and where; where the folder lives now (a moved run resumes)
