"""Command line: `gatedssl pretrain`, `sweep`, `eval`, `calibrate`, `export` and `report`.

Flags are generated from `PretrainConfig`, so the CLI, the YAML files and the docs cannot
drift apart. Precedence: dataclass defaults < recipe < --config FILE < command-line flags.
Mistakes a user can fix end as one `error:` line per problem and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import MISSING, fields
from pathlib import Path

from . import __version__
from .config import FLAG_GROUPS, PretrainConfig, load_yaml
from .errors import RunStopped, UserError
from .names import KNN_PROTOCOLS, MODE_NAMES

_TYPES = {"int": int, "float": float, "str": str}


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line like every other error."""

    def error(self, message: str):
        raise UserError(f"{message} (see `{self.prog} --help`)")


def _add_config_flags(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One flag per PretrainConfig setting, under the --help heading its `section` names."""
    groups = {name: parser.add_argument_group(f"{name} settings") for name in FLAG_GROUPS}
    for f in fields(PretrainConfig):
        if f.name in skip:
            continue
        group = groups[f.metadata["group"]]
        flag = "--" + f.name.replace("_", "-")
        annotation = str(f.type).replace(" | None", "")
        default = f.default if f.default is not MISSING else None
        help_text = f.metadata.get("help", "")
        if default is not None:
            help_text += f" (default: {default:.4g})" if isinstance(default, float) else f" (default: {default})"
        kwargs = dict(default=argparse.SUPPRESS, help=help_text.replace("%", "%%"))
        if annotation == "bool":
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif f.metadata.get("nargs"):
            group.add_argument(flag, type=float, nargs=f.metadata["nargs"], metavar="X", **kwargs)
        else:
            choices = f.metadata.get("choices")
            group.add_argument(flag, type=_TYPES[annotation], choices=choices, metavar=f.name.upper() if not choices else None, **kwargs)


def _resume(value: str) -> str:
    if value != "auto":
        raise argparse.ArgumentTypeError(f"--resume takes no value or 'auto', got {value!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gatedssl", description="Self-supervised pretraining of a dense encoder and its gated sub-network in one run.")
    parser.add_argument("--version", action="version", version=f"gatedssl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser(
        "pretrain",
        help="pretrain a dense encoder and its gated sub-network",
        description="Pretrain a dense encoder and its gated sub-network in one run. Settings not given "
        "come from the dataset's recipe (a CPU demo on 'embedded', the paper's recipe otherwise).",
    )
    p.add_argument(
        "--config",
        metavar="FILE|NAME",
        help="read settings from a YAML file, or a shipped config by name (cifar10, cifar100, stl10, imagenet100: the paper's runs); flags given here override it",
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        type=_resume,
        metavar="auto",
        help="continue the run in --out from its last checkpoint; --resume auto: continue where there is one, otherwise start "
        "(for schedulers' requeues and torchrun --max-restarts; it stops a run whose last two attempts failed the same way)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_config_flags(p)

    w = sub.add_parser(
        "sweep",
        help="pretrain each mode at each budget plus the dense baseline (B1), then one comparison report",
        description="The vanilla dense baseline (--mode dense, the paper's B1), then each --modes entry at each budget "
        "(slimmable: once, with its --widths; posthoc: from the sweep's B1 encoder, for a fifth of the epochs), "
        "each in its own folder under --out, and one report comparing every sub-network of every system. Finished "
        "runs are skipped and unfinished ones resumed, so a sweep can be re-run after an interruption. Any pretrain "
        "setting applies to every run.",
    )
    w.add_argument("--budgets", type=float, nargs="+", required=True, metavar="T", help="budgets t_d, e.g. 0.1 0.3 0.5")
    w.add_argument(
        "--modes",
        nargs="+",
        default=["dual"],
        choices=[m for m in MODE_NAMES if m != "dense"],
        metavar="MODE",
        help="systems to train besides B1: dual (the paper), gated (B2), slimmable (DSPNet), posthoc (gates on the B1 encoder) "
        "(default: dual)",
    )
    w.add_argument("--out", required=True, metavar="SWEEP", help="sweep folder (one run folder per budget inside)")
    w.add_argument("--no-baseline", action="store_true", help="skip the dense baseline run")
    w.add_argument(
        "--config",
        metavar="FILE|NAME",
        help="read settings from a YAML file, or a shipped config by name (cifar10, cifar100, stl10, imagenet100: the paper's runs); flags given here override it",
    )
    w.add_argument("--quiet", action="store_true", help="no progress bar")
    w.add_argument(
        "--finetune",
        type=float,
        nargs="+",
        metavar="F",
        help="then fine-tune every run's sub-networks on these shares of the labels (e.g. 0.01 0.1 1.0; gatedssl finetune's "
        "default recipe, the run's seed), and each sub-network once from random init; the report adds them",
    )
    _add_probe_flags(w, default="fast")
    _add_config_flags(w, skip=("budget", "out", "mode", "init_from"))

    e = sub.add_parser(
        "eval",
        help="re-evaluate a saved run: kNN on both passes and MACs",
        description="Re-evaluate a checkpoint: kNN top-1 of the dense and the gated pass, and their MACs on the test set. "
        "Writes the run's summary.json (or --out) and prints the table.",
    )
    e.add_argument("--checkpoint", required=True, metavar="PATH", help="RUN/checkpoints/last.pt of a pretraining run")
    e.add_argument("--data-dir", metavar="DIR", help="dataset folder, if it moved since pretraining")
    e.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N (default: auto)")
    e.add_argument("--knn-protocol", choices=KNN_PROTOCOLS, help="override the run's kNN protocol")
    e.add_argument(
        "--out",
        metavar="FILE.json",
        help="where to write the summary (default: RUN/summary.json when the checkpoint is in RUN/checkpoints/, else NAME.summary.json beside it)",
    )
    _add_probe_flags(e, default="none")

    c = sub.add_parser(
        "calibrate",
        help="shift a gated run's gates so that they spend its budget at evaluation, then re-evaluate",
        description="Training samples noisy gates; evaluation thresholds them, and the two can spend differently (runs "
        "from gatedssl 0.2.0 on are calibrated when they end, unless --no-calibrate-gates). This sets one logit offset "
        "shared by every gate so that the thresholded gated pass spends the budget on the run's training images, "
        "rewrites the checkpoint in place (atomically; in a run folder, the step_*.pt file keeps the weights as trained) "
        "and rewrites the summary as `gatedssl eval` does.",
    )
    c.add_argument("--checkpoint", required=True, metavar="PATH", help="RUN/checkpoints/last.pt of a dual, gated or posthoc run")
    c.add_argument("--budget", type=float, help="MACs ratio to meet (default: the run's own budget)")
    c.add_argument("--images", type=int, help="training images the ratio is measured on (default: 1024)")
    c.add_argument("--data-dir", metavar="DIR", help="dataset folder, if it moved since pretraining")
    c.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N (default: auto)")
    _add_probe_flags(c, default="none")

    x = sub.add_parser(
        "export",
        help="write the dense encoder or a static sub-network as .pt, TorchScript, ONNX or torchvision weights",
        description="Export a trained run. dense: the dense encoder with BN folded in. static: a plain ResNet "
        "keeping, per block, the middle channels the gates open for at least a share Q of the training "
        "images (the gated BN set folded in); its kNN, fast-probe accuracy and MACs are printed and "
        "recorded in RUN/summary.json under 'static'. Load the file with gatedssl.load.",
    )
    x.add_argument("--checkpoint", required=True, metavar="PATH", help="RUN/checkpoints/last.pt of a pretraining run")
    x.add_argument("--subnet", default="dense", help="dense, static, or a slimmable run's width such as width0.5 (default: dense)")
    x.add_argument(
        "--keep-rate",
        type=float,
        metavar="Q",
        help="static: keep the channels open for at least this share of the training images, in [0, 1]",
    )
    x.add_argument(
        "--macs-ratio",
        type=float,
        metavar="R",
        help="static: the smallest Q whose network spends at most R of the dense MACs (default: the run's budget)",
    )
    x.add_argument(
        "--channel-multiple",
        type=int,
        metavar="M",
        help="static: round each block's channel count up to a multiple of M with its next most frequent channels "
        "(default: 16 for --format onnx, where onnxruntime runs such counts much faster per MAC, unless that cannot "
        "meet the MACs asked for; else 1, the gates' exact counts)",
    )
    x.add_argument(
        "--format",
        default="pt",
        dest="fmt",
        help="pt (state dict + architecture; gatedssl.load reads it), torchscript, onnx "
        "(verified with onnxruntime), torchvision (dense, width 64: a torchvision ResNet state dict) (default: pt)",
    )
    x.add_argument("--out", required=True, metavar="FILE", help="the file to write")
    x.add_argument("--data-dir", metavar="DIR", help="static: dataset folder, if it moved since pretraining")
    x.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N (default: auto)")
    x.add_argument("--no-probe", action="store_true", help="static: skip the linear probe (kNN and MACs only)")
    x.add_argument(
        "--quantize",
        metavar="int8",
        help="with --format onnx: write the model statically quantized to INT8 (onnxruntime, QDQ, per-channel weights), "
        "calibrated on the run's training images; fp32 and INT8 kNN, MACs and batch-1 latency are printed and recorded "
        "in RUN/summary.json under 'int8'",
    )
    x.add_argument(
        "--latency-ms",
        type=float,
        metavar="X",
        help="static: instead of a MACs target, measure candidate static networks on this machine and write the one with "
        "the most channels whose median latency is at most X ms (the curve is printed and drawn beside --out)",
    )
    x.add_argument(
        "--runtime", help="--latency-ms: measure under onnxruntime or torch (default: onnxruntime for --format onnx, else torch)"
    )
    x.add_argument("--threads", type=int, default=1, metavar="T", help="--latency-ms: threads the runtime uses (default: 1)")
    x.add_argument("--batch-size", type=int, default=1, metavar="B", help="--latency-ms: images per forward (default: 1)")
    x.add_argument(
        "--calibration-images",
        type=int,
        metavar="N",
        help="--quantize: how many training images calibrate the activation ranges (default: 300, or all if the run has fewer)",
    )

    r = sub.add_parser(
        "report",
        help="the trade-off report of runs or sweeps: Table 1, plots, channel usage",
        description="Compare finished runs (run folders, or sweep folders holding them): writes report.md, a "
        "self-contained report.html, table.json/csv and PNGs (accuracy vs MACs, channel usage, "
        "MACs per class, training curves, static exports) into --out.",
    )
    r.add_argument("paths", nargs="+", metavar="RUN_OR_SWEEP", help="run folders or sweep folders")
    r.add_argument("--out", required=True, metavar="DIR", help="folder for the report")
    r.add_argument("--paper-overlay", action="store_true", help="draw the paper's Table 1 numbers on the trade-off plot")
    _add_finetune_parser(sub)
    return parser


def _add_finetune_parser(sub) -> None:
    f = sub.add_parser(
        "finetune",
        help="fine-tune a sub-network of a pretrained run, with a linear head, on labelled images",
        description="Train a pretrained run's sub-network end to end with a linear classifier: dense, gated (its "
        "gates keep the run's budget: the budget loss stays on), static (the channels `export --subnet static` keeps) "
        "or a slimmable run's widthW. BatchNorm trains. Data: the run's own labelled split unless --dataset/--data-dir "
        "(transfer). Writes FT/checkpoints, FT/labels.txt (the labelled images used), FT/metrics.jsonl and "
        "FT/summary.json (test top-1, MACs); `gatedssl.load('FT/checkpoints/last.pt').predict(images)` classifies.",
    )
    f.add_argument("--checkpoint", required=True, metavar="PATH", help="RUN/checkpoints/last.pt of a pretraining run")
    f.add_argument("--out", required=True, metavar="FT", help="folder for the fine-tune")
    f.add_argument("--subnet", default="dense", help="dense, gated, static or widthW (default: dense)")
    f.add_argument("--dataset", help="another labelled dataset (transfer; default: the run's)")
    f.add_argument("--data-dir", metavar="DIR", help="its folder (train/ and test/ or val/ class folders), or the run's data if it moved")
    f.add_argument(
        "--label-fraction", type=float, default=1.0, metavar="F", help="class-balanced share of the labels, drawn with --seed (default: 1)"
    )
    f.add_argument(
        "--label-list", metavar="FILE", help="a fixed list of labelled images, one path under train/ per line (as FT/labels.txt)"
    )
    f.add_argument(
        "--init", choices=("pretrained", "random"), default="pretrained", help="random: the same network from scratch, the baseline"
    )
    f.add_argument("--recipe", choices=("default", "semi"), default="default", help="default, or semi: SimCLR's semi-supervised protocol")
    f.add_argument(
        "--epochs", type=int, help="default: about 1000 steps within [10, 100] epochs (semi: 60 below 10%% of the labels, else 30)"
    )
    f.add_argument("--lr", type=float, help="per 256 images (default: 0.1; semi: 0.05)")
    f.add_argument(
        "--batch-size", type=int, default=128, help="images per step at most; an epoch is split into equal batches (default: 128)"
    )
    f.add_argument("--weight-decay", type=float, help="default: 5e-4 (semi: 0)")
    f.add_argument("--label-smoothing", type=float, help="default: 0.1 (semi: 0)")
    f.add_argument("--freeze-backbone", action="store_true", help="train the head only (a linear probe with augmentation)")
    f.add_argument("--freeze-gates", action="store_true", help="gated: keep the gates as pretrained (no budget loss needed)")
    f.add_argument(
        "--no-calibrate-gates", dest="calibrate_gates", action="store_false", help="gated: skip the budget calibration at the end"
    )
    f.add_argument("--budget-weight", type=float, metavar="W", help="gated: the budget loss's weight (default: the run's)")
    f.add_argument(
        "--keep-rate",
        type=float,
        metavar="Q",
        help="static: keep the channels the gates open for at least this share of the training images (default: the largest "
        "static network within the run's budget of MACs)",
    )
    f.add_argument("--seed", type=int, default=0, help="draws the label subset, the head and the augmentations (default: 0)")
    f.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    f.add_argument(
        "--checkpoint-minutes",
        type=float,
        default=10.0,
        help="also checkpoint within an epoch this often; 0: at epoch ends only (default: 10)",
    )
    f.add_argument(
        "--resume", nargs="?", const=True, default=False, type=_resume, help="continue from FT's checkpoint; 'auto': if there is one"
    )
    f.add_argument("--overwrite", action="store_true", help="replace a fine-tune already in FT")
    f.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_probe_flags(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--probe",
        choices=("none", "fast", "paper"),
        default=default,
        help=f"linear probe on both passes: fast (cached features, seconds) or paper (augmented, 100 epochs) (default: {default})",
    )
    parser.add_argument("--probe-seeds", type=int, default=1, metavar="N", help="linear heads per pass; mean and std reported (default: 1)")


def config_from_args(args: argparse.Namespace) -> PretrainConfig:
    return PretrainConfig(**given_settings(args))


def given_settings(args: argparse.Namespace) -> dict:
    """The settings the user gave: --config FILE's, then the flags (argparse leaves flags not given out: SUPPRESS).
    On --resume the others are the run's own, whatever today's defaults."""
    values = load_yaml(args.config) if args.config else {}
    names = {f.name for f in fields(PretrainConfig)}
    values.update({k: v for k, v in vars(args).items() if k in names})
    return values


def run_pretrain(args: argparse.Namespace) -> int:
    from .summary import format_summary
    from .training.plan import plan_run
    from .training.trainer import pretrain

    given = given_settings(args)  # all checks before anything is printed or loaded
    plan = plan_run(PretrainConfig(**given), args.resume, args.overwrite, set(given))
    resolved = plan.cfg
    global _started
    _started = True  # from here on an error may be one rank's own (a file only it reads): every rank names its own
    quiet = args.quiet or not _main_rank()
    if not quiet:
        print(f"gatedssl {__version__}: pretraining into {resolved.out}", file=sys.stderr)
        print("settings: " + ", ".join(f"{k}={v}" for k, v in resolved.to_dict().items()), file=sys.stderr)
    summary = pretrain(plan, progress=not quiet)
    if _main_rank():
        print(format_summary(summary))
        print(f"run folder: {resolved.out} (summary.json, metrics.jsonl, checkpoints/last.pt)")
    return 0


_started = False


def _main_rank() -> bool:
    """Under torchrun rank 0 speaks for all; the others only once the run has started, prefixed with their rank."""
    return os.environ.get("RANK", "0") == "0"


def _speaker() -> str | None:
    """The prefix of this process's error lines, or None if it keeps quiet (checks every rank repeats)."""
    if _main_rank():
        return "error: "
    return f"error (rank {os.environ['RANK']}): " if _started else None


def run_sweep(args: argparse.Namespace) -> int:
    from .training.sweep import sweep

    count, html = sweep(
        config_from_args(args),
        args.budgets,
        args.modes,
        args.out,
        baseline=not args.no_baseline,
        probe=args.probe,
        probe_seeds=args.probe_seeds,
        quiet=args.quiet,
        finetune_fractions=args.finetune or (),
    )
    if html is None:
        print(f"sweep complete: {count} runs in {args.out}; no report: the data is unlabeled, so there is no accuracy to compare")
    else:
        print(f"sweep complete: {count} runs in {args.out}; report: {html}")
    return 0


def run_report(args: argparse.Namespace) -> int:
    from .checkpoint import report_out_problems
    from .reporting.report import write_report

    problems = report_out_problems(args.out)
    if problems:
        raise UserError("\n".join(problems))
    html = write_report(args.paths, args.out, paper_overlay=args.paper_overlay)
    print(f"report written: {html} (and report.md, table.json, table.csv, PNGs in {args.out})")
    return 0


def run_calibrate(args: argparse.Namespace) -> int:
    from .evaluation.runs import evaluate_checkpoint
    from .summary import format_summary
    from .training.calibrate import calibrate_checkpoint

    record = calibrate_checkpoint(args.checkpoint, args.budget, args.images, args.data_dir, args.device)
    print(
        f"gates calibrated to {record['target']:g}: MACs ratio on {record['images']} training images "
        f"{record['ratio_before']:.3f} -> {record['ratio_after']:.3f} (logit offset {record['offset']:+.3f}); {args.checkpoint} rewritten"
    )
    summary, written = evaluate_checkpoint(
        args.checkpoint,
        data_dir=args.data_dir,
        device=args.device,
        probe=None if args.probe == "none" else args.probe,
        probe_seeds=args.probe_seeds,
    )
    print(format_summary(summary))
    print(f"summary written to {written}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from .evaluation.runs import evaluate_checkpoint
    from .summary import format_summary

    summary, written = evaluate_checkpoint(
        args.checkpoint,
        data_dir=args.data_dir,
        device=args.device,
        knn_protocol=args.knn_protocol,
        out=args.out,
        probe=None if args.probe == "none" else args.probe,
        probe_seeds=args.probe_seeds,
    )
    from .checkpoint import run_folder_of

    where = ""
    if not args.out:
        inside = run_folder_of(args.checkpoint) is not None
        where = " (the run's summary)" if inside else " (beside the checkpoint: it is not in a run's checkpoints/ folder)"
    print(format_summary(summary))
    print(f"summary written to {written}{where}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from .export.run import export

    result = export(
        args.checkpoint,
        args.out,
        subnet=args.subnet,
        fmt=args.fmt,
        keep_rate=args.keep_rate,
        macs_ratio=args.macs_ratio,
        channel_multiple=args.channel_multiple,
        data_dir=args.data_dir,
        device=args.device,
        probe=not args.no_probe,
        quantize=args.quantize,
        calibration_images=args.calibration_images,
        latency_ms=args.latency_ms,
        runtime=args.runtime,
        threads=args.threads,
        batch_size=args.batch_size,
    )
    what = f"classifier ({len(result['classes'])} classes)" if "classes" in result else "encoder"
    line = f"{result['subnet']} {what} written to {result['file']} ({result['format']}): {result['macs'] / 1e6:.1f} M MACs/image, {result['macs_ratio']:.3f} of dense"
    if result["subnet"] == "static" and "classes" not in result:  # a pretrained run's static export measured what it kept
        knn = "not measured (unlabeled data)" if result["knn_top1"] is None else f"{result['knn_top1']:.2f} %"
        line += f"\nkeep rate {result['keep_rate']:.4g}: channels per block {result['channels']}; kNN top-1 {knn}"
        if "probe" in result:
            line += f", linear probe (fast) {result['probe']['top1']:.2f} %"
        line += "; recorded under 'static' in the run's summary.json"
    if "torchvision_code" in result:
        line += f"\nthe torchvision model it fits (also in {result['sidecar']}):\n{result['torchvision_code']}"
    if "onnx_max_abs_diff" in result:
        line += f"\nverified with onnxruntime at batch 1 and 5: max |difference| {result['onnx_max_abs_diff']:.2g}"
    if "int8" in result:
        line += "\n" + int8_table(result)
    if "latency_target" in result:
        line += "\n" + latency_table(result["latency_target"])
    print(line)
    return 0


def int8_table(result: dict) -> str:
    """fp32 beside INT8: what the quantization cost and what it bought."""
    q = result["int8"]
    ms = q["latency_ms"]

    def pct(value) -> str:
        return "-" if value is None else f"{value:.2f} %"

    metric = q["metric"]
    rows = [
        f"INT8 (calibrated on {q['calibration_images']} training images; {sum(q['ops'].values())} quantization nodes):",
        f"  {'':6} {'kNN top-1' if metric == 'knn_top1' else 'top-1':>10} {'MACs':>10} {'latency':>10} {'size':>9}",
        f"  {'fp32':6} {pct(result.get(metric)):>10} {result['macs'] / 1e6:>8.1f} M {ms['fp32']:>7.2f} ms {q['fp32_bytes'] / 1e6:>6.2f} MB",
        f"  {'int8':6} {pct(q.get(metric)):>10} {result['macs'] / 1e6:>8.1f} M {ms['int8']:>7.2f} ms {q['bytes'] / 1e6:>6.2f} MB",
        f"  latency: onnxruntime, batch 1, 1 thread, median; INT8 / fp32 = {ms['ratio']:.2f}; recorded under 'int8' in the run's summary.json",
    ]
    return "\n".join(rows)


def latency_table(target: dict) -> str:
    """The candidates --latency-ms timed, the one written marked."""
    how = f"{target['runtime']}{' INT8' if target['int8'] else ''}, {target['threads']} thread(s), batch {target['batch']}"
    rows = [
        f"latency target {target['target_ms']:g} ms ({how}; {len(target['curve'])} of {target['candidates']} candidates timed):",
        f"  {'keep rate':>9} {'MACs/dense':>10} {'median ms':>10} {'kNN (fp32)' if target['int8'] else 'kNN top-1':>10}",
    ]
    for m in target["curve"]:
        knn = "-" if m["knn_top1"] is None else f"{m['knn_top1']:.2f} %"
        mark = "  <- written" if m["index"] == target["chosen"] else ""
        rows.append(f"  {m['keep_rate']:>9.4g} {m['macs_ratio']:>10.3f} {m['latency_ms']:>10.3g} {knn:>10}{mark}")
    rows.append(f"  drawn in {target['plot']}")
    return "\n".join(rows)


def run_finetune(args: argparse.Namespace) -> int:
    from .training.finetune import FinetuneConfig, finetune
    from .training.run_folder import RunPaths, finished_summary, has_checkpoint, repeated_failure_problem

    names = {f.name for f in fields(FinetuneConfig)}
    cfg = FinetuneConfig(**{k: v for k, v in vars(args).items() if k in names})
    resume = args.resume
    if resume == "auto":
        paths = RunPaths(Path(cfg.out))
        done = finished_summary(paths)
        if done is not None:
            print(f"--resume auto: {cfg.out} holds a finished fine-tune (top-1 {done.get('top1')} %); nothing to do")
            return 0
        repeated_failure_problem(paths)
        resume = has_checkpoint(paths)
    s = finetune(cfg, resume=bool(resume), overwrite=args.overwrite, progress=not args.quiet)
    share = f"{100 * s['labels_used'] / s['train_images']:.3g} %"
    used = f"{s['labels_used']} of {s['train_images']} labelled images ({share}" + (
        f", from {s['label_list']})" if s["label_list"] else ")"
    )
    line = (
        f"{s['subnet']} ({s['init']}) fine-tuned on {used}, {s['epochs']} epochs, {s['train_seconds']:.0f} s: "
        f"test top-1 {s['top1']:.2f} % on {s['test_images']} images, {s['macs'] / 1e6:.2f} M MACs/image = {s['macs_ratio']:.3f} of dense"
    )
    if s.get("before_calibration"):
        b = s["before_calibration"]
        line += f" (before the gates' calibration: {b['top1']:.2f} %, {b['macs_ratio']:.3f})"
    print(line + f"\nsummary written to {Path(cfg.out) / 'summary.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    global _started
    _started = False  # each command starts before its run (an earlier call in this process, e.g. a test's, does not count)
    args = None
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        if args.command != "pretrain" and os.environ.get("WORLD_SIZE", "1") != "1":
            raise UserError(f"under torchrun only `gatedssl pretrain` runs (on every rank); run `gatedssl {args.command}` as one process")
        return {
            "pretrain": run_pretrain,
            "sweep": run_sweep,
            "eval": run_eval,
            "calibrate": run_calibrate,
            "export": run_export,
            "report": run_report,
            "finetune": run_finetune,
        }[args.command](args)
    except UserError as exc:
        prefix = _speaker()
        for line in str(exc).splitlines() if prefix else ():
            print(f"{prefix}{line}", file=sys.stderr)
        return 2
    except RunStopped as exc:
        if _main_rank():  # a stop is agreed by every rank (gatedssl.distributed.agree): one says it
            print(str(exc), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        resumable = args.command in ("pretrain", "sweep", "finetune")
        what = (
            "the last checkpoint is kept; continue with --resume"
            if resumable
            else "files are written whole or not at all: nothing half-written"
        )
        print(f"interrupted: {what}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # whoever read the output stopped reading (`| head`, a killed parent): no bug, nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that Python's exit flush does not raise again
        return 141  # 128 + SIGPIPE, as a shell reports it
    except Exception as exc:
        if _lost_rank(exc):
            if _main_rank() and "TORCHELASTIC_RUN_ID" not in os.environ:  # under torchrun its summary names the rank that failed
                print(
                    f"error: lost contact with another rank ({str(exc).splitlines()[0][:160]}); its own message, or torchrun's summary, says why",
                    file=sys.stderr,
                )
            return 1
        return _crash(exc, args, argv)


def _lost_rank(exc: Exception) -> bool:
    """A collective that failed because another rank is gone (torch is only imported under torchrun)."""
    if not isinstance(exc, RuntimeError) or os.environ.get("WORLD_SIZE", "1") == "1":
        return False
    from .distributed import lost_contact

    return lost_contact(exc)


def _crash(exc: Exception, args: argparse.Namespace | None, argv: list[str] | None) -> int:
    """The net under every command: an exception no check foresaw is a bug. One line says so and where the full
    traceback is (RUN/crash.log when the run folder exists, else a temporary file), exit code 1."""
    import tempfile
    import traceback

    rank = os.environ.get("RANK", "0") if os.environ.get("WORLD_SIZE", "1") != "1" else "0"
    text = (
        f"gatedssl {__version__}, Python {sys.version.split()[0]}, rank {rank}\n"
        f"command: gatedssl {' '.join(sys.argv[1:] if argv is None else argv)}\n\n"
        + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    )
    written = None
    folder = _crash_folder(args)
    if folder is not None:
        try:
            written = folder / ("crash.log" if rank == "0" else f"crash-rank{rank}.log")
            written.write_text(text)
        except OSError:
            written = None
    if written is None:
        try:
            handle, name = tempfile.mkstemp(prefix="gatedssl-crash-", suffix=".log")
            with os.fdopen(handle, "w") as fh:
                fh.write(text)
            written = Path(name)
        except OSError:
            written = None
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    what = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    prefix = "error: " if rank == "0" else f"error (rank {rank}): "
    where = f"the full traceback is in {written}" if written else "the traceback follows (no file could be written)"
    print(f"{prefix}gatedssl {__version__} hit a bug ({what}); {where}; please report it", file=sys.stderr)
    if written is None:
        print(text, file=sys.stderr)
    return 1


def _crash_folder(args: argparse.Namespace | None) -> Path | None:
    """The run folder a crash log belongs in: pretrain's resolved --out, if it exists."""
    if args is None or getattr(args, "command", None) != "pretrain":
        return None
    try:
        from .config import resolve

        out = Path(resolve(config_from_args(args)).out)
        return out if out.is_dir() else None
    except Exception:  # the settings themselves may be what failed, or the folder's name (too long)
        return None


if __name__ == "__main__":
    sys.exit(main())
