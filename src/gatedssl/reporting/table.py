"""The Table-1 model: runs grouped by setting into sections, cells of seeds, their statistics, and the rows of
table.json, table.csv and the displayed table (the shape of the paper's Table 1)."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from dataclasses import dataclass, field

from .runs import Run, stem_padding

TABLE1_MODES = ("dense", "gated", "dual")  # the systems of the paper's Table 1; the others appear in "Systems compared"
PROBE_PROTOCOLS = {  # gatedssl.evaluation.probe's protocols, in words
    "fast": "a linear head trained on fixed centre-crop features; for comparing runs of this library with each other",
    "paper": "a linear head trained on freshly augmented images through the frozen backbone; the paper's linear evaluation",
}


def mean_std(values: list[float]) -> dict:
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
    have = [all("probe" in r.summary.get(p, {}) for p in r.passes) for r in runs]
    if not any(have):
        return None, None
    if not all(have):
        return None, (
            f"{sum(have)} of {len(runs)} runs carry linear-probe results; kNN top-1 is shown for all "
            "so that every number of the table comes from one protocol"
        )
    probes = [r.summary[p]["probe"] for r in runs for p in r.passes]
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
            out[f"{which}_top1"] = mean_std([self.accuracy.value(r, which) for r in self.runs])
            out[f"{which}_macs"] = mean_std([r.summary[which]["macs"] for r in self.runs])
            if self.accuracy.kind == "probe":
                out[f"{which}_probe_top1_std"] = [r.summary[which]["probe"].get("top1_std") for r in self.runs]
        if "gated" in self.passes():
            ratios = [float(r.summary["gated"]["macs_ratio"]) for r in self.runs]
            out["gated_macs_ratio"] = mean_std(ratios)
            out["gated_macs_reduction_pct"] = mean_std([100.0 * (1.0 - v) for v in ratios])
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
        title = (
            f"{s['dataset']} · {s['method']} · {s['arch']} w{s['width']} · {epochs_text(s['epochs'])} · recipe {s['recipe'] or 'of 0.1.0'}"
        )
        return title + (f" (CIFAR stem padding {s['stem_padding']})" if s["stem_padding"] in (1, 2) else "")

    @property
    def pairings(self) -> list[str]:
        return sorted({r.pairing for r in self.runs if r.mode != "dense"})

    def cell(self, model: str, runs: list[Run]) -> Cell | None:
        return Cell(model, runs, self.accuracy) if runs else None

    def b1(self) -> Cell | None:
        return self.cell("B1", [r for r in self.runs if r.mode == "dense"])

    def rows(self) -> list[tuple[float, str, Cell | None, Cell | None]]:
        """(budget, pairing, B2 cell, Dual cell) per budget and pairing of the gated runs, by budget."""
        by_key: dict[tuple, list[Run]] = defaultdict(list)
        for run in self.runs:
            if run.mode != "dense":
                by_key[(round(run.budget, 6), run.pairing)].append(run)
        rows = []
        for (budget, pairing), runs in sorted(by_key.items()):
            by_mode = {mode: [r for r in runs if r.mode == mode] for mode in ("gated", "dual")}
            rows.append((budget, pairing, self.cell("B2", by_mode["gated"]), self.cell("Dual", by_mode["dual"])))
        return rows


def epochs_text(n) -> str:
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


def csv_rows(tables: list[dict]) -> list[dict]:
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


def static_accuracy(run: Run, accuracy: Accuracy) -> float | None:
    """The run's latest static export (`gatedssl export --subnet static`) in the section's protocol, if it has one."""
    static = run.summary.get("static")
    if static is None:
        return None
    if accuracy.kind == "knn":
        return float(static["knn_top1"])
    probe = static.get("probe") or {}
    return float(probe["top1"]) if probe.get("protocol") == (run.summary["dense"].get("probe") or {}).get("protocol") else None
