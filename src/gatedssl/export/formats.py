"""Writing an exported encoder: our own `.pt`, TorchScript, ONNX, or a torchvision state dict.

Every file is written to a temporary name and renamed, so an existing export is never left
half-written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import warnings
from pathlib import Path

import torch

from ..checkpoint import atomic_write
from ..errors import UserError
from ..models.resnet import GatedResNet
from ..models.torchvision_names import torchvision_names
from .encoder import EXPORT_FORMAT, EvalTransform
from .plain import PlainResNet

FORMATS = ("pt", "torchscript", "onnx", "torchvision")
EXTRA = "pip install 'gatedssl[export]'"


def write_pt(net: PlainResNet, subnet: str, transform: EvalTransform, config: dict, out: Path) -> None:
    """A state dict plus the architecture (each conv's channels): loads with weights_only=True."""
    state = {
        "format": EXPORT_FORMAT,
        "subnet": subnet,
        "arch": net.spec,
        "state_dict": net.state_dict(),
        "transform": dataclasses.asdict(transform),
        "config": config,
    }
    _write(out, lambda fh: torch.save(state, fh))


def write_torchscript(net: PlainResNet, out: Path) -> None:
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


def onnx_bytes(net: PlainResNet, size: int) -> bytes:
    """The network as ONNX with a dynamic batch axis (input "images", output "features")."""
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
            output_names=["features"],
            dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
            verbose=False,
        )
    return buffer.getvalue()


def verify_onnx(data: bytes, net: PlainResNet, size: int, batches=(1, 5)) -> float:
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


def torchvision_state_dict(backbone: GatedResNet) -> dict[str, torch.Tensor]:
    """The dense encoder under torchvision's ResNet names (conv1, bn1, layerS.B..., downsample), no fc.

    The dense BN set is kept as BatchNorm (not folded) so the network fine-tunes as usual.
    """
    if backbone.width != 64:
        raise UserError(
            f"--format torchvision: torchvision's ResNets have width 64 and this run has width {backbone.width}; "
            f"export with --format pt, torchscript or onnx instead"
        )
    ours = backbone.state_dict()
    return {theirs: ours[key].detach().clone() for key, theirs in torchvision_names(backbone).items()}


def _write(out: Path, write) -> None:
    try:
        atomic_write(Path(out), write)
    except OSError as exc:
        raise UserError(f"cannot write {out} ({exc.strerror or exc}); choose an --out you can write to") from None


def write_bytes(out: Path, data: bytes) -> None:
    _write(out, lambda fh: fh.write(data))


def write_state_dict(out: Path, state: dict) -> None:
    _write(out, lambda fh: torch.save(state, fh))
