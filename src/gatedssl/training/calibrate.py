"""Budget calibration: one logit offset, shared by every gate, chosen so that the thresholded gates spend the budget.

Why the gates miss their budget without it: training samples each mask with logistic noise, so the budget
loss holds the *expected* open share, mean(sigmoid(logit)), at the target; evaluation thresholds the logit,
1[logit >= 0]. The two agree only when the logits are far from zero. Logits that sit just above zero (the
reference recipe at 600 steps) open every such channel at evaluation, and the thresholded ratio lands above
the budget; logits just below zero (short embedded runs) close them, and it lands below. Shifting every
logit by one offset moves the thresholded ratio monotonically (up to the gates' effect on later gates'
inputs), so a bisection on training images finds the offset that meets the budget. The offset lives in the
gates (`ChannelGate.offset`), so the masked pass, real skipping and every export follow it.
"""

from __future__ import annotations

import torch

from ..data.sources import DatasetSplits
from ..evaluation.evaluate import extract, spread
from ..models.backbone import GatedBackbone

CALIBRATION_IMAGES = 1024
TOLERANCE = 0.002  # stop once the training images' ratio is this close to the target
ITERATIONS = 30


def gated_ratio(backbone: GatedBackbone, splits: DatasetSplits, indices: torch.Tensor, device, precision: str) -> float:
    """The gated pass's mean MACs over the dense pass's, eval mode, on the images at `indices`."""
    out = extract(backbone, splits.pretrain, splits, "gated", device, precision=precision, indices=indices)
    return out.macs.mean().item() / out.dense_macs


def set_offset(backbone: GatedBackbone, value: float) -> None:
    """Every gate's logit offset (one number shared by all, as the calibration finds it)."""
    for gate in backbone.gates:
        gate.offset.fill_(value)


@torch.no_grad()
def calibrate_gates(
    backbone: GatedBackbone, splits: DatasetSplits, target: float, device, precision: str = "auto", images: int = CALIBRATION_IMAGES
) -> dict:
    """Set the gates' shared offset so that the gated MACs ratio on `images` training images is `target`.

    Returns what it did: the offset, the ratio before and after, the images used. Starts from the offset the
    gates already hold, so calibrating twice (or to another budget) composes."""
    indices = spread(len(splits.pretrain.labels), images)
    start = float(backbone.gates[0].offset)
    before = gated_ratio(backbone, splits, indices, device, precision)

    def ratio_at(offset: float) -> float:
        set_offset(backbone, offset)
        return gated_ratio(backbone, splits, indices, device, precision)

    best = (abs(before - target), start, before)
    # bracket: a larger offset closes channels, so the ratio falls as the offset grows
    step, lo, hi = 1.0, start, start
    r_lo = r_hi = before
    while r_lo < target and step <= 64:
        lo, step = start - step, 2 * step
        r_lo = ratio_at(lo)
        best = min(best, (abs(r_lo - target), lo, r_lo))
    step = 1.0
    while r_hi > target and step <= 64:
        hi, step = start + step, 2 * step
        r_hi = ratio_at(hi)
        best = min(best, (abs(r_hi - target), hi, r_hi))
    for _ in range(ITERATIONS):
        if best[0] <= TOLERANCE or not (r_lo >= target >= r_hi):
            break
        mid = (lo + hi) / 2
        r_mid = ratio_at(mid)
        best = min(best, (abs(r_mid - target), mid, r_mid))
        if r_mid >= target:
            lo, r_lo = mid, r_mid
        else:
            hi, r_hi = mid, r_mid
    _, offset, after = best
    set_offset(backbone, offset)
    offset = float(backbone.gates[0].offset)
    return {
        "target": target,
        "offset": offset,  # as the gates hold it (float32)
        "ratio_before": round(before, 4),
        "ratio_after": round(after, 4),
        "images": len(indices),
    }


def calibrate_checkpoint(path: str, budget: float | None = None, images: int | None = None, data_dir=None, device="auto") -> dict:
    """Calibrate a saved run's gates (to its own budget, or `budget`) and rewrite the checkpoint file in place, atomically.

    For runs trained before calibration existed, or to move a run to a nearby budget without training. In a run
    folder, the step_*.pt file that last.pt pointed to keeps the weights as trained."""
    from ..checkpoint import save_checkpoint
    from ..errors import UserError
    from ..evaluation.runs import load_run

    if budget is not None and not 0 < budget <= 1:
        raise UserError(f"--budget must be in (0, 1], got {budget:g}")
    images = CALIBRATION_IMAGES if images is None else images
    if images < 1:
        raise UserError(f"--images must be at least 1, got {images}")
    state, objective, cfg, dev, splits = load_run(path, data_dir, device)
    if not objective.mode.budget:
        raise UserError(f"{path} is a {cfg.mode} run: it has no gates with a budget to calibrate; calibrate a dual, gated or posthoc run")
    record = calibrate_gates(objective.backbone, splits, cfg.budget if budget is None else budget, dev, cfg.precision, images)
    state["model"] = {k: v.cpu() for k, v in objective.state_dict().items()}
    state["calibration"] = record
    save_checkpoint(path, {k: v for k, v in state.items() if k != "format_version"})
    return record
