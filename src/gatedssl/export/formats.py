"""Writing an exported encoder: our own `.pt`, TorchScript, ONNX, or a torchvision state dict.

A torchvision export also writes the construction (stem conv, max-pool or not) beside the weights,
since a state dict loads strictly into a wrongly built stem and silently gives other features.

Every file is written to a temporary name and renamed, so an existing export is never left
half-written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import atomic_write, read_weights
from ..errors import UserError
from ..models.backbone import GatedBackbone
from ..models.torchvision_names import read_construction, sidecar_path
from .encoder import EXPORT_FORMAT, EvalTransform

FORMATS = ("pt", "torchscript", "onnx", "torchvision")
EXTRA = "pip install 'gatedssl[export]'"


def write_pt(
    net: nn.Module,
    subnet: str,
    transform: EvalTransform,
    config: dict,
    out: Path,
    head: nn.Linear | None = None,
    classes=None,
    macs_ratio: float = 1.0,
) -> None:
    """A state dict plus the architecture (each conv's channels): loads with weights_only=True. A fine-tune's
    file adds its head and class names. "about" says what the file is, as an ONNX export's metadata does."""
    from .onnxfile import about

    output = "logits" if head is not None else "features"
    extra = {"arch": config.get("arch")} if head is None else {"classes": list(classes)}
    state = {
        "about": about(transform, subnet, net.macs(transform.crop_size), macs_ratio, output, **extra),
        "format": EXPORT_FORMAT,
        "subnet": subnet,
        "arch": net.spec,
        "state_dict": net.state_dict(),
        "transform": dataclasses.asdict(transform),
        "config": config,
    }
    if head is not None:
        state.update(head=head.state_dict(), classes=list(classes))
    _write(out, lambda fh: torch.save(state, fh))


def write_torchscript(net: nn.Module, out: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in favour of torch.export, still loads everywhere
        scripted = torch.jit.script(net.cpu().eval())
        _write(out, lambda fh: torch.jit.save(scripted, fh))


def require(*modules: str) -> None:
    """One line naming the missing package of the export extra, if any."""
    for module in modules:
        try:
            __import__(module)
        except ImportError:
            raise UserError(f"--format onnx needs the {module} package, which is not installed; {EXTRA}") from None


def onnx_bytes(net: nn.Module, size: int, output: str | tuple[str, ...] = "features") -> bytes:
    """The network as ONNX with a dynamic batch axis (input "images"; output "features", or a classifier's "logits" and "features")."""
    require("onnx", "onnxscript")
    buffer = io.BytesIO()
    example = torch.zeros(2, 3, size, size)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net.cpu().eval(),
            (example,),
            buffer,
            dynamo=True,
            input_names=["images"],
            output_names=[output] if isinstance(output, str) else list(output),
            dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
            verbose=False,
        )
    return buffer.getvalue()


def verify_onnx(data: bytes, net: nn.Module, size: int, batches=(1, 5)) -> float:
    """Largest |ONNX Runtime - PyTorch| over random batches of each size."""
    require("onnxruntime")
    import onnxruntime

    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    worst = 0.0
    with torch.no_grad():
        for n in batches:
            x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(n))
            got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
            worst = max(worst, (got - net.cpu()(x)).abs().max().item())
    return worst


def torchvision_state_dict(backbone: GatedBackbone) -> dict[str, torch.Tensor]:
    """The dense encoder under torchvision's names (no classifier); the dense BN set kept as BatchNorm, so that the
    network fine-tunes as usual. Refuses what torchvision's constructors cannot build (the backbone says why)."""
    problem = backbone.torchvision_problem()
    if problem:
        raise UserError(f"--format torchvision: {problem}; export with --format pt, torchscript or onnx instead")
    ours = backbone.state_dict()
    return {theirs: ours[key].detach().clone() for key, theirs in backbone.torchvision_names().items()}


def torchvision_code(construction: dict, weights: str | Path) -> str:
    """The Python lines that build the torchvision model an export fits and load it (printed by the export)."""
    classes = construction.get("classes")
    if construction.get("family") == "mobilenet":
        lines = ["import torch, torchvision", f"model = torchvision.models.{construction['arch']}(width_mult={construction['width_mult']})"]
        lines.append("model.classifier = torch.nn.Identity()")
        lines += [f"model.{_attribute_path(name)}.stride = (1, 1)" for name in construction["stride_one"]]
    else:
        conv1 = construction["conv1"]
        lines = [
            "import torch, torchvision",
            f"model = torchvision.models.{construction['arch']}({f'num_classes={len(classes)}' if classes else ''})",
        ]
        if not classes:
            lines.append("model.fc = torch.nn.Identity()")
        if (conv1["kernel_size"], conv1["stride"], conv1["padding"]) != (7, 2, 3):  # torchvision's own conv1
            lines.append(
                f"model.conv1 = torch.nn.Conv2d(3, 64, kernel_size={conv1['kernel_size']}, stride={conv1['stride']}, "
                f"padding={conv1['padding']}, bias=False)"
            )
        if not construction["maxpool"]:
            lines.append("model.maxpool = torch.nn.Identity()")
    lines.append(f"model.load_state_dict(torch.load({str(weights)!r}, weights_only=True), strict=True)")
    return "\n".join(lines)


def _attribute_path(name: str) -> str:
    """features.2.conv.1.0 -> features[2].conv[1][0]"""
    return "".join(f"[{part}]" if part.isdigit() else f".{part}" for part in name.split(".")).lstrip(".")


def write_torchvision(backbone: GatedBackbone, transform: EvalTransform, out: Path, head: nn.Linear | None = None, classes=None) -> dict:
    """The state dict at `out` and, beside it (resnet18.pth -> resnet18.json), how to build the model it fits.

    A state dict cannot carry the stem's padding or the missing max-pool, and a torchvision model
    built with another stem loads it under strict=True without complaint and gives other features;
    the sidecar (read by `torchvision_model`) and the printed lines make the construction explicit.
    Returns {"construction": ..., "sidecar": path, "torchvision_code": lines} for the driver to print.
    """
    out, sidecar = Path(out), sidecar_path(out)
    if sidecar == out:
        raise UserError(
            f"--format torchvision: --out {out} ends in .json, the name of the construction file written beside the weights; use e.g. resnet18.pth"
        )
    if sidecar.exists() and read_construction(sidecar) is None:  # e.g. --out RUN/summary.pth next to a run's summary.json
        raise UserError(
            f"--format torchvision: the construction file {sidecar} would replace a file an earlier export did not write; "
            f"choose another --out name"
        )
    state = torchvision_state_dict(backbone.cpu())
    construction = {**backbone.torchvision_construction(), "transform": dataclasses.asdict(transform)}
    if head is not None and construction.get("family") == "mobilenet":
        raise UserError(
            "--format torchvision: a fine-tuned MobileNet's head is one linear layer, which torchvision's classifier is not; "
            "export it with --format pt, torchscript or onnx"
        )
    if head is not None:  # a fine-tune: torchvision's own fc, filled
        state.update({"fc.weight": head.weight.detach().cpu().clone(), "fc.bias": head.bias.detach().cpu().clone()})
        construction.update(fc="Linear", classes=list(classes))
    write_state_dict(out, state)
    write_bytes(sidecar, (json.dumps(construction, indent=2) + "\n").encode())
    return {"construction": construction, "sidecar": str(sidecar), "torchvision_code": torchvision_code(construction, out)}


def torchvision_model(weights: str | os.PathLike) -> nn.Module:
    """The torchvision ResNet a `gatedssl export --format torchvision` file fits, its weights loaded (eval mode).

    Reads the construction from the sidecar beside the weights (resnet18.pth -> resnet18.json).
    """
    import torchvision

    sidecar = sidecar_path(weights)
    construction = read_construction(sidecar)
    if construction is None:
        raise UserError(
            f"{weights}: {sidecar} is missing or not a construction file of `gatedssl export --format torchvision`; "
            f"export again, or build the model by hand with the stem the run used"
        )
    classes = construction.get("classes")
    if construction.get("family") == "mobilenet":
        model = getattr(torchvision.models, construction["arch"])(width_mult=construction["width_mult"])
        model.classifier = nn.Identity()
        for name in construction["stride_one"]:
            model.get_submodule(name).stride = (1, 1)
        model.load_state_dict(read_weights(weights), strict=True)
        return model.eval()
    model = getattr(torchvision.models, construction["arch"])(**({"num_classes": len(classes)} if classes else {}))
    if not classes:
        model.fc = nn.Identity()
    model.conv1 = nn.Conv2d(3, 64, bias=False, **construction["conv1"])
    if not construction["maxpool"]:
        model.maxpool = nn.Identity()
    model.load_state_dict(read_weights(weights), strict=True)
    return model.eval()


def _write(out: Path, write) -> None:
    try:
        atomic_write(Path(out), write)
    except OSError as exc:
        raise UserError(f"cannot write {out} ({exc.strerror or exc}); choose an --out you can write to") from None


def write_bytes(out: Path, data: bytes) -> None:
    _write(out, lambda fh: fh.write(data))


def write_state_dict(out: Path, state: dict) -> None:
    _write(out, lambda fh: torch.save(state, fh))
