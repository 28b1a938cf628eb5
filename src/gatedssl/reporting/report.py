"""The trade-off report of one or more runs: a Table-1-shaped table, the accuracy/compute picture,
and per-run pictures of the gates, written as Markdown and as one self-contained HTML file.

    write_report(["sweeps/c10"], "reports/c10")  ->  reports/c10/report.html (+ report.md, PNGs, table.json/csv)

Only summary.json and metrics.jsonl of each run are read (no torch, no checkpoints), so a report
can be made anywhere the run folders are copied to. The parts: runs.py finds and reads the runs, table.py
groups them into Table 1, plots.py and curves.py draw, compare.py sets every system side by side,
document.py writes Markdown and HTML; this module puts them in order.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
from pathlib import Path

from .. import __version__
from ..errors import UserError
from . import compare, finetune, paper
from .curves import plot_training_curves, read_metrics
from .document import Document
from .plots import channel_frequency, plot_channels, plot_per_class, plot_tradeoff
from .runs import MODE_LABEL, Run, find_runs
from .table import CSV_FIELDS, Accuracy, Section, build_sections, csv_rows, display_rows, epochs_text, section_table, static_accuracy

REPORT_PNGS = ("tradeoff", "compare", "finetune", "channels_", "per_class_", "curves_")  # the names the report gives its pictures


def _pictures_drawn_before(out: Path) -> set[str]:
    """The PNGs an earlier report into `out` drew, as its table.json lists them; never a name outside `out` or not a report's."""
    try:
        listed = json.loads((out / "table.json").read_text()).get("pictures", [])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return set()
    if not isinstance(listed, list):
        return set()
    return {
        name
        for name in listed
        if isinstance(name, str) and name == Path(name).name and name.endswith(".png") and name.startswith(REPORT_PNGS)
    }


def _counts(section: Section) -> str:
    seen = sorted(
        {
            (d.get("pretrain_images"), d.get("train_images"), d.get("test_images"))
            for d in (r.summary.get("data", {}) for r in section.runs)
        },
        key=str,
    )
    return "; ".join(f"{p} pretraining images, {tr} labelled train images (kNN bank / probe), {te} test images" for p, tr, te in seen)


def _protocol(section: Section) -> list[str]:
    s = section.setting
    runs = section.runs
    b1 = [r for r in runs if r.mode == "dense"]
    dual = [r for r in runs if r.mode == "dual"]
    b2 = [r for r in runs if r.mode == "gated"]

    def budgets(rs):
        return ", ".join(f"{b:g}" for b in sorted({r.budget for r in rs}))

    def seeds(rs):
        return ", ".join(str(x) for x in sorted({r.seed for r in rs}, key=str))

    items = [
        f"Dataset: {s['dataset']} — {_counts(section)} (from the runs' summary.json).",
        f"Accuracy: {section.accuracy.description}.",
        "Spread: mean ± sample standard deviation (n − 1) over pretraining seeds; a single seed shows its value alone. "
        "Δ B1 = mean accuracy minus the mean accuracy of B1's dense network.",
        "MACs: multiply-accumulates per test image, averaged over the test set, with the gates each image switched on; "
        "MACs red. = 1 − gated MACs / dense MACs.",
        f"Method: {s['method']}, {s['arch']} width {s['width']}, {epochs_text(s['epochs'])}, batch size "
        f"{', '.join(sorted({str(r.summary.get('batch_size')) for r in runs}))}"
        + (f", pairing {', '.join(section.pairings)}" if section.pairings else "")
        + ".",
    ]
    parts = []
    if b1:
        parts.append(f"B1 (dense only): {len(b1)} run(s), seeds {seeds(b1)}")
    if b2:
        parts.append(f"B2 (gated only): {len(b2)} run(s), budgets {budgets(b2)}, seeds {seeds(b2)}")
    if dual:
        parts.append(f"Dual: {len(dual)} run(s), budgets {budgets(dual)}, seeds {seeds(dual)}")
    items.append("Runs: " + "; ".join(parts) + ".")
    devices = sorted({str(r.summary.get("device")) for r in runs})
    items.append(f"Trained on: {', '.join(devices)}.")
    return items


def _calibration_cell(run: Run) -> str:
    """The thresholded ratio on training images before the end-of-run calibration (gatedssl.training.calibrate) moved it."""
    record = run.summary.get("gate_calibration")
    return "–" if record is None else f"{record['ratio_before']:.3f} (train images)"


def _static_cell(run: Run, accuracy: Accuracy) -> str:
    static, value = run.summary.get("static"), static_accuracy(run, accuracy)
    if static is None:
        return "–"
    shown = f"{value:.2f}" if value is not None else f"kNN {static['knn_top1']:.2f}"
    return f"{shown} ({static['macs_ratio']:.3f}, Q={static['keep_rate']:.2g})"


def _runs_table(runs: list[Run], accuracy_of: dict[int, Accuracy]) -> tuple[list[str], list[list[str]]]:
    header = [
        "run",
        "mode",
        "dataset",
        "t_d",
        "seed",
        "epochs",
        "dense top-1",
        "gated top-1",
        "gated MACs / dense",
        "calibrated from",
        "static top-1 (MACs / dense, Q)",
        "train time",
        "folder",
    ]
    rows = []
    for run in runs:
        acc = accuracy_of[id(run)]
        g = run.summary.get("gated", {})
        seconds = run.summary.get("train_seconds")
        rows.append(
            [
                run.name,
                MODE_LABEL.get(run.mode, run.mode),
                run.summary["dataset"],
                f"{run.budget:g}" if run.has_budget else "–",
                str(run.seed),
                str(run.epochs),
                f"{acc.value(run, 'dense'):.2f}" if "dense" in run.passes else "–",
                f"{acc.value(run, 'gated'):.2f}" if run.gated_pass else "–",
                f"{g['macs_ratio']:.3f}" if run.gated_pass else "–",
                _calibration_cell(run),
                _static_cell(run, acc),
                "–" if seconds is None else (f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.0f} s"),
                str(run.path),
            ]
        )
    return header, rows


def _as_list(paths) -> list:
    return [paths] if isinstance(paths, (str, Path)) else list(paths)


def write_report(paths: list[str | Path], out_dir: str | Path, paper_overlay: bool = False) -> Path:
    """Write report.md, report.html (self-contained), table.json, table.csv and the PNGs into out_dir.

    Returns the path of report.html. Raises UserError for problems a user can fix (no runs, a
    missing path, an unreadable summary, an output path that is a file).
    """
    found = find_runs(paths)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file; give a folder for the report")
    out.mkdir(parents=True, exist_ok=True)

    sections = build_sections(found.runs)
    tables = [section_table(s) for s in sections]
    groups = compare.compare_groups(found.runs)
    compared = [compare.compare_table(g) for g in groups] if compare.shown(found.runs) else []
    drawn_before = _pictures_drawn_before(out)  # read before table.json is written again
    tuned = finetune.finetune_rows(finetune.find_finetunes([r.path for r in found.runs] + [Path(p) for p in _as_list(paths)]))

    def write_table(pictures: set[str]) -> None:
        (out / "table.json").write_text(
            json.dumps(
                {
                    "sections": tables,
                    "compare": compared,
                    "finetune": tuned,
                    "skipped": [str(p) for p in found.skipped],
                    "paper_source": paper.SOURCE,
                    "pictures": sorted(pictures),  # the PNGs this report drew: the only ones a later report into this folder removes
                },
                indent=2,
            )
        )

    write_table(drawn_before)  # until this report's pictures are drawn, the earlier report's stay listed
    if compared:
        compare.write_csv(compared, out / "compare.csv")
    elif "compare.png" in drawn_before:  # an earlier report into this folder wrote it (beside its picture): not the user's
        (out / "compare.csv").unlink(missing_ok=True)
    with open(out / "table.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(csv_rows(tables))

    # a run's accuracy is its Table-1 section's; slimmable and post-hoc runs have none there, so their comparison group's
    accuracy_of = {id(r): g.accuracy for g in groups for r in g.runs} | {id(r): s.accuracy for s in sections for r in s.runs}
    doc = Document(out)
    doc.heading(1, "gatedssl trade-off report")
    doc.para(
        f"{len(found.runs)} finished run(s) from {', '.join(str(Path(p)) for p in ([paths] if isinstance(paths, (str, Path)) else paths))}; "
        f"written {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')} by gatedssl {__version__}. "
        "Raw numbers: table.json and table.csv next to this file."
    )
    if found.skipped:
        doc.para(
            f"Skipped {len(found.skipped)} unfinished run folder(s) without summary.json: " + ", ".join(str(p) for p in found.skipped) + "."
        )

    for section, table in zip(sections, tables):
        doc.heading(2, section.title)
        doc.heading(3, "Protocol")
        doc.bullets(_protocol(section))
        doc.heading(3, "Table (shape of the paper's Table 1)")
        header, rows = display_rows(table, show_pairing=len(section.pairings) > 1)
        doc.table(header, rows)
        doc.para(
            f"Accuracy columns: {section.accuracy.short}. Mean ± std over seeds where a cell has several; rounded to "
            "2 decimals for display (table.json and table.csv hold the raw values)."
        )
        if section.notes:
            doc.bullets([f"Note: {n}" for n in section.notes])

    overlaid = sorted({s.setting["dataset"] for s in sections if paper.paper_rows(s.setting["dataset"])})
    if paper_overlay:
        if overlaid:
            doc.heading(2, "The paper's numbers")
            doc.para(f"Source: {paper.SOURCE}. Linear probe, not comparable one-to-one with kNN numbers.")
            prow = [
                [
                    paper.PAPER_DATASET[d] if i == 0 else "",
                    f"{paper.paper_b1(d):.2f}" if i == 0 else "",
                    f"{r.budget:g}",
                    f"{r.b2_gated:.2f}",
                    f"{r.b2_macs_reduction:.2f}",
                    f"{r.dual_dense:.2f}",
                    f"{r.dual_gated:.2f}",
                    f"{r.dual_macs_reduction:.2f}",
                ]
                for d in overlaid
                for i, r in enumerate(paper.paper_rows(d))
            ]
            doc.table(
                ["dataset", "B1 dense", "t_d", "B2 gated", "B2 MACs red. (%)", "Dual dense", "Dual gated", "Dual MACs red. (%)"], prow
            )
        else:
            doc.para(
                "Paper overlay asked for, but no dataset of these runs is one of the paper's "
                f"({', '.join(paper.OVERLAY_DATASETS)}; an imagefolder dataset is not assumed to be ImageNet-100)."
            )

    if sections:
        tradeoff = plot_tradeoff(sections, tables, out / "tradeoff.png", paper_overlay)
        doc.heading(2, "Trade-off")
        doc.para(
            "Left: accuracy against the gated pass's compute; each Dual run gives two networks, its gated pass (circle, at the "
            "MACs it spends) and its dense pass (diamond, at 100 %), joined by a dotted line; B1 is the star. Right: the same "
            "accuracies against the budget t_d, which shows how training with a budget moves the dense network too."
            + (" Hollow markers and dashed lines: the paper's linear-probe numbers." if paper_overlay and overlaid else "")
        )
        doc.image(tradeoff, "accuracy vs compute and vs budget")
    else:
        doc.para("No B1, B2 or Dual run: no Table 1 and no trade-off picture" + ("; the systems are compared below." if compared else "."))
    if compared:
        compare.add_section(doc, compared, out)
    if tuned:
        finetune.add_section(doc, tuned, out)

    doc.heading(2, "Runs")
    header, rows = _runs_table(found.runs, accuracy_of)
    doc.table(header, rows)
    for run in found.runs:
        doc.open_details(
            f"{run.name}: {MODE_LABEL.get(run.mode, run.mode)}" + (f", t_d={run.budget:g}" if run.has_budget else "") + f", seed {run.seed}"
        )
        if run.gated_pass and channel_frequency(run):
            doc.image(
                plot_channels(run, out / f"channels_{run.name}.png"),
                "gated blocks: channels always on / input-dependent / always off, and per-channel frequency",
            )
        if run.gated_pass and run.summary["gated"].get("macs_ratio_per_class"):
            doc.image(plot_per_class(run, out / f"per_class_{run.name}.png"), "gated MACs per class against the budget")
        if run.mode == "slimmable":
            doc.para(f"Sub-networks: {', '.join(run.subnets)} (widths {', '.join(f'{w:g}' for w in run.summary.get('widths', []))}).")
        if run.mode == "posthoc" and run.summary.get("init_from"):
            doc.para(f"Post-hoc gating, started from {run.summary['init_from']}.")
        if run.metrics_path.is_file() and read_metrics(run.metrics_path):
            png = plot_training_curves(
                run.metrics_path,
                out / f"curves_{run.name}.png",
                budget=run.budget if run.gated_pass else None,
                title=f"{run.name}: training curves",
            )
            doc.image(png, "training curves")
        else:
            doc.para("No metrics.jsonl with a readable line: no training curves.")
        doc.close_details()
    _, html_path = doc.write("gatedssl trade-off report")
    write_table(doc.images)
    for name in drawn_before - doc.images:  # pictures an earlier report into this folder drew and this one no longer does
        (out / name).unlink(missing_ok=True)
    return html_path
