"""A sweep: B1, then each mode at each budget, one run folder each, then one probe per run and the report.

It takes settings, not command-line arguments, so a script can run one as the CLI does. Finished runs are
skipped and unfinished ones resumed, so a sweep re-run after an interruption goes on where it stopped."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from ..config import POSTHOC_EPOCH_SHARE, PretrainConfig
from ..errors import UserError
from ..summary import format_summary, subnet_names
from .plan import plan_run
from .run_folder import RunPaths, finished_summary, has_checkpoint


def sweep_runs(
    base: PretrainConfig, budgets: Sequence[float], modes: Sequence[str], out: str | Path, baseline: bool = True
) -> list[tuple[str, PretrainConfig]]:
    """(folder name, settings) of every run of the sweep, in training order: B1 first (post-hoc starts from it)."""
    named: dict[str, list[float]] = {}
    for b in budgets:  # a run folder is named by its budget: two budgets of one name would share it
        named.setdefault(f"{b:g}", []).append(b)
    repeated = {name: values for name, values in named.items() if len(values) > 1}
    if repeated:
        which = "; ".join(
            f"{name} given more than once"
            if len(set(values)) == 1
            else f"{' and '.join(map(repr, dict.fromkeys(values)))} share the folder name b{name} (6 significant digits)"
            for name, values in repeated.items()
        )
        raise UserError(f"--budgets: {which}; each budget is one run in its own folder: give distinct budgets (use --seed for repeats)")
    modes = list(dict.fromkeys(modes))
    if "posthoc" in modes and not baseline:
        raise UserError("--modes posthoc starts from the sweep's B1 encoder; drop --no-baseline")
    if base.widths is not None and "slimmable" not in modes:
        raise UserError("--widths: apply to --modes slimmable; add it, or drop --widths")
    sweep_widths = base.widths
    base = dataclasses.replace(base, widths=None)
    runs = [("dense", dataclasses.replace(base, mode="dense", budget=1.0))] if baseline else []
    for mode in modes:
        if mode == "slimmable":
            runs.append(("slimmable", dataclasses.replace(base, mode="slimmable", budget=1.0, widths=sweep_widths)))
            continue
        for b in budgets:
            name = f"b{b:g}" if mode == "dual" else f"{mode}-b{b:g}"  # dual keeps the name sweeps had before there were modes
            cfg = dataclasses.replace(base, mode=mode, budget=b)
            if mode == "posthoc":
                share = None if base.epochs is None else max(1, round(POSTHOC_EPOCH_SHARE * base.epochs))
                cfg = dataclasses.replace(cfg, init_from=str(Path(out) / "dense"), epochs=share)
            runs.append((name, cfg))
    return [(name, dataclasses.replace(cfg, out=str(Path(out) / name))) for name, cfg in runs]


def sweep(
    base: PretrainConfig,
    budgets: Sequence[float],
    modes: Sequence[str],
    out: str | Path,
    *,
    baseline: bool = True,
    probe: str = "fast",
    probe_seeds: int = 1,
    quiet: bool = False,
    finetune_fractions: Sequence[float] = (),
) -> tuple[int, Path | None]:
    """Train every run of the sweep (checking them all first), probe each, fine-tune each sub-network at each label
    fraction (and the random-init baselines), write the report; returns the number of runs and the report's HTML path
    (None when the data is unlabeled: no accuracy to compare)."""
    from .trainer import pretrain

    bad = [f for f in finetune_fractions if not 0 < f <= 1]
    if bad:
        raise UserError(f"--finetune: label fractions must be in (0, 1], got {', '.join(f'{f:g}' for f in bad)}")
    runs = sweep_runs(base, budgets, modes, out, baseline)
    plans = []
    for name, cfg in runs:  # check every run before the first one trains
        paths = RunPaths(Path(cfg.out))
        done = finished_summary(paths) is not None  # the training ended (not merely a summary.json from `gatedssl eval`)
        resume = not done and has_checkpoint(paths)
        if not done:
            source_pending = cfg.init_from is not None and finished_summary(RunPaths(Path(cfg.init_from))) is None
            # a post-hoc run's source is the sweep's B1, trained first: check everything else now, the rest when it trains
            plan_run(dataclasses.replace(cfg, init_from=".") if source_pending else cfg, resume, overwrite=False)
        plans.append((name, cfg, done, resume))
    for i, (name, cfg, done, resume) in enumerate(plans, 1):
        if done:
            print(f"[{i}/{len(plans)}] {name}: complete, skipped", file=sys.stderr)
            continue
        print(f"[{i}/{len(plans)}] {name}: {'resuming' if resume else 'pretraining'} into {cfg.out}", file=sys.stderr)
        print(format_summary(pretrain(cfg, resume=resume, progress=not quiet)))
    summaries = {name: json.loads((Path(cfg.out) / "summary.json").read_text()) for name, cfg, _, _ in plans}
    if probe != "none":
        from ..evaluation.runs import evaluate_checkpoint

        for i, (name, cfg, _, _) in enumerate(plans, 1):
            summary = summaries[name]
            if not summary.get("data", {}).get("labeled", True):
                print(f"[{i}/{len(plans)}] {name}: linear probe skipped: the data is unlabeled", file=sys.stderr)
                continue
            wanted = {"protocol": probe, "seeds": probe_seeds}
            if all({k: summary.get(p, {}).get("probe", {}).get(k) for k in wanted} == wanted for p in subnet_names(summary)):
                continue
            print(f"[{i}/{len(plans)}] {name}: linear probe ({probe}, {probe_seeds} seed(s))", file=sys.stderr)
            evaluate_checkpoint(
                str(Path(cfg.out) / "checkpoints" / "last.pt"), probe=probe, probe_seeds=probe_seeds, device=cfg.device, progress=not quiet
            )
    if not all(s.get("data", {}).get("labeled", True) for s in summaries.values()):
        if finetune_fractions:
            print("fine-tuning skipped: the data is unlabeled", file=sys.stderr)
        return len(plans), None
    if finetune_fractions:
        run_finetunes(sweep_finetunes([(name, cfg) for name, cfg, _, _ in plans], summaries, finetune_fractions, Path(out)), quiet)
    from ..reporting.report import write_report

    return len(plans), write_report([out], Path(out) / "report")


def finetuned_subnets(summary: dict) -> list[str]:
    """The sub-networks a run trained: B1 its dense network, B2 and post-hoc their gated one (post-hoc's dense is
    B1's), Dual both, a slimmable run every width."""
    return {"dense": ["dense"], "gated": ["gated"], "posthoc": ["gated"]}.get(summary["mode"], subnet_names(summary))


def sweep_finetunes(runs: list[tuple[str, PretrainConfig]], summaries: dict, fractions: Sequence[float], out: Path) -> list:
    """Each run's sub-networks at each label fraction (into RUN/finetune/), then, once per sub-network, the same
    network from random init on the same labels (into SWEEP/finetune-random/): the baseline that says whether
    pretraining paid."""
    from .finetune import FinetuneConfig

    jobs, baselines = [], {}
    for name, cfg in runs:
        for subnet in finetuned_subnets(summaries[name]):
            baselines.setdefault(subnet, cfg)
            for f in fractions:
                where = Path(cfg.out) / "finetune" / f"{subnet}-f{f:g}"
                jobs.append(
                    FinetuneConfig(
                        str(Path(cfg.out) / "checkpoints" / "last.pt"),
                        str(where),
                        subnet,
                        label_fraction=f,
                        seed=cfg.seed,
                        device=cfg.device or "auto",
                    )
                )
    for subnet, cfg in baselines.items():
        for f in fractions:
            where = out / "finetune-random" / f"{subnet}-f{f:g}"
            checkpoint = str(Path(cfg.out) / "checkpoints" / "last.pt")
            jobs.append(
                FinetuneConfig(checkpoint, str(where), subnet, label_fraction=f, seed=cfg.seed, init="random", device=cfg.device or "auto")
            )
    return jobs


def run_finetunes(jobs: list, quiet: bool) -> None:
    """Finished fine-tunes are skipped and unfinished ones resumed, as the sweep's runs."""
    from .finetune import finetune

    for i, job in enumerate(jobs, 1):
        paths = RunPaths(Path(job.out))
        if finished_summary(paths) is not None:
            print(f"[fine-tune {i}/{len(jobs)}] {job.out}: complete, skipped", file=sys.stderr)
            continue
        resume = has_checkpoint(paths)
        print(
            f"[fine-tune {i}/{len(jobs)}] {job.subnet} ({job.init}, {job.label_fraction:g} of the labels) into {job.out}", file=sys.stderr
        )
        summary = finetune(job, resume=resume, progress=not quiet)
        print(f"  test top-1 {summary['top1']:.2f} %, {summary['macs_ratio']:.3f} of the dense MACs", file=sys.stderr)
