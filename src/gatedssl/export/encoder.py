"""`gatedssl.load`: a trained encoder, ready for inference, outside the training tool.

    model = gatedssl.load("RUN/checkpoints/last.pt")      # or a file from `gatedssl export` (pt, onnx; torchvision + its .json)
    features = model.embed(pil_images)                     # dense features
    light = model.embed(pil_images, subnet="gated")        # only the channels the gates open

Files are read with `torch.load(weights_only=True)`: a file holding code is refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from ..checkpoint import read_weights
from ..data.augment import center_crop, normalize
from ..data.sources import eval_geometry
from ..data.streaming import fit_square
from ..errors import UserError

EXPORT_FORMAT = "gatedssl-export/1"


@dataclass(frozen=True)
class EvalTransform:
    """Images -> the normalised float tensor the network takes, as evaluation prepares them.

    Takes a uint8 (N, 3, H, W) or (3, H, W) tensor at the training resolution (centre crop, then
    normalise), PIL images of any size (shorter side resized to the stored size, centre square,
    centre crop), or a float tensor, taken as already normalised (any float dtype; the networks run in float32).
    """

    crop_size: int
    stored_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def for_dataset(cls, name: str, crop_size: int | None = None) -> EvalTransform:
        crop, stored, mean, std = eval_geometry(name, crop_size)
        return cls(crop, stored, tuple(mean), tuple(std))

    def __call__(self, images) -> torch.Tensor:
        if isinstance(images, torch.Tensor):
            if images.is_floating_point():
                batch = images if images.dim() == 4 else images[None]
                if batch.dim() != 4 or batch.shape[1] != 3:
                    raise TypeError(f"expected normalised float images of shape (N, 3, H, W), got {tuple(images.shape)}")
                return batch.float()
            batch = images if images.dim() == 4 else images[None]
        else:
            from PIL import Image
            from torchvision.transforms.functional import pil_to_tensor

            pictures = [images] if isinstance(images, Image.Image) else list(images)
            if not all(isinstance(p, Image.Image) for p in pictures):
                raise TypeError("images must be a uint8 tensor (N, 3, H, W), a PIL image or a list of PIL images")
            if not pictures:  # as an empty tensor does: no features
                return torch.empty(0, 3, self.crop_size, self.crop_size)
            batch = torch.stack([fit_square(pil_to_tensor(p.convert("RGB")), self.stored_size) for p in pictures])
        if batch.dtype != torch.uint8 or batch.dim() != 4 or batch.shape[1] != 3:
            given = tuple(images.shape) if isinstance(images, torch.Tensor) else tuple(batch.shape)
            raise TypeError(f"expected uint8 images of shape (N, 3, H, W) or (3, H, W), got {batch.dtype} {given}")
        if min(batch.shape[-2:]) < self.crop_size:
            raise ValueError(
                f"images of {batch.shape[-2]}x{batch.shape[-1]} are smaller than the {self.crop_size} px the "
                f"network was trained at; pass PIL images to have them resized"
            )
        return normalize(center_crop(batch, self.crop_size), self.mean, self.std)


class Encoder(nn.Module):
    """An inference-ready encoder in eval mode: its sub-networks by name, and its transform.

    subnets: "dense" (BN folded into the convs), "gated" (real channel skipping), "gated-masked"
    (the training-time gated pass: every channel computed, then masked; for comparisons), a
    slimmable run's widths ("width0.5": a plain smaller ResNet), or the one sub-network of an export.
    """

    def __init__(
        self,
        subnets: dict[str, nn.Module],
        transform: EvalTransform,
        config: dict | None = None,
        head: nn.Linear | None = None,
        classes: list[str] | None = None,
    ):
        super().__init__()
        self._keys = list(subnets)  # "backbone" (the training-time network behind "gated-masked") is not a sub-network
        self.nets = nn.ModuleDict({_key(n): net for n, net in subnets.items()})  # module names cannot hold the dot of width0.5
        self.transform = transform
        self.config = config or {}
        self.head, self.classes = head, classes  # a fine-tune's classifier (gatedssl finetune)
        self.metadata: dict = {}  # an export's "about": input, sub-network, MACs, version (as an ONNX file's metadata)
        self.eval()

    @property
    def subnets(self) -> list[str]:
        return [n for n in self._keys if n != "backbone"] + (["gated-masked"] if "backbone" in self._keys else [])

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, x: torch.Tensor, subnet: str | None = None) -> torch.Tensor:
        """Features (N, D) of normalised images; subnet defaults to the first one ("dense", or an export's own)."""
        subnet = subnet or self.subnets[0]
        if subnet not in self.subnets:
            raise ValueError(f"subnet {subnet!r} is not in this model; it has {', '.join(self.subnets)}")
        if subnet == "gated-masked":
            return self.nets["backbone"](x, gated=True).features
        out = self.nets[_key(subnet)](x)
        return out[0] if isinstance(out, tuple) else out

    @torch.no_grad()
    def embed(self, images, subnet: str | None = None) -> torch.Tensor:
        """Features (N, D) of images (see EvalTransform for what it takes)."""
        return self(self.transform(images).to(self.device), subnet)

    @torch.no_grad()
    def predict(self, images, subnet: str | None = None) -> tuple[list[str], torch.Tensor]:
        """Class names and class probabilities (N, classes) of images, by a fine-tuned model's head."""
        if self.head is None:
            raise ValueError(
                "this model has no classifier head; fine-tune it first (gatedssl finetune) and load the fine-tune's checkpoint"
            )
        probabilities = self.head(self.embed(images, subnet)).softmax(1)
        return [self.classes[i] for i in probabilities.argmax(1).tolist()], probabilities


def load(path: str | os.PathLike, device: str | torch.device = "cpu", strategy: str = "union") -> Encoder:
    """Load a training checkpoint or an export (`.pt`, or torchvision weights with their sidecar) as an Encoder on `device`.

    strategy: how the real-skipping gated pass runs batches ("union" or "group", see
    gatedssl.export.skipping).
    """
    from ..models.torchvision_names import read_construction, sidecar_path

    suffix = os.fspath(path).lower().rsplit(".", 1)[-1]
    if suffix == "onnx":  # runs in onnxruntime, on the CPU, behind the same interface
        from .formats import require
        from .onnxfile import OnnxModel

        if not os.path.isfile(path):
            raise UserError(f"{path}: no such file")
        require("onnxruntime")
        return OnnxModel(path)
    if suffix in ("ts", "torchscript", "jit"):
        raise UserError(
            f"{path} looks like a TorchScript export: that is for other runtimes; load it with torch.jit.load(path) "
            f"(input: float images normalised as the run's dataset is), or gatedssl.load the .pt or .onnx export or the checkpoint"
        )
    state = read_weights(path)
    ours = isinstance(state, dict) and (state.get("format") == EXPORT_FORMAT or "config" in state or "finetune" in state)
    construction = None if ours else read_construction(sidecar_path(path))  # a .pt beside a torchvision export's .json
    if construction is not None:  # a torchvision export: the model its sidecar describes
        from .formats import torchvision_model

        transform = EvalTransform(**{k: tuple(v) if isinstance(v, list) else v for k, v in construction["transform"].items()})
        model, classes = torchvision_model(path), construction.get("classes")
        if classes:  # a fine-tune's: the features are fc's input, fc is the head
            head, model.fc = model.fc, nn.Identity()
            return Encoder({"dense": model}, transform, head=head, classes=classes).to(device)
        return Encoder({"dense": model}, transform).to(device)
    if isinstance(state, dict) and state.get("format") == EXPORT_FORMAT:
        from .deploy import plain_from_spec

        net = plain_from_spec(state["arch"])
        net.load_state_dict(state["state_dict"])
        transform = EvalTransform(**{k: tuple(v) if isinstance(v, list) else v for k, v in state["transform"].items()})
        head = None
        if "head" in state:  # a fine-tune's export
            head = nn.Linear(state["head"]["weight"].shape[1], state["head"]["weight"].shape[0])
            head.load_state_dict(state["head"])
        model = Encoder({state["subnet"]: net}, transform, state.get("config"), head=head, classes=state.get("classes"))
        model.metadata = state.get("about", {})  # what the file says of itself (gatedssl 0.2.0's exports say nothing)
        return model.to(device)
    if isinstance(state, dict) and "finetune" in state:
        return _load_classifier(state, path, strategy).to(device)
    from ..checkpoint import check_checkpoint
    from ..factory import restore_objective

    objective, cfg = restore_objective(check_checkpoint(state, path), path)
    backbone = objective.backbone.eval()
    from .deploy import plain_network, skipping_network

    nets = {name: plain_network(backbone, name) for name in objective.subnets if name != "gated"}
    if cfg.mode != "slimmable":  # a slimmable run has no gates
        nets.update(gated=skipping_network(backbone, strategy), backbone=backbone)
    model = Encoder(nets, EvalTransform.for_dataset(cfg.dataset, cfg.crop_size), cfg.to_dict())
    from .onnxfile import about

    size = model.transform.crop_size
    model.metadata = about(model.transform, "dense", nets["dense"].macs(size), 1.0, "features", arch=cfg.arch, subnets=model.subnets)
    return model.to(device)


def _load_classifier(state: dict, path, strategy: str) -> Encoder:
    """A fine-tune's checkpoint: its one sub-network as deployed (BN folded; gated with real skipping) and its head."""
    from ..config import PretrainConfig, upgrade_stored
    from ..factory import build_objective
    from ..models.classifier import Classifier
    from .deploy import plain_network, skipping_network

    run = PretrainConfig(**upgrade_stored(state["run_config"]))
    subnet, weights = state["finetune"]["subnet"], state["model"]
    keep = [m.nonzero().flatten() for k, m in sorted(weights.items()) if k.startswith("static_mask")] or None
    if keep is not None:  # in block order, whatever the keys' text order
        keep = [weights[f"static_mask{i}"].nonzero().flatten() for i in range(len(keep))]
    model = Classifier(build_objective(run).backbone, subnet, state["classes"], keep)
    model.load_state_dict(weights)
    backbone = model.backbone.eval()
    if subnet == "gated":
        net = skipping_network(backbone, strategy)
    else:
        net = plain_network(backbone, "gated" if subnet == "static" else subnet, keep=keep)
    finetune = state["finetune"]
    if "transform" in state:  # as the fine-tune evaluated its images (a transfer keeps the run's normalisation)
        transform = EvalTransform(**{k: tuple(v) if isinstance(v, list) else v for k, v in state["transform"].items()})
    else:
        transform = EvalTransform.for_dataset(finetune.get("dataset") or run.dataset, run.crop_size)
    return Encoder({subnet: net}, transform, {**run.to_dict(), "finetune": finetune}, head=model.head, classes=list(state["classes"]))


def _key(name: str) -> str:
    return name.replace(".", "_")
