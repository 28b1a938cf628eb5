"""Training curves of one run from its metrics.jsonl: losses, gated MACs vs budget, block density, online kNN."""

from __future__ import annotations

import json
from pathlib import Path

from matplotlib.figure import Figure  # a Figure saves to a file itself: no pyplot, no global backend to choose
from matplotlib.ticker import MaxNLocator

from .literal import literal_text


def read_metrics(path: Path) -> list[dict]:
    """The whole records of metrics.jsonl: a torn line, one that is not a JSON object or has no whole epoch is skipped, as the trainer does."""
    records = []
    for line in Path(path).read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("epoch"), int) and not isinstance(record["epoch"], bool):
            records.append(record)
    return records


def _number(value, default: float) -> float:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else default


NOT_LOSS_TERMS = {"epoch", "loss", "macs_ratio", "lr", "epoch_seconds", "images_per_second", "eval_seconds"}
LOSS_LABELS = {"ssl": "SSL loss", "distill": "distillation loss"}


@literal_text
def plot_training_curves(metrics_path: Path, out_png: Path, budget: float | None = None, title: str = "") -> Path:
    """Panels over epochs (losses; gated MACs and block density unless dense-only; kNN with --eval-every); returns the PNG path."""
    records = read_metrics(metrics_path)
    epochs = [r["epoch"] for r in records]
    gated = any(_number(r.get("macs_ratio"), 1.0) != 1.0 for r in records)  # a dense-only run has no gated panels to show
    evaluated = [r for r in records if any(k.startswith("knn_") for k in r)]
    panels = (3 if gated else 1) + bool(evaluated)
    fig = Figure(figsize=(5 * panels, 4.2) if panels > 1 else (6, 4.2), constrained_layout=True)
    axes = fig.subplots(1, panels, squeeze=False)
    axes = axes[0]
    if evaluated:
        ax = axes[-1]
        for key in dict.fromkeys(k for r in evaluated for k in r if k.startswith("knn_")):  # one line per sub-network, in run order
            ax.plot([r["epoch"] for r in evaluated if key in r], [r[key] for r in evaluated if key in r], marker="o", label=key[4:])
        ax.set(xlabel="epoch", ylabel="kNN top-1 (%)", title="kNN during training (subset)")
        ax.legend()
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(0.5, max(epochs) + 0.5)

    ax = axes[0]
    terms = dict.fromkeys(
        k for r in records for k, v in r.items() if isinstance(v, float) and k not in NOT_LOSS_TERMS and not k.startswith("knn_")
    )
    for key in terms:  # whatever terms the objective returned (ssl, budget, bound, distill, ...)
        values = [r.get(key, 0.0) for r in records]
        if any(v != 0 for v in values):
            ax.plot(epochs, values, marker=".", label=LOSS_LABELS.get(key, f"{key} loss"))
    if gated:  # symlog: the budget terms are orders of magnitude below the SSL loss, which may be negative (SimSiam)
        ax.set_yscale("symlog", linthresh=1e-4)
    ax.set(xlabel="epoch", ylabel="loss (mean over epoch" + (", symlog scale)" if gated else ")"), title="Loss terms")
    ax.legend()
    if not gated:
        return _save(fig, out_png, title)

    ax = axes[1]
    ax.plot(epochs, [_number(r.get("macs_ratio"), float("nan")) for r in records], marker=".", label="gated pass (training masks)")
    if budget is not None:
        ax.axhline(budget, color="k", linestyle="--", linewidth=1, label=f"budget t_d = {budget:g}")
    ax.set(xlabel="epoch", ylabel="gated MACs / dense MACs", title="Compute of the gated pass", ylim=(0, 1.05))
    ax.legend()

    ax = axes[2]
    densities = [r["density"] if isinstance(r.get("density"), list) else [] for r in records]
    for block in range(max(len(d) for d in densities)):
        ax.plot(
            epochs, [_number(d[block], float("nan")) if block < len(d) else float("nan") for d in densities], label=f"block {block + 1}"
        )
    ax.set(xlabel="epoch", ylabel="share of channels on", title="Density per gated block", ylim=(0, 1.05))
    ax.legend(ncol=2, fontsize="small")

    return _save(fig, out_png, title)


def _save(fig, out_png: Path, title: str) -> Path:
    if title:
        fig.suptitle(title)
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=110)
    return out_png
