"""Fine-tunes in a report: top-1 against the label fraction for every sub-network, pretrained against random init.

A fine-tune (`gatedssl finetune`) names its pretrained run by its checkpoint; the report groups fine-tunes by
(run, sub-network, how it was trained, label fraction) and averages over seeds. A sweep's fine-tunes live in
RUN/finetune/ and its random-init baselines in SWEEP/finetune-random/ (`gatedssl sweep --finetune`).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path


def find_finetunes(paths) -> list[dict]:
    """Every fine-tune summary under the given run or sweep folders (or folders of fine-tunes), each read once."""
    found, seen = [], set()
    for path in map(Path, paths):
        for summary_path in sorted(path.rglob("summary.json")) if path.is_dir() else []:
            key = summary_path.resolve()
            if key in seen:
                continue
            seen.add(key)
            try:
                summary = json.loads(summary_path.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(summary, dict) and summary.get("kind") == "finetune":
                found.append(summary)
    return found


def training_label(summary: dict) -> str:
    """How a fine-tune trained, in a few words: the init, and what it froze or which recipe it took."""
    parts = ["random init" if summary.get("init") == "random" else "pretrained"]
    if summary.get("freeze_backbone"):
        parts.append("head only")
    if summary.get("freeze_gates"):
        parts.append("gates frozen")
    if summary.get("recipe", "default") != "default":
        parts.append(f"recipe {summary['recipe']}")
    if summary.get("run_dataset", summary.get("dataset")) != summary.get("dataset") or summary.get("transfer"):
        parts.append(f"transfer to {summary['dataset']} ({len(summary.get('classes', []))} classes)")
    return ", ".join(parts)


def source_name(summary: dict) -> str:
    """The pretrained run's folder name (RUN/checkpoints/last.pt -> RUN); torch-free, as the report's readers are."""
    path = Path(summary.get("checkpoint", "?"))
    return path.parent.parent.name if path.parent.name == "checkpoints" else path.stem


def frozen_accuracy(summary: dict) -> tuple[float | None, float | None]:
    """The pretrained run's kNN and linear-probe top-1 of the fine-tuned sub-network (from RUN/summary.json), to set
    the fine-tune beside the frozen features it started from; None where the run's summary has none."""
    path = Path(summary.get("checkpoint", "?"))
    try:
        run = json.loads((path.parent.parent / "summary.json").read_text()) if path.parent.name == "checkpoints" else {}
    except (OSError, ValueError):
        run = {}
    sub = run.get(summary["subnet"]) if isinstance(run, dict) else None
    if not isinstance(sub, dict) or summary.get("init") == "random" or summary.get("dataset") != run.get("dataset"):
        return None, None
    probe = sub.get("probe") if isinstance(sub.get("probe"), dict) else {}
    return sub.get("knn_top1"), probe.get("top1")


def finetune_rows(summaries: list[dict]) -> list[dict]:
    """One row per (run, sub-network, training, label fraction): mean and sample std over seeds."""
    groups: dict[tuple, list[dict]] = {}
    for s in summaries:
        fraction = s.get("label_fraction")
        # different data, classes, length or label list are different rows, never seeds of one
        share = fraction if fraction is not None else s["labels_used"] / 1e9
        key = (
            source_name(s),
            s["subnet"],
            training_label(s),
            share,
            s.get("dataset"),
            tuple(s.get("classes", [])),
            s["epochs"],
            s.get("label_list"),
        )
        groups.setdefault(key, []).append(s)
    rows = []
    for (run, subnet, training, *_), runs in sorted(
        groups.items(), key=lambda item: tuple(map(str, item[0][:3])) + (item[0][3], item[0][6])
    ):
        top1 = [r["top1"] for r in runs]
        before = [r["before_calibration"]["macs_ratio"] for r in runs if r.get("before_calibration")]
        knn, probe = frozen_accuracy(runs[0])
        rows.append(
            {
                "run": run,
                "subnet": subnet,
                "training": training,
                "fraction": runs[0].get("label_fraction"),
                "label_list": runs[0].get("label_list"),
                "labels": runs[0]["labels_used"],
                "epochs": runs[0]["epochs"],
                "seeds": len(runs),
                "top1": statistics.mean(top1),
                "top1_std": statistics.stdev(top1) if len(top1) > 1 else 0.0,
                "macs_ratio": statistics.mean(r["macs_ratio"] for r in runs),
                "ratio_before_calibration": statistics.mean(before) if before else None,
                "seconds": statistics.mean(r["train_seconds"] for r in runs),
                "run_knn": knn,
                "run_probe": probe,
            }
        )
    return rows


HEADER = [
    "run",
    "sub-network",
    "training",
    "labels (share)",
    "epochs",
    "seeds",
    "test top-1",
    "frozen: kNN / probe",
    "MACs / dense (before calibration)",
    "s each",
]


def table_cells(rows: list[dict]) -> list[list[str]]:
    cells = []
    for r in rows:
        share = f"{r['fraction']:g}" if r["fraction"] is not None else f"list {Path(r['label_list']).name}"
        before = f" ({r['ratio_before_calibration']:.3f})" if r["ratio_before_calibration"] is not None else ""
        spread = f" ± {r['top1_std']:.2f}" if r["seeds"] > 1 else ""
        cells.append(
            [
                r["run"],
                r["subnet"],
                r["training"],
                f"{r['labels']} ({share})",
                str(r["epochs"]),
                str(r["seeds"]),
                f"{r['top1']:.2f}{spread}",
                "–" if r["run_knn"] is None else f"{r['run_knn']:.2f} / " + ("–" if r["run_probe"] is None else f"{r['run_probe']:.2f}"),
                f"{r['macs_ratio']:.3f}{before}",
                f"{r['seconds']:.0f}",
            ]
        )
    return cells


def markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in table_cells(rows)]
    return "\n".join(lines)


def plot_finetune(rows: list[dict], path: Path) -> Path:
    """Top-1 against the share of labels (log scale): one line per (run, sub-network, training); random init dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["fraction"] is not None:
            lines.setdefault((r["run"], r["subnet"], r["training"]), []).append(r)
    fig, ax = plt.subplots(figsize=(8, 5))
    for (run, subnet, training), points in sorted(lines.items()):
        points.sort(key=lambda r: r["fraction"])
        style = "--" if training.startswith("random") else "-" if training == "pretrained" else ":"
        ax.errorbar(
            [100 * p["fraction"] for p in points],
            [p["top1"] for p in points],
            [p["top1_std"] for p in points],
            ls=style,
            marker="o",
            capsize=3,
            label=f"{run} {subnet}, {training} ({points[0]['macs_ratio']:.2f}x MACs)",
        )
    ax.set_xscale("log")
    ax.set_xlabel("labels used (% of the labelled training images, log scale)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("Fine-tuned sub-networks: pretrained (solid), random init (dashed), other (dotted)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def add_section(doc, rows: list[dict], out: Path) -> None:
    doc.heading(2, "Fine-tuning")
    doc.para(
        "Each sub-network fine-tuned end to end with a linear head on a class-balanced share of the labels "
        "(gatedssl finetune), against the same network from random init on the same labels; mean ± std over seeds; "
        "beside it the pretrained run's frozen features: kNN and linear probe of that sub-network. "
        "The gated network keeps its budget: its MACs ratio on the test set, and before the final calibration."
    )
    doc.table(HEADER, table_cells(rows))
    if any(r["fraction"] is not None for r in rows):
        doc.image(plot_finetune(rows, out / "finetune.png"), "fine-tuned top-1 against the share of labels")
