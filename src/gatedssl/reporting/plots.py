"""The report's pictures: the trade-off (accuracy against compute and budget, per Table-1 section), and per run the
gates' channel behaviour and the gated compute per class. Figures save themselves: no pyplot, no global backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from . import paper
from .literal import literal_text
from .runs import MODE_LABEL, Run
from .table import Section, static_accuracy

COLORS = {"dual_gated": "#1f77b4", "dual_dense": "#ff7f0e", "b2": "#2ca02c", "b1": "black", "static": "#9467bd"}
ALWAYS_ON, ALWAYS_OFF = 0.99, 0.01  # channel frequency thresholds of the channel picture


def save_figure(fig: Figure, path: Path) -> Path:
    """bbox_inches="tight": legends placed below an axis (long system names) are kept whole, not clipped."""
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


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
    return save_figure(fig, out_png)


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
            label = f"B2{tag}: gated-only training"
            _errorbar(left, xs, ys, xe, ye, color=COLORS["b2"], marker="s", linestyle="-", label=label)
            for (budget, _), x, y in zip(b2, xs, ys):
                left.annotate(f"t_d={budget:g}", (x, y), textcoords="offset points", xytext=(6, 6), fontsize="small", color=COLORS["b2"])
            _errorbar(right, [b for b, _ in b2], ys, None, ye, color=COLORS["b2"], marker="s", linestyle="-", label=label)
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
        _paper_overlay(left, right, section)

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


def _paper_overlay(left, right, section: Section) -> None:
    dataset = section.setting["dataset"]
    rows = paper.paper_rows(dataset)
    tag = "paper (BMVC 2023), linear probe"
    kw = dict(linestyle="--", markerfacecolor="none", linewidth=1.2)
    for x, y, marker, color, name in (
        ([100 - r.dual_macs_reduction for r in rows], [r.dual_gated for r in rows], "o", COLORS["dual_gated"], "Dual gated"),
        ([100 - r.b2_macs_reduction for r in rows], [r.b2_gated for r in rows], "s", COLORS["b2"], "B2 gated"),
    ):
        left.plot(x, y, marker=marker, color=color, label=f"{tag}: {name}", **kw)
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
            for name, y, marker, color in (
                ("dense", [r.dense for r in ref], "D", COLORS["dual_dense"]),
                ("gated", [r.gated for r in ref], "o", COLORS["dual_gated"]),
            ):
                right.plot(rx, y, marker=marker, color=color, linestyle=":", markerfacecolor="none", label=f"{label}: {name}")


def channel_frequency(run: Run) -> list[np.ndarray] | None:
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
    freq = channel_frequency(run)
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
    return save_figure(fig, out_png)


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
    return save_figure(fig, out_png)
