"""Why a Dual run's dense network trails B1 (issue 21): which loss term pulls on the shared convolutions, and how
far the gated BN set drifts from the dense one, epoch by epoch.

It trains the run itself (any `gatedssl pretrain` settings after `--`), keeping a checkpoint every epoch, and
after each epoch measures on one fixed batch of views (the same images and augmentations every epoch):
- the norm of the SSL, budget and bound losses' gradients on the backbone's convolutions (shared by both
  passes; the gates excluded), by three forward passes with the same random draws: all terms, budget weight 0,
  bound weight 0 (the terms add, so the differences are the terms' own gradients);
- the gated BN set's drift: ||mean_gated - mean_dense|| / ||mean_dense|| of the running means, over the blocks.
Writes DIR/diagnostics.json and DIR/diagnostics.png.

    python benchmarks/dual_diagnostics.py --out diag/dual-s0 -- --epochs 16 --seed 0
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

from gatedssl.cli import build_parser, config_from_args
from gatedssl.data.augment import recipe
from gatedssl.data.pipelines import make_views
from gatedssl.data.sources import load_run_data
from gatedssl.factory import restore_objective, select_device
from gatedssl.models.resnet import PassBatchNorm
from gatedssl.training import pretrain


def conv_weights(objective) -> list[torch.nn.Parameter]:
    return [m.weight for name, m in objective.backbone.named_modules() if isinstance(m, torch.nn.Conv2d) and ".gate." not in f".{name}."]


def term_gradients(objective, x1, x2, progress: float, seed: int) -> dict[str, float]:
    """Norms of each term's gradient on the shared convolutions, all three from the same random draws."""
    weights = conv_weights(objective)
    budget_weight, bound_weight = objective.budget_weight, objective.bound_weight

    def grads(**weights_of_terms) -> list[torch.Tensor]:
        objective.budget_weight = weights_of_terms.get("budget", budget_weight)
        objective.bound_weight = weights_of_terms.get("bound", bound_weight)
        torch.manual_seed(seed)
        loss = objective(x1, x2, progress)["loss"]
        return torch.autograd.grad(loss, weights, allow_unused=True)

    try:
        total, no_budget, no_bound = grads(), grads(budget=0.0), grads(bound=0.0)
    finally:
        objective.budget_weight, objective.bound_weight = budget_weight, bound_weight

    def norm(parts) -> float:
        return float(torch.sqrt(sum((p.float() ** 2).sum() for p in parts if p is not None)))

    budget = [t - n for t, n in zip(total, no_budget) if t is not None]
    bound = [t - n for t, n in zip(total, no_bound) if t is not None]
    ssl = [t - b - c for t, b, c in zip([t for t in total if t is not None], budget, bound)]
    return {"ssl": norm(ssl), "budget": norm(budget), "bound": norm(bound), "total": norm([t for t in total if t is not None])}


def bn_drift(objective) -> float | None:
    """Mean over the blocks' two-set BNs of ||mean_gated - mean_dense|| / ||mean_dense|| (running means)."""
    drifts = [
        float((m.gated.running_mean - m.dense.running_mean).norm() / m.dense.running_mean.norm().clamp(min=1e-12))
        for m in objective.backbone.modules()
        if isinstance(m, PassBatchNorm) and m.gated is not None
    ]
    return sum(drifts) / len(drifts) if drifts else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ours, theirs = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="the run folder (resumed if it holds a run)")
    parser.add_argument("--batch", type=int, default=128, help="images in the fixed batch (default 128)")
    args = parser.parse_args(ours)
    cfg = config_from_args(build_parser().parse_args(["pretrain", "--out", args.out, *theirs]))
    cfg = dataclasses.replace(cfg, checkpoint_every=1, keep_checkpoints=2)
    device = select_device(cfg.device)
    records = []

    def measure(epoch: int) -> None:
        with torch.random.fork_rng():  # building and measuring draw numbers: the run's own stream must not see them
            _measure(epoch)

    def _measure(epoch: int) -> None:
        state = torch.load(Path(args.out) / "checkpoints" / "last.pt", weights_only=True, map_location=device)
        objective, run_cfg = restore_objective(state, args.out)
        objective.to(device).train()
        splits = load_run_data(run_cfg, device)
        augments = tuple(
            recipe(splits.crop_size, splits.mean, splits.std, interpolation=run_cfg.crop_interpolation, blur_p=p) for p in run_cfg.blur_p
        )
        views = make_views(run_cfg.data_pipeline, splits.pretrain.images, augments, args.batch, device)
        with torch.random.fork_rng():
            torch.manual_seed(12345)  # the same batch and views every epoch
            x1, x2 = next(iter(views))
            record = {
                "epoch": epoch,
                **term_gradients(objective, x1, x2, epoch / run_cfg.epochs, seed=54321),
                "bn_drift": bn_drift(objective),
            }
        records.append(record)
        print(json.dumps(record), file=sys.stderr)

    summary = pretrain(cfg, on_epoch_end=measure, progress=True)
    Path(args.out, "diagnostics.json").write_text(
        json.dumps({"epochs": records, "summary": {k: summary.get(k) for k in ("dense", "gated")}}, indent=1)
    )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = [r["epoch"] for r in records]
    for term in ("ssl", "budget", "bound"):
        a.semilogy(epochs, [max(r[term], 1e-12) for r in records], marker="o", label=term)
    a.set(xlabel="epoch", ylabel="gradient norm on the shared convolutions", title="which term pulls on the shared weights")
    a.legend()
    b.plot(epochs, [r["bn_drift"] or 0 for r in records], marker="o")
    b.set(xlabel="epoch", ylabel="||mean_gated - mean_dense|| / ||mean_dense||", title="gated BN set's drift")
    fig.tight_layout()
    fig.savefig(Path(args.out, "diagnostics.png"), dpi=120)
    print(f"wrote {args.out}/diagnostics.json and diagnostics.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
