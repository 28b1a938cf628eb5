"""The trade-off report of one or more runs: a Table-1-shaped table, the accuracy/compute picture,
and per-run pictures of the gates, written as Markdown and as one self-contained HTML file.

    write_report(["sweeps/c10"], "reports/c10")  ->  reports/c10/report.html (+ report.md, PNGs, table.json/csv)

Only summary.json and metrics.jsonl of each run are read (no torch, no checkpoints), so a report
can be made anywhere the run folders are copied to.
"""

from __future__ import annotations

import base64
import csv
import datetime as _dt
import html
import json
import re
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure  # a Figure saves to a file itself: no pyplot, no global backend to choose

from .. import __version__
from ..errors import UserError
from . import paper
from .curves import plot_training_curves, read_metrics
from .literal import literal_text

MODE_LABEL = {
    "dense": "B1 (dense only)",
    "gated": "B2 (gated only)",
    "dual": "Dual",
    "slimmable": "Slimmable (DSPNet)",
    "posthoc": "Post-hoc gating of B1",
}
TABLE1_MODES = ("dense", "gated", "dual")  # the systems of the paper's Table 1; the others appear in "Systems compared"
GATED_MODES = ("dual", "gated", "posthoc")  # modes that train gates: their gated sub-network is a network of its own
PROBE_PROTOCOLS = {  # gatedssl.evaluation.probe's protocols, in words
    "fast": "a linear head trained on fixed centre-crop features; for comparing runs of this library with each other",
    "paper": "a linear head trained on freshly augmented images through the frozen backbone; the paper's linear evaluation",
}
RUN_MARKERS = ("config.yaml", "metrics.jsonl", "checkpoints")  # what makes a folder a (possibly unfinished) run
ALWAYS_ON, ALWAYS_OFF = 0.99, 0.01  # channel frequency thresholds of the channel picture


# --------------------------------------------------------------------------- finding runs


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
        return subnets_of(self.summary)

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"


class FoundRuns(NamedTuple):
    runs: list[Run]  # finished runs, in a stable order
    skipped: list[Path]  # run folders without summary.json (unfinished or failed)


def subnets_of(summary: dict) -> list[str]:
    """The run's sub-network names, dense first; summaries before `subnets` existed had dense (and gated unless B1)."""
    subnets = summary.get("subnets")
    if subnets is None:
        return ["dense"] if summary.get("mode") == "dense" else ["dense", "gated"]
    return list(subnets)


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
    required = ["dataset", "method", "mode", "arch", "width", "budget", "epochs", "dense", "knn"]
    missing = [k for k in required if k not in summary]
    subnets = summary.get("subnets", [])
    if not missing and (not isinstance(subnets, list) or not all(isinstance(n, str) for n in subnets)):
        missing = ["subnets as a list of names"]
    if not missing:
        missing = [
            f"{name}.{k}"
            for name in subnets_of(summary)
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


# --------------------------------------------------------------------------- the table


def _stat(values: list[float]) -> dict:
    values = [float(v) for v in values]
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None, "values": values}


@dataclass
class Accuracy:
    """Where the accuracy column comes from; the same for every run of a section."""

    kind: str  # "probe" or "knn"
    short: str  # axis label
    description: str  # protocol sentence of the report
    knn: tuple | None = None

    def value(self, run: Run, which: str) -> float:
        res = run.summary[which]
        return float(res["probe"]["top1"]) if self.kind == "probe" else float(res["knn_top1"])


def _passes(run: Run) -> tuple[str, ...]:
    """The sub-networks whose numbers mean something: B1 has no trained gates, B2 no trained dense network."""
    return {"dense": ("dense",), "gated": ("gated",)}.get(run.mode, tuple(run.subnets))


def _knn_accuracy(knn: dict) -> Accuracy:
    if knn.get("protocol") == "1nn":
        short = "1-NN top-1 (%)"
        desc = "1-NN (Euclidean) top-1 on the test split, the train split as the memory bank (no training of a classifier)"
    else:
        short = f"kNN top-1 (%), weighted, k={knn.get('k')}"
        desc = (
            f"weighted cosine kNN top-1 on the test split (k={knn.get('k')}, temperature {knn.get('temperature')}), "
            "the train split as the memory bank (no training of a classifier)"
        )
    return Accuracy("knn", short, desc, knn=(knn.get("protocol"), knn.get("k"), knn.get("temperature")))


def _describe(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _probe_accuracy(runs: list[Run]) -> tuple[Accuracy | None, str | None]:
    """Linear-probe accuracy when every run has it for every pass it reports, with one protocol; else (None, note)."""
    have = [all("probe" in r.summary.get(p, {}) for p in _passes(r)) for r in runs]
    if not any(have):
        return None, None
    if not all(have):
        return None, (
            f"{sum(have)} of {len(runs)} runs carry linear-probe results; kNN top-1 is shown for all "
            "so that every number of the table comes from one protocol"
        )
    probes = [r.summary[p]["probe"] for r in runs for p in _passes(r)]
    protocols = {_describe(pr.get("protocol")) for pr in probes}
    if len(protocols) > 1:
        return None, "the runs' linear probes used different protocols; kNN top-1 is shown instead"
    protocol = protocols.pop()
    seeds = {_describe(pr.get("seeds")) for pr in probes}
    seed_text = (
        (
            f"; {', '.join(sorted(seeds))} probe seed(s) per network, the probe's top-1 being their mean "
            "(their spread is in table.json as *_probe_top1_std)"
        )
        if seeds != {"null"}
        else ""
    )
    desc = f"linear-probe top-1 on the test split, protocol '{protocol}'"
    if protocol in PROBE_PROTOCOLS:
        desc += f" ({PROBE_PROTOCOLS[protocol]})"
    return Accuracy("probe", f"linear-probe top-1 (%), {protocol} protocol", desc + seed_text), None


@dataclass
class Cell:
    """The runs of one model (B1, B2 or Dual) at one budget and pairing, aggregated over seeds."""

    model: str  # "B1", "B2", "Dual"
    runs: list[Run]
    accuracy: Accuracy

    def passes(self) -> tuple[str, ...]:
        return {"B1": ("dense",), "B2": ("gated",), "Dual": ("dense", "gated")}[self.model]

    def stats(self) -> dict:
        out = {
            "runs": [str(r.path) for r in self.runs],
            "names": [r.name for r in self.runs],
            "seeds": [r.seed for r in self.runs],
            "n": len(self.runs),
        }
        for which in self.passes():
            out[f"{which}_top1"] = _stat([self.accuracy.value(r, which) for r in self.runs])
            out[f"{which}_macs"] = _stat([r.summary[which]["macs"] for r in self.runs])
            if self.accuracy.kind == "probe":
                out[f"{which}_probe_top1_std"] = [r.summary[which]["probe"].get("top1_std") for r in self.runs]
        if "gated" in self.passes():
            ratios = [float(r.summary["gated"]["macs_ratio"]) for r in self.runs]
            out["gated_macs_ratio"] = _stat(ratios)
            out["gated_macs_reduction_pct"] = _stat([100.0 * (1.0 - v) for v in ratios])
        return out


@dataclass
class RunGroup:
    """Runs shown together, evaluated with one accuracy protocol (a Table-1 section, a comparison of systems)."""

    setting: dict
    runs: list[Run]
    accuracy: Accuracy
    notes: list[str] = field(default_factory=list)


@dataclass
class Section(RunGroup):
    """Runs of one setting (dataset, method, arch, width, epochs)."""

    @property
    def title(self) -> str:
        s = self.setting
        title = f"{s['dataset']} · {s['method']} · {s['arch']} w{s['width']} · {_epochs(s['epochs'])} · recipe {s['recipe'] or 'of 0.1.0'}"
        return title + (f" (CIFAR stem padding {s['stem_padding']})" if s["stem_padding"] in (1, 2) else "")

    @property
    def pairings(self) -> list[str]:
        return sorted({r.summary.get("pairing", "reference") for r in self.runs if r.mode != "dense"})

    def cell(self, model: str, runs: list[Run]) -> Cell | None:
        return Cell(model, runs, self.accuracy) if runs else None

    def b1(self) -> Cell | None:
        return self.cell("B1", [r for r in self.runs if r.mode == "dense"])

    def rows(self) -> list[tuple[float, str, Cell | None, Cell | None]]:
        """(budget, pairing, B2 cell, Dual cell) per budget and pairing of the gated runs, by budget."""
        keys = sorted({(round(r.budget, 6), r.summary.get("pairing", "reference")) for r in self.runs if r.mode != "dense"})
        rows = []
        for budget, pairing in keys:

            def pick(mode):
                return [
                    r
                    for r in self.runs
                    if r.mode == mode and round(r.budget, 6) == budget and r.summary.get("pairing", "reference") == pairing
                ]

            rows.append((budget, pairing, self.cell("B2", pick("gated")), self.cell("Dual", pick("dual"))))
        return rows


def _epochs(n) -> str:
    return f"{n} epoch" if n == 1 else f"{n} epochs"


def accuracy_groups(members: list[Run]) -> list[tuple[Accuracy, list[Run], list[str]]]:
    """(accuracy, runs, notes): the probe for all when every run has it with one protocol, else one group per kNN setting."""
    probe, note = _probe_accuracy(members)
    if probe is not None:
        return [(probe, members, [])]
    by_knn: dict[tuple, list[Run]] = defaultdict(list)
    for run in members:
        by_knn[_knn_accuracy(run.summary["knn"]).knn].append(run)
    out = []
    for knn_runs in by_knn.values():
        notes = [note] if note else []
        if len(by_knn) > 1:
            notes.append("runs of this setting were evaluated with different kNN settings; each gets its own table")
        out.append((_knn_accuracy(knn_runs[0].summary["knn"]), knn_runs, notes))
    return out


def stem_padding(summary: dict):
    """The CIFAR stem's padding; 0.1.0 wrote none (its CIFAR stem padded by 1)."""
    return summary.get("stem_padding", 1 if summary["dataset"] in ("embedded", "cifar10", "cifar100") else None)


def build_sections(runs: list[Run]) -> list[Section]:
    """Group the Table-1 runs (B1, B2, Dual) by setting and accuracy protocol; seeds of one configuration end up in one cell."""
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for run in (r for r in runs if r.mode in TABLE1_MODES):
        s = run.summary
        # runs of another recipe or stem are other networks: never averaged as seeds of one cell
        padding = stem_padding(s)
        groups[(s["dataset"], s["method"], s["arch"], s["width"], run.epochs, s.get("recipe"), padding)].append(run)
    sections = []
    for (dataset, method, arch, width, epochs, recipe, padding), members in sorted(
        groups.items(), key=lambda kv: tuple(str(k) for k in kv[0])
    ):
        setting = {
            "dataset": dataset,
            "method": method,
            "arch": arch,
            "width": width,
            "epochs": epochs,
            "recipe": recipe,
            "stem_padding": padding,
        }
        for accuracy, group, notes in accuracy_groups(members):
            sections.append(Section(setting, group, accuracy, list(notes)))
    for section in sections:
        _check_section(section)
    return sections


def _check_section(section: Section) -> None:
    if section.b1() is None:
        section.notes.append("no mode=dense run (baseline B1) for this setting: the B1 columns and the differences to B1 stay empty")
    for run in section.runs:
        trained, planned = run.summary.get("epochs_trained"), run.summary.get("epochs")
        if trained is not None and trained != planned:
            section.notes.append(f"{run.name}: evaluated after epoch {trained} of {planned}")
    cells = [c for c in [section.b1()] + [c for row in section.rows() for c in row[2:]] if c is not None]
    for cell in cells:
        seeds = [r.seed for r in cell.runs]
        repeated = sorted({s for s in seeds if seeds.count(s) > 1}, key=str)
        if repeated:
            names = ", ".join(r.name for r in cell.runs if r.seed in repeated)
            section.notes.append(
                f"{cell.model}: runs {names} share seed(s) {', '.join(map(str, repeated))}; they are not independent repeats"
            )
    if len({(r.summary.get("data", {}).get("train_images"), r.summary.get("data", {}).get("test_images")) for r in section.runs}) > 1:
        section.notes.append("the runs of this table used different numbers of images (see the runs table); compare with care")


def _delta(cell_stats: dict | None, key: str, b1_stats: dict | None) -> float | None:
    if cell_stats is None or b1_stats is None or key not in cell_stats:
        return None
    return cell_stats[key]["mean"] - b1_stats["dense_top1"]["mean"]


def section_table(section: Section) -> dict:
    """Raw numbers of one section (what table.json holds)."""
    b1 = section.b1()
    b1_stats = b1.stats() if b1 else None
    rows = []
    for budget, pairing, b2, dual in section.rows():
        b2_stats = b2.stats() if b2 else None
        dual_stats = dual.stats() if dual else None
        if b2_stats:
            b2_stats["gated_top1_delta_b1"] = _delta(b2_stats, "gated_top1", b1_stats)
        if dual_stats:
            dual_stats["dense_top1_delta_b1"] = _delta(dual_stats, "dense_top1", b1_stats)
            dual_stats["gated_top1_delta_b1"] = _delta(dual_stats, "gated_top1", b1_stats)
        rows.append({"budget": budget, "pairing": pairing, "B2": b2_stats, "Dual": dual_stats})
    return {
        "setting": section.setting,
        "title": section.title,
        "accuracy": {"kind": section.accuracy.kind, "description": section.accuracy.description},
        "B1": b1_stats,
        "rows": rows,
        "notes": section.notes,
    }


def _fmt(stat: dict | None, key: str, scale: float = 1.0, spread: bool = True) -> str:
    if stat is None or key not in stat:
        return "–"
    s = stat[key]
    text = f"{s['mean'] * scale:.2f}"
    return text + (f" ± {s['std'] * scale:.2f}" if spread and s["std"] is not None else "")


def _fmt_delta(value: float | None) -> str:
    return "–" if value is None else f"{value:+.2f}"


def _seeds(stat: dict | None) -> str:
    return "–" if stat is None else ", ".join(str(s) for s in stat["seeds"])


def display_rows(table: dict, show_pairing: bool) -> tuple[list[str], list[list[str]]]:
    """The section's table as shown: one row per budget, like the paper's Table 1."""
    b1 = table["B1"]
    has_b2 = any(row["B2"] for row in table["rows"])
    has_dual = any(row["Dual"] for row in table["rows"])
    header = ["dataset", "B1 dense top-1", "B1 MACs (M)", "B1 seeds", "t_d"] + (["pairing"] if show_pairing else [])
    if has_b2:
        header += ["B2 gated top-1", "Δ B1", "B2 MACs red. (%)", "B2 seeds"]
    if has_dual:
        header += ["Dual dense top-1", "Δ B1", "Dual gated top-1", "Δ B1", "Dual MACs red. (%)", "Dual seeds"]
    out = []
    rows = table["rows"] or [None]
    for i, row in enumerate(rows):
        first = i == 0
        line = [
            table["setting"]["dataset"] if first else "",
            _fmt(b1, "dense_top1") if first else "",
            _fmt(b1, "dense_macs", 1e-6, spread=False) if first else "",
            _seeds(b1) if first else "",
            "–" if row is None else f"{row['budget']:g}",
        ]
        if show_pairing:
            line.append("–" if row is None else row["pairing"])
        b2 = row["B2"] if row else None
        dual = row["Dual"] if row else None
        if has_b2:
            line += [_fmt(b2, "gated_top1"), _fmt_delta(b2 and b2["gated_top1_delta_b1"]), _fmt(b2, "gated_macs_reduction_pct"), _seeds(b2)]
        if has_dual:
            line += [
                _fmt(dual, "dense_top1"),
                _fmt_delta(dual and dual["dense_top1_delta_b1"]),
                _fmt(dual, "gated_top1"),
                _fmt_delta(dual and dual["gated_top1_delta_b1"]),
                _fmt(dual, "gated_macs_reduction_pct"),
                _seeds(dual),
            ]
        out.append(line)
    return header, out


CSV_FIELDS = [
    "dataset",
    "method",
    "arch",
    "width",
    "epochs",
    "recipe",
    "stem_padding",
    "accuracy",
    "model",
    "budget",
    "pairing",
    "n",
    "seeds",
    "dense_top1_mean",
    "dense_top1_std",
    "gated_top1_mean",
    "gated_top1_std",
    "dense_top1_delta_b1",
    "gated_top1_delta_b1",
    "gated_macs_ratio_mean",
    "gated_macs_ratio_std",
    "gated_macs_reduction_pct_mean",
    "gated_macs_reduction_pct_std",
    "dense_macs_mean",
    "gated_macs_mean",
    "runs",
]


def _csv_rows(tables: list[dict]) -> list[dict]:
    rows = []
    for table in tables:
        cells = [("B1", None, None, table["B1"])] if table["B1"] else []
        for row in table["rows"]:
            cells += [(m, row["budget"], row["pairing"], row[m]) for m in ("B2", "Dual") if row[m]]
        for model, budget, pairing, st in cells:
            rec = {
                **table["setting"],
                "accuracy": table["accuracy"]["kind"],
                "model": model,
                "budget": budget,
                "pairing": pairing,
                "n": st["n"],
                "seeds": " ".join(map(str, st["seeds"])),
                "runs": " ".join(st["runs"]),
            }
            for key in ("dense_top1", "gated_top1", "gated_macs_ratio", "gated_macs_reduction_pct"):
                if key in st:
                    rec[f"{key}_mean"], rec[f"{key}_std"] = st[key]["mean"], st[key]["std"]
            for key in ("dense_macs", "gated_macs"):
                if key in st:
                    rec[f"{key}_mean"] = st[key]["mean"]
            for key in ("dense_top1_delta_b1", "gated_top1_delta_b1"):
                if key in st:
                    rec[key] = st[key]
            rows.append(rec)
    return rows


# --------------------------------------------------------------------------- pictures

COLORS = {"dual_gated": "#1f77b4", "dual_dense": "#ff7f0e", "b2": "#2ca02c", "b1": "black", "static": "#9467bd"}


def static_accuracy(run: Run, accuracy: Accuracy) -> float | None:
    """The run's latest static export (`gatedssl export --subnet static`) in the section's protocol, if it has one."""
    static = run.summary.get("static")
    if static is None:
        return None
    if accuracy.kind == "knn":
        return float(static["knn_top1"])
    probe = static.get("probe") or {}
    return float(probe["top1"]) if probe.get("protocol") == (run.summary["dense"].get("probe") or {}).get("protocol") else None


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    return path


def _spread(values: list[float], gap: float) -> list[float]:
    """Label positions near `values`, at least `gap` apart (keeps the order)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = list(values)
    for prev, cur in zip(order, order[1:]):
        out[cur] = max(out[cur], out[prev] + gap)
    return out


def _errorbar(ax, x, y, xerr=None, yerr=None, **kw):
    xerr = None if xerr is None or all(e is None for e in xerr) else [e or 0 for e in xerr]
    yerr = None if yerr is None or all(e is None for e in yerr) else [e or 0 for e in yerr]
    return ax.errorbar(x, y, xerr=xerr, yerr=yerr, capsize=3, **kw)


@literal_text
def plot_tradeoff(sections: list[Section], tables: list[dict], out_png: Path, paper_overlay: bool = False) -> Path:
    """Per section: accuracy vs gated compute (left) and accuracy vs budget (right)."""
    fig = Figure(figsize=(14, 5.6 * len(sections)), constrained_layout=True)
    axes = fig.subplots(len(sections), 2, squeeze=False)
    for (left, right), section, table in zip(axes, sections, tables):
        _tradeoff_panels(left, right, section, table, paper_overlay)
    return _save(fig, out_png)


def _tradeoff_panels(left, right, section: Section, table: dict, paper_overlay: bool) -> None:
    dataset = section.setting["dataset"]
    ylabel = section.accuracy.short
    b1 = table["B1"]
    pairings = section.pairings
    budgets_seen: set[float] = set()
    for pairing in pairings or ["reference"]:
        tag = f" ({pairing} pairing)" if len(pairings) > 1 else ""
        rows = [r for r in table["rows"] if r["pairing"] == pairing]
        dual = [(r["budget"], r["Dual"]) for r in rows if r["Dual"]]
        b2 = [(r["budget"], r["B2"]) for r in rows if r["B2"]]
        budgets_seen |= {b for b, _ in dual + b2}
        if dual:
            xs = [100 * s["gated_macs_ratio"]["mean"] for _, s in dual]
            xe = [None if s["gated_macs_ratio"]["std"] is None else 100 * s["gated_macs_ratio"]["std"] for _, s in dual]
            gy = [s["gated_top1"]["mean"] for _, s in dual]
            gye = [s["gated_top1"]["std"] for _, s in dual]
            dy = [s["dense_top1"]["mean"] for _, s in dual]
            dye = [s["dense_top1"]["std"] for _, s in dual]
            for x, g, d in zip(xs, gy, dy):  # the two passes of one network
                left.plot([x, 100], [g, d], color="0.6", linestyle=":", linewidth=1, zorder=1)
            _errorbar(left, xs, gy, xe, gye, color=COLORS["dual_gated"], marker="o", linestyle="-", label=f"Dual{tag}: gated pass")
            _errorbar(
                left,
                [100] * len(dy),
                dy,
                None,
                dye,
                color=COLORS["dual_dense"],
                marker="D",
                linestyle="none",
                label=f"Dual{tag}: dense pass (100 % MACs; dotted line to its gated pass)",
            )
            for (budget, _), x, y in zip(dual, xs, gy):
                left.annotate(
                    f"t_d={budget:g}", (x, y), textcoords="offset points", xytext=(6, -12), fontsize="small", color=COLORS["dual_gated"]
                )
            bx = [b for b, _ in dual]
            _errorbar(right, bx, dy, None, dye, color=COLORS["dual_dense"], marker="D", linestyle="-", label=f"Dual{tag}: dense pass")
            _errorbar(right, bx, gy, None, gye, color=COLORS["dual_gated"], marker="o", linestyle="-", label=f"Dual{tag}: gated pass")
        if b2:
            xs = [100 * s["gated_macs_ratio"]["mean"] for _, s in b2]
            xe = [None if s["gated_macs_ratio"]["std"] is None else 100 * s["gated_macs_ratio"]["std"] for _, s in b2]
            ys = [s["gated_top1"]["mean"] for _, s in b2]
            ye = [s["gated_top1"]["std"] for _, s in b2]
            _errorbar(left, xs, ys, xe, ye, color=COLORS["b2"], marker="s", linestyle="-", label=f"B2{tag}: gated-only training")
            for (budget, _), x, y in zip(b2, xs, ys):
                left.annotate(f"t_d={budget:g}", (x, y), textcoords="offset points", xytext=(6, 6), fontsize="small", color=COLORS["b2"])
            _errorbar(
                right,
                [b for b, _ in b2],
                ys,
                None,
                ye,
                color=COLORS["b2"],
                marker="s",
                linestyle="-",
                label=f"B2{tag}: gated-only training",
            )
    statics = [(r, static_accuracy(r, section.accuracy)) for r in section.runs]
    statics = [(r, y) for r, y in statics if y is not None]
    if statics:
        xs = [100 * float(r.summary["static"]["macs_ratio"]) for r, _ in statics]
        _errorbar(
            left,
            xs,
            [y for _, y in statics],
            color=COLORS["static"],
            marker="^",
            linestyle="none",
            label="static sub-network (gatedssl export; channels kept for a share Q of images)",
        )
        for (r, y), x in zip(statics, xs):
            left.annotate(
                f"Q={r.summary['static']['keep_rate']:.2g}",
                (x, y),
                textcoords="offset points",
                xytext=(6, 4),
                fontsize="small",
                color=COLORS["static"],
            )
    if b1:
        m, s = b1["dense_top1"]["mean"], b1["dense_top1"]["std"]
        _errorbar(
            left,
            [100],
            [m],
            None,
            [s],
            color=COLORS["b1"],
            marker="*",
            markersize=13,
            linestyle="none",
            label="B1: dense-only baseline",
            zorder=5,
        )
        right.axhline(m, color=COLORS["b1"], linestyle="--", linewidth=1.2, label="B1: dense-only baseline")
        if s is not None:
            right.axhspan(m - s, m + s, color="0.85", zorder=0)
    for budget in sorted(budgets_seen):
        left.axvline(100 * budget, color="0.75", linewidth=0.8, zorder=0)
        left.text(
            100 * budget,
            0.995,
            f" t_d={budget:g}",
            transform=left.get_xaxis_transform(),
            color="0.45",
            fontsize="x-small",
            ha="left",
            va="top",
        )

    if paper_overlay and paper.paper_rows(dataset):
        _paper_overlay(left, right, section, budgets_seen)

    left.set(xlabel="gated MACs per image (% of the dense pass)", ylabel=ylabel)
    left.set_xlim(0, 105)
    left.set_xticks(range(0, 101, 10))
    right.set(xlabel="budget t_d (target gated MACs / dense MACs)", ylabel=ylabel)
    xs = sorted(budgets_seen | ({r.budget for r in paper.paper_rows(dataset)} if paper_overlay else set()))
    if xs:
        right.set_xticks(xs)
        right.set_xlim(min(xs) - 0.05, max(xs) + 0.05)
    else:
        right.text(0.5, 0.5, "no gated runs (Dual or B2) in this setting", transform=right.transAxes, ha="center", va="center", color="0.4")
        right.set_xticks([])
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        if handles:  # ours first, published numbers after
            order = sorted(range(len(labels)), key=lambda i: labels[i].startswith(("paper", "reference")))
            ax.legend(
                [handles[i] for i in order],
                [labels[i] for i in order],
                loc="upper center",
                bbox_to_anchor=(0.5, -0.14),
                ncol=2,
                fontsize="small",
                frameon=False,
            )
    left.set_title(f"{section.title}\nAccuracy vs compute", fontsize="medium")
    right.set_title(f"{section.title}\nAccuracy vs budget: both passes of each run", fontsize="medium")


def _paper_overlay(left, right, section: Section, budgets_seen: set[float]) -> None:
    dataset = section.setting["dataset"]
    rows = paper.paper_rows(dataset)
    tag = "paper (BMVC 2023), linear probe"
    kw = dict(linestyle="--", markerfacecolor="none", linewidth=1.2)
    left.plot(
        [100 - r.dual_macs_reduction for r in rows],
        [r.dual_gated for r in rows],
        marker="o",
        color=COLORS["dual_gated"],
        label=f"{tag}: Dual gated",
        **kw,
    )
    left.plot(
        [100 - r.b2_macs_reduction for r in rows],
        [r.b2_gated for r in rows],
        marker="s",
        color=COLORS["b2"],
        label=f"{tag}: B2 gated",
        **kw,
    )
    left.plot(
        [100],
        [paper.paper_b1(dataset)],
        marker="*",
        markersize=13,
        color=COLORS["b1"],
        linestyle="none",
        markerfacecolor="none",
        label=f"{tag}: B1 dense",
    )
    bx = [r.budget for r in rows]
    right.plot(bx, [r.dual_dense for r in rows], marker="D", color=COLORS["dual_dense"], label=f"{tag}: Dual dense", **kw)
    right.plot(bx, [r.dual_gated for r in rows], marker="o", color=COLORS["dual_gated"], label=f"{tag}: Dual gated", **kw)
    right.plot(bx, [r.b2_gated for r in rows], marker="s", color=COLORS["b2"], label=f"{tag}: B2 gated", **kw)
    right.axhline(paper.paper_b1(dataset), color=COLORS["b1"], linestyle=(0, (6, 3)), linewidth=0.9, alpha=0.6, label=f"{tag}: B1 dense")
    if section.accuracy.kind == "knn" and section.accuracy.knn and section.accuracy.knn[0] == "1nn":
        ref = paper.reference_rows(dataset)
        if ref:
            rx = [r.budget for r in ref]
            label = f"reference repo, 1-NN, {paper.REFERENCE_1NN_EPOCHS} epochs"
            right.plot(
                rx,
                [r.dense for r in ref],
                marker="D",
                color=COLORS["dual_dense"],
                linestyle=":",
                markerfacecolor="none",
                label=f"{label}: dense",
            )
            right.plot(
                rx,
                [r.gated for r in ref],
                marker="o",
                color=COLORS["dual_gated"],
                linestyle=":",
                markerfacecolor="none",
                label=f"{label}: gated",
            )


def _frequency(run: Run) -> list[np.ndarray] | None:
    freq = run.summary.get("gated", {}).get("channel_frequency")
    return [np.asarray(f, dtype=float) for f in freq] if freq else None


def channel_shares(freq: list[np.ndarray]) -> np.ndarray:
    """(blocks, 3): share of channels always on, input-dependent, always off."""
    out = []
    for f in freq:
        on = float(np.mean(f >= ALWAYS_ON))
        off = float(np.mean(f <= ALWAYS_OFF))
        out.append((on, 1.0 - on - off, off))
    return np.asarray(out)


@literal_text
def plot_channels(run: Run, out_png: Path) -> Path:
    """Stacked bars of channel kinds per gated block, and the heat map of per-channel frequency."""
    freq = _frequency(run)
    blocks = len(freq)
    shares = channel_shares(freq) * 100
    fig = Figure(figsize=(14, 1.6 + 0.42 * max(blocks, 4)), layout="constrained")
    bars_ax, heat_ax = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 2]})
    labels = [f"block {i + 1} ({len(f)} ch)" for i, f in enumerate(freq)]
    y = np.arange(blocks)
    left = np.zeros(blocks)
    for k, (name, color) in enumerate(
        (("always on (≥ 99 % of images)", "#1b7837"), ("input-dependent", "#f1a340"), ("always off (≤ 1 % of images)", "#bdbdbd"))
    ):
        bars_ax.barh(y, shares[:, k], left=left, color=color, label=name, edgecolor="white", linewidth=0.5)
        for yi, (l0, w) in enumerate(zip(left, shares[:, k])):
            if w >= 9:
                bars_ax.text(l0 + w / 2, yi, f"{w:.0f}", ha="center", va="center", fontsize="x-small", color="white" if k == 0 else "black")
        left += shares[:, k]
    bars_ax.set_yticks(y, labels)
    bars_ax.invert_yaxis()
    bars_ax.set_xlim(0, 100)
    bars_ax.set(xlabel="share of the block's gated channels (%)", title="Channel behaviour over the test set")
    fig.legend(*bars_ax.get_legend_handles_labels(), loc="outside lower left", ncol=3, fontsize="small", frameon=False)

    width = max(len(f) for f in freq)
    grid = np.full((blocks, width), np.nan)
    for i, f in enumerate(freq):
        grid[i, : len(f)] = np.sort(f)[::-1]
    cmap = colormaps["viridis"].with_extremes(bad="white")
    im = heat_ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    heat_ax.set_yticks(y, labels)
    heat_ax.set(
        xlabel="channel rank within the block (sorted by frequency; blank: block has fewer channels)",
        title="Per-channel activation frequency",
    )
    fig.colorbar(im, ax=heat_ax, label="share of test images\nwith the channel on", fraction=0.04, pad=0.01)
    g = run.summary["gated"]
    fig.suptitle(
        f"{run.name}: {MODE_LABEL.get(run.mode, run.mode)}, t_d={run.budget:g}, seed {run.seed}; "
        f"gated MACs {100 * g['macs_ratio']:.1f} % of dense",
        fontsize="medium",
    )
    return _save(fig, out_png)


@literal_text
def plot_per_class(run: Run, out_png: Path) -> Path:
    """Mean gated MACs ratio per test class, sorted, drawn from the budget line."""
    per_class = run.summary["gated"]["macs_ratio_per_class"]
    items = sorted(per_class.items(), key=lambda kv: kv[1])
    names = [k for k, _ in items]
    values = np.asarray([v for _, v in items], dtype=float)
    budget = run.budget
    mean = float(run.summary["gated"]["macs_ratio"])
    lo, hi = min(values.min(), budget, mean), max(values.max(), budget, mean)
    pad = max(0.15 * (hi - lo), 0.01)
    colors = ["#d6604d" if v > budget else "#4393c3" for v in values]
    title = (
        f"{run.name}: gated compute per class ({MODE_LABEL.get(run.mode, run.mode)}, t_d={budget:g}, seed {run.seed})\n"
        "bars start at the budget: red above it, blue below"
    )
    n = len(names)
    horizontal = n > 25
    if horizontal:
        fig = Figure(figsize=(8, 1.8 + 0.2 * n), layout="constrained")
        ax = fig.subplots()
        ax.barh(range(n), values - budget, left=budget, color=colors)
        ax.set_yticks(range(n), names, fontsize="small")
        ax.set_ylim(-0.6, n - 0.4)
        ax.axvline(budget, color="black", linestyle="--", linewidth=1.2, label=f"budget t_d = {budget:g}")
        ax.axvline(mean, color="0.4", linestyle=":", linewidth=1.2, label=f"mean over the test set = {mean:.3f}")
        ax.set_xlim(lo - pad, hi + pad)
        ax.set(xlabel="gated MACs / dense MACs (mean over the class's test images)", ylabel="class (sorted)")
        fig.legend(loc="outside lower center", ncol=2, frameon=False, fontsize="small")
    else:
        fig = Figure(figsize=(max(7.0, 1.5 + 0.55 * n), 5.2), constrained_layout=True)
        ax = fig.subplots()
        ax.bar(range(n), values - budget, bottom=budget, color=colors)
        ax.set_xticks(range(n), names, rotation=40, ha="right", rotation_mode="anchor")
        ax.axhline(budget, color="black", linestyle="--", linewidth=1.2, label=f"budget t_d = {budget:g}")
        ax.axhline(mean, color="0.4", linestyle=":", linewidth=1.2, label=f"mean over the test set = {mean:.3f}")
        ax.set_ylim(lo - pad, hi + pad)
        ax.set(ylabel="gated MACs / dense MACs\n(mean over the class's test images)", xlabel="class (sorted by compute)")
        ax.legend(loc="best", fontsize="small", framealpha=0.9)
    ax.set_title(title, fontsize="medium")
    ax.grid(True, axis="x" if horizontal else "y", alpha=0.3)
    return _save(fig, out_png)


# --------------------------------------------------------------------------- the documents


_NUMBER = re.compile(r"^[+-]?\d[\d.]*( ± [\d.]+)?( s| min)?$|^–$")


REPORT_PNGS = ("tradeoff", "compare", "channels_", "per_class_", "curves_")  # the names the report gives its pictures


class _Doc:
    """The same content as Markdown and as HTML."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.md: list[str] = []
        self.html: list[str] = []
        self.images: set[str] = set()

    def heading(self, level: int, text: str, anchor: str | None = None) -> None:
        self.md.append(f"{'#' * level} {text}\n")
        ident = f' id="{html.escape(anchor)}"' if anchor else ""
        self.html.append(f"<h{level}{ident}>{html.escape(text)}</h{level}>")

    def para(self, text: str) -> None:
        self.md.append(text + "\n")
        self.html.append(f"<p>{html.escape(text)}</p>")

    def bullets(self, items: list[str]) -> None:
        if items:
            self.md.append("\n".join(f"- {i}" for i in items) + "\n")
            self.html.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>")

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        def md_cell(c):
            return str(c).replace("|", "\\|")

        lines = ["| " + " | ".join(md_cell(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows]
        self.md.append("\n".join(lines) + "\n")
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join(
            "<tr>" + "".join(f"<td{' class=num' if _NUMBER.match(str(c)) else ''}>{html.escape(str(c))}</td>" for c in row) + "</tr>"
            for row in rows
        )
        self.html.append(f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>')

    def image(self, png: Path, alt: str) -> None:
        self.images.add(png.name)
        self.md.append(f"![{alt}]({png.name})\n")
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        self.html.append(
            f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(alt)}"><figcaption>{html.escape(alt)}</figcaption></figure>'
        )

    def open_details(self, summary: str) -> None:
        self.md.append(f"#### {summary}\n")
        self.html.append(f"<details><summary>{html.escape(summary)}</summary>")

    def close_details(self) -> None:
        self.html.append("</details>")

    def write(self, title: str) -> tuple[Path, Path]:
        md_path, html_path = self.out_dir / "report.md", self.out_dir / "report.html"
        md_path.write_text("\n".join(self.md))
        page = (
            f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body>\n" + "\n".join(self.html) + "\n</body></html>\n"
        )
        html_path.write_text(page)
        return md_path, html_path


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


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1,h2,h3{line-height:1.2} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em} th,td{border:1px solid #ccc;padding:.3em .6em}
th{background:#f2f2f2;text-align:left} td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tbody tr:nth-child(even){background:#fafafa} .scroll{overflow-x:auto}
figure{margin:1em 0} img{max-width:100%;height:auto;border:1px solid #eee} figcaption{font-size:.85em;color:#555}
details{margin:.5em 0;border:1px solid #ddd;border-radius:4px;padding:.3em .8em} summary{cursor:pointer;font-weight:600}
"""


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
        f"Method: {s['method']}, {s['arch']} width {s['width']}, {_epochs(s['epochs'])}, batch size "
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
                f"{acc.value(run, 'dense'):.2f}" if "dense" in _passes(run) else "–",
                f"{acc.value(run, 'gated'):.2f}" if run.gated_pass else "–",
                f"{g['macs_ratio']:.3f}" if run.gated_pass else "–",
                _static_cell(run, acc),
                "–" if seconds is None else (f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.0f} s"),
                str(run.path),
            ]
        )
    return header, rows


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

    from . import compare  # imports this module: imported here, not at the top

    sections = build_sections(found.runs)
    tables = [section_table(s) for s in sections]
    groups = compare.compare_groups(found.runs)
    compared = [compare.compare_table(g) for g in groups] if compare.shown(found.runs) else []
    drawn_before = _pictures_drawn_before(out)  # read before table.json is written again

    def write_table(pictures: set[str]) -> None:
        (out / "table.json").write_text(
            json.dumps(
                {
                    "sections": tables,
                    "compare": compared,
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
        writer.writerows(_csv_rows(tables))

    # a run's accuracy is its Table-1 section's; slimmable and post-hoc runs have none there, so their comparison group's
    accuracy_of = {id(r): g.accuracy for g in groups for r in g.runs} | {id(r): s.accuracy for s in sections for r in s.runs}
    doc = _Doc(out)
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

    doc.heading(2, "Runs")
    header, rows = _runs_table(found.runs, accuracy_of)
    doc.table(header, rows)
    for run in found.runs:
        doc.open_details(
            f"{run.name}: {MODE_LABEL.get(run.mode, run.mode)}" + (f", t_d={run.budget:g}" if run.has_budget else "") + f", seed {run.seed}"
        )
        if run.gated_pass and _frequency(run):
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
