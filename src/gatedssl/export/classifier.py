"""Exporting a fine-tune (`gatedssl finetune`): its sub-network as a plain network, its head, its class names.

Each format carries the class names with the weights, so a deployed file says what its outputs mean:
`.pt` in its dict, TorchScript as a module attribute (`model.classes`), ONNX in the model's metadata
(`classes`, JSON), torchvision in the construction file beside the weights.
"""

from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from .encoder import _load_classifier
from .formats import onnx_bytes, verify_onnx, write_bytes, write_pt, write_torchscript, write_torchvision
from .onnxfile import describe, int8_report, top1, with_metadata


class PlainClassifier(nn.Module):
    """A plain (BN-folded) sub-network and its linear head: images in, logits out."""

    # TorchScript reads these annotations (no postponed annotations in this module): a deployed file says what its
    # input is (float images, centre crop_size px, normalised by mean and std) and what its outputs mean
    classes: list[str]
    mean: list[float]
    std: list[float]
    crop_size: int

    def __init__(self, net: nn.Module, head: nn.Linear, classes: list[str], transform=None):
        super().__init__()
        self.net, self.head, self.classes = net, head, list(classes)
        self.mean = [float(m) for m in transform.mean] if transform is not None else [0.0, 0.0, 0.0]
        self.std = [float(m) for m in transform.std] if transform is not None else [1.0, 1.0, 1.0]
        self.crop_size = int(transform.crop_size) if transform is not None else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.net(x))


class LogitsAndFeatures(nn.Module):
    """The ONNX form of a classifier: logits first (what runtimes read), and the features they come from
    (so that `gatedssl.load` of the file can embed as well as predict)."""

    def __init__(self, model: PlainClassifier):
        super().__init__()
        self.net, self.head = model.net, model.head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.net(x)
        return self.head(features), features


def export_classifier(
    state: dict, checkpoint: str, out: str, fmt: str, quantize: str | None = None, calibration_images=None, log=None
) -> dict:
    subnet = state["finetune"]["subnet"]
    if subnet == "gated":
        raise UserError(
            f"{checkpoint} is a fine-tuned gated network: it chooses channels per input, which no static file format "
            f"holds; load the checkpoint itself with gatedssl.load (real channel skipping), or fine-tune --subnet static"
        )
    encoder = _load_classifier(state, checkpoint, "union")
    net, head, classes = encoder.nets[subnet.replace(".", "_")], encoder.head, encoder.classes
    model = PlainClassifier(net, head, classes, encoder.transform).eval()
    size = encoder.transform.crop_size
    dense = state_backbone(state)
    dense_macs = dense.channel_costs(size).macs(dense.gated_channels)
    result = {
        "subnet": subnet,
        "format": fmt,
        "file": str(out),
        "classes": classes,
        "macs": net.macs(size),  # the head's few MACs aside, as for the encoders
        "macs_ratio": net.macs(size) / dense_macs,
    }
    if fmt == "pt":
        write_pt(net, subnet, encoder.transform, encoder.config, Path(out), head=head, classes=classes, macs_ratio=result["macs_ratio"])
    elif fmt == "torchscript":
        write_torchscript(model, Path(out))
    elif fmt == "onnx":
        about = describe(encoder.transform, subnet, result["macs"], result["macs_ratio"], "logits", classes=classes)
        data = with_metadata(onnx_bytes(LogitsAndFeatures(model), size, output=("logits", "features")), about)
        result["onnx_max_abs_diff"] = verify_onnx(data, model, size)
        if quantize is not None:  # fp32 and INT8 top-1 side by side, on the fine-tune's own test images
            splits = finetune_split(state, log)
            result["top1"] = top1(data, splits)
            result["int8"] = int8_report(data, splits, calibration_images, lambda int8: {"top1": top1(int8, splits)}, result, "top1")
            data = result["int8"].pop("data")
        write_bytes(Path(out), data)
    else:
        if subnet != "dense":
            raise UserError("--format torchvision writes the dense network; use --format pt, torchscript or onnx for this one")
        result.update(write_torchvision(dense, encoder.transform, Path(out), head=head, classes=classes))
    return result


def finetune_split(state: dict, log):
    """The images the fine-tune trained and tested on (a moved folder: the fine-tune's own --data-dir names it)."""
    from ..config import PretrainConfig, upgrade_stored
    from ..training.finetune import FinetuneConfig, finetune_data

    return finetune_data(FinetuneConfig(**state["finetune"]), PretrainConfig(**upgrade_stored(state["run_config"])), log)


def state_backbone(state: dict):
    """The fine-tuned backbone with its BN as trained (torchvision's ResNet keeps BatchNorm layers)."""
    from ..config import PretrainConfig, upgrade_stored
    from ..factory import build_objective

    backbone = build_objective(PretrainConfig(**upgrade_stored(state["run_config"]))).backbone
    backbone.load_state_dict({k[len("backbone.") :]: v for k, v in state["model"].items() if k.startswith("backbone.")})
    return backbone.eval()
