"""Post-hoc gating's starting point: a pretrained dense encoder, from a gatedssl run or a torchvision state dict."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..checkpoint import check_checkpoint, read_weights
from ..config import PretrainConfig, upgrade_stored
from ..errors import UserError
from ..models.resnet import GatedResNet
from ..models.torchvision_names import torchvision_names

PREFIXES = ("backbone.", "encoder.", "module.")  # a gatedssl objective, solo-learn, lightly, DataParallel wrappers


def _source_file(path: Path) -> Path:
    if path.is_dir():
        last = path / "checkpoints" / "last.pt"
        if not last.is_file():
            raise UserError(f"init_from: {path} is a folder without checkpoints/last.pt; give a finished gatedssl run or a state dict file")
        return last
    return path


def _dense_state(state: dict, backbone: GatedResNet, path: Path) -> dict[str, torch.Tensor]:
    """The dense encoder's tensors under gatedssl's names, from a gatedssl checkpoint or a torchvision-named state dict."""
    if "model" in state and "config" in state:  # a gatedssl checkpoint: its objective's backbone
        model = state["model"]
        return {k[len("backbone.") :]: v for k, v in model.items() if k.startswith("backbone.")}
    for prefix in PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    names = torchvision_names(backbone)
    missing = [theirs for theirs in names.values() if theirs not in state]
    if missing:
        raise UserError(
            f"init_from: {path} is not a torchvision-format ResNet state dict of this architecture (no {missing[0]}); "
            f"give a gatedssl run, or a file from `gatedssl export --format torchvision`"
        )
    return {ours: state[theirs] for ours, theirs in names.items()}


def load_pretrained(cfg: PretrainConfig, backbone: GatedResNet) -> dict | None:
    """Load the dense encoder of cfg.init_from into `backbone`, start its gated BN set as a copy of the dense one,
    and return what the pretraining cost (the source run's training_compute; None when unknown)."""
    path = Path(cfg.init_from)
    source = _source_file(path)
    state = read_weights(source, "init_from")
    is_run = isinstance(state, dict) and "model" in state
    if is_run:
        state = check_checkpoint(state, source)
        stored = upgrade_stored(state["config"])
        for key in ("arch", "width", "stem", "stem_padding"):
            theirs = stored.get(key)
            if theirs != getattr(cfg, key):
                raise UserError(
                    f"init_from: {path} is a {key} {theirs} network and this run asks for {key} {getattr(cfg, key)}; "
                    f"pass --{key} {theirs} (post-hoc gating keeps the source's architecture)"
                )
    elif not isinstance(state, dict):
        raise UserError(f"init_from: {source} holds no state dict; give a gatedssl run or a torchvision-format state dict")
    dense = _dense_state(state, backbone, path)
    wanted = set(torchvision_names(backbone))
    try:
        backbone.load_state_dict({k: v for k, v in dense.items() if k in wanted}, strict=False)
    except RuntimeError as exc:
        detail = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc))
        raise UserError(f"init_from: {path} does not fit a {cfg.arch} of width {cfg.width} ({detail[:160]})") from None
    absent = sorted(wanted - set(dense))
    if absent:
        raise UserError(f"init_from: {path} lacks {absent[0]} of the dense encoder; give a run of the same architecture")
    backbone.copy_dense_bn_to_gated()
    return _pretraining_cost(source.parent.parent / "summary.json") if is_run else None


def _pretraining_cost(summary: Path) -> dict | None:
    """The source run's training_compute (older runs: their wall time only); None when it has no summary."""
    try:
        values = json.loads(summary.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if "training_compute" in values:
        return values["training_compute"]
    return {"executed_flops": None, "mask_flops": None, "seconds": values.get("train_seconds"), "device": values.get("device")}
