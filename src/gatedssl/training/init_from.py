"""Post-hoc gating's starting point: a pretrained dense encoder from a gatedssl run or another library's file.

Read: a gatedssl run (folder or checkpoint); a torchvision ResNet state dict (what `gatedssl export
--format torchvision` writes); a Lightning checkpoint such as solo-learn's (`{"state_dict": ...}`
with `backbone.*` beside `projector.*`, `classifier.*`, `momentum_*`); a lightly model's state dict
(`backbone = nn.Sequential(*list(resnet.children())[:-1])`: `backbone.0.weight` is conv1). Heads and
momentum copies are ignored: the encoder is the `backbone` (or `encoder`) module.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from ..checkpoint import check_checkpoint, read_weights
from ..config import PretrainConfig, upgrade_stored
from ..errors import UserError
from ..models.resnet import GatedResNet
from ..models.torchvision_names import canonical_resnet, describe_resnet, read_construction, sidecar_path

WRAPPERS = ("module.", "model.")  # DataParallel/DDP; a Lightning module's `model` attribute
BACKBONES = ("backbone", "encoder")  # solo-learn and lightly name the encoder `backbone`
HEADS = ("projector", "projection_head", "classifier", "prediction_head", "predictor", "head", "fc", "linear")
LOADS = (
    "a gatedssl run, a torchvision ResNet state dict (conv1, bn1, layer1-4; `gatedssl export --format torchvision`), "
    "a solo-learn checkpoint (backbone.*) or a lightly model's state dict (backbone = nn.Sequential of a torchvision ResNet's children)"
)


def _source_file(path: Path) -> Path:
    if path.is_dir():
        last = path / "checkpoints" / "last.pt"
        if not last.is_file():
            raise UserError(f"init_from: {path} is a folder without checkpoints/last.pt; give a finished gatedssl run or a state dict file")
        return last
    return path


def _ignored(module: str) -> bool:
    """A head or a momentum/EMA copy (solo-learn's momentum_backbone, lightly's backbone_momentum): not the encoder."""
    return module in HEADS or "momentum" in module


def _found(tensors: dict[str, torch.Tensor]) -> str:
    """The file's top-level modules, their tensor counts and first keys, for an error line."""
    modules: dict[str, list[str]] = {}
    for key in tensors:
        module, _, rest = key.partition(".")
        modules.setdefault(module, []).append(rest)
    shown = [
        f"{name} ({len(keys)} tensor{'s' if len(keys) > 1 else ''}: {', '.join(keys[:2])}{', ...' if len(keys) > 2 else ''})"
        for name, keys in list(modules.items())[:6]
    ]
    return "; ".join(shown) + (f" and {len(modules) - 6} more modules" if len(modules) > 6 else "")


def find_resnet(state: dict, path) -> dict[str, torch.Tensor]:
    """The ResNet encoder in a state dict or checkpoint of another library, under torchvision's names."""
    if isinstance(state.get("state_dict"), dict):  # a Lightning checkpoint (solo-learn)
        state = state["state_dict"]
    elif isinstance(state.get("model"), dict):
        state = state["model"]
    tensors = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise UserError(f"init_from: {path} holds no tensors (keys: {', '.join(map(str, list(state)[:6]))}); it should hold {LOADS}")
    for wrapper in WRAPPERS:
        if all(k.startswith(wrapper) for k in tensors):
            tensors = {k[len(wrapper) :]: v for k, v in tensors.items()}
    try:
        root = canonical_resnet(tensors)
        if root is not None:
            return root
        modules: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            module, _, rest = key.partition(".")
            if rest and not _ignored(module):
                modules.setdefault(module, {})[rest] = value
        found = {name: net for name, net in ((m, canonical_resnet(t)) for m, t in modules.items()) if net is not None}
    except UserError as exc:
        raise UserError(f"init_from: {path}: {exc}") from None
    for name in BACKBONES:
        if name in found:
            return found[name]
    if len(found) == 1:
        return next(iter(found.values()))
    if found:
        raise UserError(
            f"init_from: {path} holds several ResNets ({', '.join(found)}) and none is named backbone or encoder; "
            f"save the one to start from as a torchvision state dict (e.g. torch.save(model.{next(iter(found))}.state_dict(), 'resnet.pt'))"
        )
    raise UserError(f"init_from: {path} holds no ResNet encoder: found {_found(tensors)}; it should hold {LOADS}")


def _check_fits(resnet: dict[str, torch.Tensor], cfg: PretrainConfig, path: Path) -> None:
    """One line naming every setting the file's ResNet does not match (its blocks, width, stem kernel), and the flags to pass."""
    held = describe_resnet(resnet)
    differ = [key for key in ("arch", "width", "stem") if held[key] != getattr(cfg, key)]
    if differ:
        asked = ", ".join(f"{key} {getattr(cfg, key)}" for key in differ)
        flags = " ".join(f"--{key} {held[key]}" for key in differ if held[key] in _allowed(key))
        raise UserError(
            f"init_from: {path} holds a {held['arch']} of width {held['width']} with the {held['stem']} stem and this run asks for {asked}; "
            + (f"pass {flags} (post-hoc gating keeps the source's architecture)" if flags else "gatedssl cannot build that network")
        )
    sidecar = sidecar_path(path)
    spec = read_construction(sidecar)
    if spec is not None:  # written by `gatedssl export --format torchvision`
        padding = spec["conv1"]["padding"]
        if cfg.stem == "cifar" and padding != cfg.stem_padding:
            raise UserError(
                f"init_from: {path} was trained with stem padding {padding} ({sidecar}) and this run asks for "
                f"stem_padding {cfg.stem_padding}; pass --stem-padding {padding}"
            )


def _allowed(key: str) -> tuple:
    from ..config import ARCHS

    return {"arch": ARCHS, "stem": ("cifar", "imagenet")}.get(key, range(1, 1 << 16))


def _dense_state(state: dict, backbone: GatedResNet, cfg: PretrainConfig, path: Path, log) -> dict[str, torch.Tensor]:
    """The dense encoder's tensors under gatedssl's names, from a gatedssl checkpoint or another library's ResNet."""
    if "model" in state and "config" in state:  # a gatedssl checkpoint: its objective's backbone
        model = state["model"]
        return {k[len("backbone.") :]: v for k, v in model.items() if k.startswith("backbone.")}
    if not isinstance(
        backbone, GatedResNet
    ):  # other backbones read torchvision's own names (other libraries' ResNet layouts are ResNet-only)
        return _torchvision_named(state, backbone, path)
    resnet = find_resnet(state, path)
    _check_fits(resnet, cfg, path)
    if cfg.stem == "cifar" and read_construction(sidecar_path(path)) is None:
        log(
            f"init_from: a state dict does not record the 3x3 stem's padding; this run pads by {cfg.stem_padding} "
            f"(solo-learn's CIFAR ResNets: 2, lightly's CIFAR examples: 1); pass --stem-padding N if {path.name} was trained otherwise"
        )
    names = backbone.torchvision_names()
    missing = [theirs for theirs in names.values() if theirs not in resnet]
    if missing:
        raise UserError(
            f"init_from: {path} is not a ResNet of this architecture (no {missing[0]}; {describe_resnet(resnet)['arch']} found); "
            f"it should hold {LOADS}"
        )
    return {ours: resnet[theirs] for ours, theirs in names.items()}


def _torchvision_named(state: dict, backbone, path: Path) -> dict[str, torch.Tensor]:
    """A torchvision-named encoder (e.g. `torchvision.models.mobilenet_v2().state_dict()`, its classifier ignored), at the
    top level or under backbone./encoder., possibly inside a Lightning or DDP wrapper; under gatedssl's names."""
    if isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    tensors = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    for wrapper in WRAPPERS:
        if tensors and all(k.startswith(wrapper) for k in tensors):
            tensors = {k[len(wrapper) :]: v for k, v in tensors.items()}
    names = backbone.torchvision_names()
    shapes = backbone.state_dict()
    for prefix in ("", *(f"{b}." for b in BACKBONES)):
        if all(prefix + theirs in tensors for theirs in names.values()):
            for ours, theirs in names.items():
                if tensors[prefix + theirs].shape != shapes[ours].shape:
                    raise UserError(
                        f"init_from: {path} is a {backbone.arch} of another width ({theirs}: {tuple(tensors[prefix + theirs].shape)} there, "
                        f"{tuple(shapes[ours].shape)} at this run's --width {backbone.width:g}); pass the width multiplier it was built with"
                    )
            return {ours: tensors[prefix + theirs] for ours, theirs in names.items()}
    missing = next(t for t in names.values() if t not in tensors)
    raise UserError(
        f"init_from: {path} is not a torchvision {backbone.arch} of these settings (no {missing}; found {_found(tensors)}); "
        f"give a gatedssl run or the state dict of torchvision.models.{backbone.arch}(width_mult=...)"
    )


def load_pretrained(cfg: PretrainConfig, backbone: GatedResNet, log=None) -> dict | None:
    """Load the dense encoder of cfg.init_from into `backbone`, start its gated BN set as a copy of the dense one,
    and return what the pretraining cost (the source run's training_compute; None when unknown)."""
    log = log or (lambda message: print(message, file=sys.stderr))
    path = Path(cfg.init_from)
    source = _source_file(path)
    state = read_weights(source, "init_from")
    is_run = isinstance(state, dict) and "model" in state and "config" in state
    if is_run:
        state = check_checkpoint(state, source)
        stored = upgrade_stored(state["config"])
        for key in ("arch", "width", "stem", "stem_padding"):
            theirs = stored.get(key)
            if theirs != getattr(cfg, key):
                raise UserError(
                    f"init_from: {path} is a network of {key} {theirs} and this run asks for {key} {getattr(cfg, key)}; "
                    f"pass --{key.replace('_', '-')} {theirs} (post-hoc gating keeps the source's architecture)"
                )
    elif not isinstance(state, dict):
        raise UserError(f"init_from: {source} holds no state dict (a {type(state).__name__}); it should hold {LOADS}")
    dense = _dense_state(state, backbone, cfg, source, log)
    wanted = set(backbone.torchvision_names())
    try:
        backbone.load_state_dict({k: v for k, v in dense.items() if k in wanted}, strict=False)
    except RuntimeError as exc:
        detail = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc))
        raise UserError(f"init_from: {path} does not fit a {cfg.arch} of width {cfg.width} ({detail[:160].rstrip()})") from None
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
