"""Systems compared: every sub-network of every system (B1, B2, Dual, slimmable, post-hoc) in one table and one picture,
with what each system cost to train, so that the paper's claim "two networks for the price of one, no fine-tuning"
can be read off: Dual's cost for its two networks against B1 + post-hoc gating and against slimmable SSL.

Part of the trade-off report (report.py calls it); reads only the runs' summary.json, like the rest of the report.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .document import Document
from .literal import literal_text
from .plots import COLORS, save_figure
from .runs import SYSTEM_LABEL, Run, stem_padding
from .table import Accuracy, RunGroup, accuracy_groups, mean_std

SYSTEM_ORDER = ("dense", "dual", "posthoc", "slimmable", "gated")
STYLE = {  # colour, marker; B1, B2 and Dual as in the trade-off picture
    "dense": (COLORS["b1"], "*"),
    "dual": (COLORS["dual_gated"], "o"),
    "gated": (COLORS["b2"], "s"),
    "posthoc": ("#d62728", "v"),
    "slimmable": ("#9467bd", "D"),
}
COMPUTE_KEYS = ("executed_flops", "mask_flops", "seconds")
CLAIM = (
    "What this measures: the paper's claim is 'two networks for the price of one, no fine-tuning': one Dual run yields "
    "a dense and a gated network. Its training compute is set here beside B1 followed by post-hoc gating of B1's encoder "
    "(two networks as well, paid for by B1's pretraining plus the post-hoc run: the 'with pretraining' figures) and beside "
    "slimmable SSL (one run, one network per width). Executed PFLOP is what the hardware did (a masked gated pass costs "
    "as much as a dense one); mask-implied PFLOP is what the masks would cost if skipped channels were really skipped; "
    "wall time is on the device named. Accuracy and MACs per image say what each network is worth once trained."
)


@dataclass
class Group(RunGroup):
    """Runs of one dataset and network (arch, width, stem): one table, one panel."""

    @property
    def title(self) -> str:
        s = self.setting
        pad = f" (CIFAR stem padding {s['stem_padding']})" if s["stem_padding"] in (1, 2) else ""
        return f"{s['dataset']} · {s['arch']} w{s['width']}{pad}"


def shown(runs: list[Run]) -> bool:
    """The comparison says something only when the runs hold at least two systems."""
    return len({r.mode for r in runs}) >= 2


def compare_groups(runs: list[Run]) -> list[Group]:
    """Group all runs by dataset and network; method, epochs and recipe are columns, since post-hoc trains far fewer epochs than B1."""
    by_net: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        s = run.summary
        by_net[(s["dataset"], s["arch"], s["width"], stem_padding(s))].append(run)
    groups = []
    for (dataset, arch, width, padding), members in sorted(by_net.items(), key=lambda kv: tuple(str(k) for k in kv[0])):
        setting = {"dataset": dataset, "arch": arch, "width": width, "stem_padding": padding}
        for accuracy, group, notes in accuracy_groups(members):
            groups.append(Group(setting, group, accuracy, list(notes)))
    return groups


def _system_key(run: Run) -> tuple:
    """Runs with one key are seeds of one system configuration."""
    s = run.summary
    widths = tuple(float(w) for w in s.get("widths", [])) if run.mode == "slimmable" else None
    budget = round(run.budget, 6) if run.has_budget else None
    pairing = run.pairing if run.has_budget else None
    return (run.mode, s["method"], run.epochs, s.get("recipe"), budget, widths, pairing)


def _sort_key(key: tuple) -> tuple:
    mode = key[0]
    return (SYSTEM_ORDER.index(mode) if mode in SYSTEM_ORDER else len(SYSTEM_ORDER), mode) + tuple((k is None, str(k)) for k in key[1:])


def _total(tc: dict | None) -> dict | None:
    """A post-hoc run's cost including the pretraining of the encoder it gated; None when that pretraining is unknown."""
    if not tc or not tc.get("pretraining"):
        return None
    return tc.get("total") or {k: tc[k] + tc["pretraining"][k] for k in COMPUTE_KEYS}


def _compute_stats(parts: list[dict | None]) -> dict | None:
    """Mean ± std of each cost over the seeds; None unless every run states it (an old summary has none)."""
    if not parts or any(not p for p in parts):
        return None
    out = {k: mean_std([p[k] for p in parts]) for k in COMPUTE_KEYS}
    out["devices"] = sorted({str(p["device"]) for p in parts if "device" in p})
    return out


def _accuracy(accuracy: Accuracy, run: Run, which: str) -> float | None:
    res = run.summary[which]
    return (res.get("probe") or {}).get("top1") if accuracy.kind == "probe" else res.get("knn_top1")


def compare_table(group: Group) -> dict:
    """Raw numbers of one group (what table.json's `compare` holds): per system, per sub-network, and training compute."""
    by_key: dict[tuple, list[Run]] = defaultdict(list)
    for run in group.runs:
        by_key[_system_key(run)].append(run)
    systems = []
    for key in sorted(by_key, key=_sort_key):
        runs = by_key[key]
        mode, method, epochs, recipe, budget, widths, pairing = key
        subnets = []
        for name in runs[0].passes:
            top1 = [_accuracy(group.accuracy, r, name) for r in runs]
            subnets.append(
                {
                    "name": name,
                    "top1": mean_std(top1) if None not in top1 else None,
                    "macs": mean_std([r.summary[name]["macs"] for r in runs]),
                    "macs_ratio": mean_std([r.summary[name]["macs_ratio"] for r in runs]),
                }
            )
        own = [r.summary.get("training_compute") for r in runs]
        system = {
            "mode": mode,
            "label": SYSTEM_LABEL.get(mode, mode),
            "method": method,
            "epochs": epochs,
            "recipe": recipe,
            "budget": budget,
            "widths": list(widths) if widths is not None else None,
            "pairing": pairing,
            "n": len(runs),
            "seeds": [r.seed for r in runs],
            "names": [r.name for r in runs],
            "runs": [str(r.path) for r in runs],
            "subnets": subnets,
            "training_compute": _compute_stats(own),
        }
        if mode == "posthoc":
            system["init_from"] = sorted({str(r.summary.get("init_from")) for r in runs})
            system["pretraining"] = _compute_stats([(tc or {}).get("pretraining") for tc in own])
            system["total"] = _compute_stats([_total(tc) for tc in own])
        systems.append(system)
    return {
        "setting": group.setting,
        "title": group.title,
        "accuracy": {"kind": group.accuracy.kind, "short": group.accuracy.short, "description": group.accuracy.description},
        "systems": systems,
        "notes": group.notes,
    }


# --------------------------------------------------------------------------- shown


def _num(stat: dict | None, fmt: str = ".2f", scale: float = 1.0) -> str:
    if stat is None:
        return "–"
    text = format(stat["mean"] * scale, fmt)
    return text + (f" ± {format(stat['std'] * scale, fmt)}" if stat["std"] is not None and stat["std"] > 0 else "")


def _duration(stat: dict | None) -> str:
    if stat is None:
        return "–"
    mean, std = stat["mean"], stat["std"] or 0.0
    unit, scale = ("h", 3600) if mean >= 7200 else ("min", 60) if mean >= 120 else ("s", 1)
    fmt = ".0f" if unit == "s" else ".1f"
    return format(mean / scale, fmt) + (f" ± {format(std / scale, fmt)}" if std > 0 else "") + f" {unit}"


def _cost(system: dict, key: str) -> str:
    """One training-compute cell; post-hoc shows its own cost and the total with the pretraining of its encoder."""

    def one(stats):
        if stats is None:
            return "–"
        return _duration(stats["seconds"]) if key == "seconds" else _num(stats[key], ".3g", 1e-15)

    own = one(system["training_compute"])
    if system["mode"] != "posthoc" or system["training_compute"] is None:
        return own
    return f"{own} own; " + (f"{one(system['total'])} with pretraining" if system["total"] else "pretraining unknown")


def _device(system: dict) -> str:
    tc = system["training_compute"]
    if tc is None:
        return "–"
    text = ", ".join(tc["devices"]) or "–"
    pre = system.get("pretraining")
    return text + (f" (pretraining: {', '.join(pre['devices'])})" if pre and pre["devices"] and pre["devices"] != tc["devices"] else "")


def _setting_cell(system: dict) -> str:
    if system["widths"] is not None:
        return "widths " + ", ".join(f"{w:g}" for w in system["widths"])
    if system["budget"] is None:
        return "–"
    return f"{system['budget']:g}" + ("" if system["pairing"] in (None, "reference") else f" ({system['pairing']} pairing)")


def _tag(system: dict) -> str:
    """What tells configurations of one system apart: budget or widths, and epochs."""
    setting = _setting_cell(system)
    return ("" if setting == "–" else f"t_d={setting}, " if system["widths"] is None else f"{setting}, ") + f"{system['epochs']} epochs"


def display_rows(table: dict) -> tuple[list[str], list[list[str]]]:
    """One row per sub-network; a system's own cells (setting, training compute, seeds) on its first row only."""
    header = [
        "system",
        "t_d / widths",
        "training",
        "sub-network",
        "top-1",
        "MACs (M)",
        "MACs vs dense",
        "training compute: executed PFLOP",
        "mask-implied PFLOP",
        "wall time",
        "device",
        "seed(s)",
    ]
    rows = []
    for system in table["systems"]:
        training = f"{system['method']}, {system['epochs']} epoch{'s' if system['epochs'] != 1 else ''}" + (
            f", recipe {system['recipe']}" if system["recipe"] else ""
        )
        own = [
            system["label"],
            _setting_cell(system),
            training,
        ]
        cost = [_cost(system, k) for k in COMPUTE_KEYS] + [_device(system), ", ".join(map(str, system["seeds"]))]
        for i, sub in enumerate(system["subnets"]):
            first = i == 0
            rows.append(
                (own if first else ["", "", ""])
                + [sub["name"], _num(sub["top1"]), _num(sub["macs"], ".2f", 1e-6), _num(sub["macs_ratio"], ".3f")]
                + (cost if first else [""] * len(cost))
            )
    return header, rows


def cost_sentence(table: dict) -> str:
    """Each system's training cost for the networks it yields, side by side (post-hoc with its encoder's pretraining)."""
    parts = []
    for system in table["systems"]:
        nets = len(system["subnets"])
        stats = system["total"] if system["mode"] == "posthoc" else system["training_compute"]
        name = {"dense": "B1", "gated": "B2", "dual": "Dual", "posthoc": "B1 + post-hoc", "slimmable": "slimmable"}.get(
            system["mode"], system["mode"]
        )
        if stats is None:
            cost = "training compute unknown"
        else:
            cost = (
                f"{_num(stats['executed_flops'], '.3g', 1e-15)} executed PFLOP "
                f"({_num(stats['mask_flops'], '.3g', 1e-15)} mask-implied) in {_duration(stats['seconds'])}"
            )
        parts.append(f"{name} ({_tag(system)}): {cost} for {nets} network{'s' if nets != 1 else ''}")
    return "Training cost per system — " + "; ".join(parts) + "."


@literal_text
def plot_compare(tables: list[dict], out_png: Path) -> Path:
    """Accuracy against MACs of every sub-network of every system, one panel per group; filled: the dense network."""
    fig = Figure(figsize=(10, 5.8 * len(tables)), constrained_layout=True)
    axes = fig.subplots(len(tables), 1, squeeze=False)[:, 0]
    for ax, table in zip(axes, tables):
        handles = []
        for system in table["systems"]:
            color, marker = STYLE.get(system["mode"], ("0.4", "x"))
            points = sorted((s for s in system["subnets"] if s["top1"] is not None), key=lambda s: s["macs_ratio"]["mean"])
            xs = [100 * s["macs_ratio"]["mean"] for s in points]
            ys = [s["top1"]["mean"] for s in points]
            size = 14 if marker == "*" else 7
            ax.plot(xs, ys, color=color, linewidth=1.3, zorder=2)
            for s, x, y in zip(points, xs, ys):
                dense = s["name"] == "dense"
                std = s["top1"]["std"]
                ax.errorbar(
                    [x],
                    [y],
                    yerr=None if std is None else [std],
                    color=color,
                    marker=marker,
                    markersize=size,
                    markerfacecolor=color if dense else "white",
                    linestyle="none",
                    capsize=3,
                    zorder=3,
                )
                if not dense:
                    text = s["name"] if system["mode"] == "slimmable" else f"t_d={system['budget']:g}"
                    ax.annotate(text, (x, y), textcoords="offset points", xytext=(6, -12), fontsize="x-small", color=color)
            face = color if [s["name"] for s in system["subnets"]] == ["dense"] else "white"
            handles.append(
                Line2D(
                    [], [], color=color, marker=marker, markersize=size, markerfacecolor=face, label=f"{system['label']}, {_tag(system)}"
                )
            )
        handles += [
            Line2D([], [], color="0.3", marker="o", linestyle="none", label="filled: the dense (full) network"),
            Line2D([], [], color="0.3", marker="o", markerfacecolor="white", linestyle="none", label="hollow: a lighter sub-network"),
        ]
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, fontsize="small", frameon=False)
        ax.set(xlabel="MACs per image (% of the dense network)", ylabel=table["accuracy"]["short"])
        ax.set_xlim(0, 105)
        ax.set_xticks(range(0, 101, 10))
        ax.grid(True, alpha=0.3)
        ax.set_title(f"{table['title']}\nAccuracy vs compute: every sub-network of every system", fontsize="medium")
    return save_figure(fig, out_png)


CSV_FIELDS = [
    *("dataset", "arch", "width", "stem_padding", "accuracy", "system", "label", "method", "epochs", "recipe"),
    *("budget", "widths", "pairing", "subnet", "n", "seeds", "top1_mean", "top1_std", "macs_mean", "macs_ratio_mean", "macs_ratio_std"),
    *(f"{part}{k}_mean" for part in ("", "pretraining_", "total_") for k in COMPUTE_KEYS),
    *("devices", "runs"),
]


def write_csv(tables: list[dict], path: Path) -> Path:
    """compare.csv: one row per sub-network of each system, raw values."""
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for table in tables:
            for system in table["systems"]:
                base = {
                    **table["setting"],
                    "accuracy": table["accuracy"]["kind"],
                    "system": system["mode"],
                    **{k: system[k] for k in ("label", "method", "epochs", "recipe", "budget", "pairing", "n")},
                    "widths": " ".join(f"{w:g}" for w in system["widths"] or []),
                    "seeds": " ".join(map(str, system["seeds"])),
                    "runs": " ".join(system["runs"]),
                    "devices": " ".join((system["training_compute"] or {}).get("devices", [])),
                }
                for part, stats in (
                    ("", system["training_compute"]),
                    ("pretraining_", system.get("pretraining")),
                    ("total_", system.get("total")),
                ):
                    for k in COMPUTE_KEYS:
                        base[f"{part}{k}_mean"] = stats[k]["mean"] if stats else None
                for sub in system["subnets"]:
                    writer.writerow(
                        {
                            **base,
                            "subnet": sub["name"],
                            "top1_mean": sub["top1"] and sub["top1"]["mean"],
                            "top1_std": sub["top1"] and sub["top1"]["std"],
                            "macs_mean": sub["macs"]["mean"],
                            "macs_ratio_mean": sub["macs_ratio"]["mean"],
                            "macs_ratio_std": sub["macs_ratio"]["std"],
                        }
                    )
    return path


def add_section(doc: Document, tables: list[dict], out_dir: Path) -> None:
    """The "Systems compared" section of report.md/html: the claim, one table per group, the picture."""
    doc.heading(2, "Systems compared", anchor="systems-compared")
    doc.para(CLAIM)
    doc.para(
        "One row per sub-network; runs of one system configuration (mode, budget or widths, method, epochs, recipe) are "
        "grouped as seeds: mean ± sample standard deviation where there are several. Training compute is per run (all its "
        "sub-networks together), on the system's first row; '–': the summary predates training-compute accounting. "
        "Raw numbers: compare.csv and table.json's 'compare'."
    )
    for table in tables:
        doc.heading(3, table["title"])
        doc.para(f"Accuracy: {table['accuracy']['description']}.")
        doc.table(*display_rows(table))
        doc.para(cost_sentence(table))
        if table["notes"]:
            doc.bullets([f"Note: {n}" for n in table["notes"]])
    doc.image(
        plot_compare(tables, out_dir / "compare.png"),
        "accuracy vs MACs of every sub-network of every system (filled: dense network, hollow: lighter sub-network)",
    )
