"""ONNX files that describe themselves, their INT8 form, and running them behind `gatedssl.load`'s interface.

Every ONNX export carries, in the model's metadata (`metadata_props`, JSON values), what a runtime needs to feed
it and what its output means: input size, layout and channel order, mean and std, the sub-network, its MACs, the
gatedssl version, and a classifier's class names. `gatedssl.load("model.onnx")` reads them back and runs the file
in onnxruntime with the same `embed` / `predict` / `transform` as a checkpoint.

INT8 is onnxruntime's static quantization (QDQ, per-channel weights, unsigned activations with signed weights,
the form its x86 kernels run fastest), calibrated on images of the run's own training data.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from .encoder import EvalTransform

METADATA_FORMAT = "gatedssl-onnx/1"
INT8 = "int8"
QUANTIZE = (INT8,)
CALIBRATION_IMAGES = 300  # INT8 calibration: enough for stable activation ranges, seconds to run


def describe(transform: EvalTransform, subnet: str, macs: int, macs_ratio: float, output: str, **extra) -> dict[str, str]:
    """The metadata an ONNX export carries (`about`, every value as JSON)."""
    return {k: json.dumps(v) for k, v in about(transform, subnet, macs, macs_ratio, output, **extra).items()}


def about(transform: EvalTransform, subnet: str, macs: int, macs_ratio: float, output: str, **extra) -> dict:
    """What an exported file says of itself: its input, its sub-network and MACs, the gatedssl that wrote it."""
    from .. import __version__

    values = {
        "format": METADATA_FORMAT,
        "gatedssl_version": __version__,
        "input": "images",
        "output": output,
        "input_shape": ["N", 3, transform.crop_size, transform.crop_size],
        "layout": "NCHW",
        "channel_order": "RGB",
        "pixel_scale": "0-1 (uint8 / 255), then (x - mean) / std",
        "mean": list(transform.mean),
        "std": list(transform.std),
        "crop_size": transform.crop_size,
        "stored_size": transform.stored_size,
        "subnet": subnet,
        "macs": int(macs),
        "macs_ratio": float(macs_ratio),
        **extra,
    }
    return values


def with_metadata(data: bytes, values: dict[str, str]) -> bytes:
    import onnx

    model = onnx.load_from_string(data)
    present = {entry.key: entry for entry in model.metadata_props}
    for key, value in values.items():
        entry = present.get(key) or model.metadata_props.add()
        entry.key, entry.value = key, value
    return model.SerializeToString()


def read_metadata(session) -> dict:
    """An onnxruntime session's gatedssl metadata, decoded ({} for a file gatedssl did not write)."""
    raw = session.get_modelmeta().custom_metadata_map
    out = {}
    for key, value in raw.items():
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def session(data: bytes | str | Path, threads: int = 0):
    """A CPU onnxruntime session (threads 0: onnxruntime's default)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    source = data if isinstance(data, bytes) else str(data)
    return onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def calibration_batches(splits, count: int, batch_size: int = 50) -> Iterator[np.ndarray]:
    """`count` training images spread evenly over the run's training set, as the export's input (eval transform)."""
    from ..data.augment import center_crop, normalize
    from ..data.streaming import read_batches
    from ..evaluation.evaluate import spread

    images = splits.train if splits.labeled else splits.pretrain
    for batch in read_batches(images.images, spread(len(images.labels), count), batch_size, torch.device("cpu")):
        yield normalize(center_crop(batch, splits.crop_size), splits.mean, splits.std).float().contiguous().numpy()


def quantize_int8(data: bytes, batches: Iterator[np.ndarray]) -> bytes:
    """The fp32 ONNX model `data` statically quantized to INT8 (QDQ, per-channel weights), calibrated on `batches`;
    its metadata is kept."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(batches)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"images": batch}

    with tempfile.TemporaryDirectory() as folder:
        fp32, prepared, int8 = (Path(folder) / name for name in ("fp32.onnx", "prepared.onnx", "int8.onnx"))
        fp32.write_bytes(data)
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(int8),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        metadata = {entry.key: entry.value for entry in onnx.load_from_string(data).metadata_props}
        return with_metadata(int8.read_bytes(), {**metadata, "quantized": json.dumps(INT8)})


def calibration_count(splits, count: int | None) -> int:
    """How many training images calibrate INT8: `count` (at most the run's), or 300 (all, if the run has fewer)."""
    images = splits.train if splits.labeled else splits.pretrain
    if count is None:
        return min(CALIBRATION_IMAGES, len(images.labels))
    if count > len(images.labels):
        raise UserError(f"--calibration-images {count}: the training set has {len(images.labels)} images; give at most that many")
    return count


def int8_report(data: bytes, splits, count: int | None, score, fp32: dict, metric: str) -> dict:
    """The INT8 form of the ONNX model `data`, calibrated on `count` training images (None: 300, or all if fewer),
    measured beside fp32: `score(bytes)` (kNN and probe for an encoder, top-1 for a classifier), batch-1 latency
    under onnxruntime at 1 thread, size. "data" holds the INT8 bytes."""
    count = calibration_count(splits, count)
    int8 = quantize_int8(data, calibration_batches(splits, count))
    measured = score(int8)
    fp32_ms, int8_ms = latency_ms(data, splits.crop_size), latency_ms(int8, splits.crop_size)
    change = None if measured.get(metric) is None or fp32.get(metric) is None else measured[metric] - fp32[metric]
    return {
        "data": int8,
        "calibration_images": count,
        "ops": quantized_ops(int8),
        "metric": metric,
        **measured,
        "change": change,
        "latency_ms": {"runtime": "onnxruntime", "batch": 1, "threads": 1, "fp32": fp32_ms, "int8": int8_ms, "ratio": int8_ms / fp32_ms},
        "bytes": len(int8),
        "fp32_bytes": len(data),
    }


def top1(data: bytes, splits, batch_size: int = 500) -> float:
    """Top-1 (%) of a classifier's ONNX file on the test split."""
    from ..data.augment import center_crop, normalize
    from ..data.streaming import read_batches

    net, test, correct = OnnxNetwork(data, "logits"), splits.test, 0
    everything = torch.arange(len(test.labels))
    for rows, x in zip(everything.split(batch_size), read_batches(test.images, everything, batch_size, torch.device("cpu"))):
        logits = net(normalize(center_crop(x, splits.crop_size), splits.mean, splits.std).float())
        correct += int((logits.argmax(1) == test.labels[rows]).sum())
    return round(100 * correct / len(test.labels), 2)


def quantized_ops(data: bytes) -> dict[str, int]:
    """How many nodes of each quantization op type the model holds (QuantizeLinear, DequantizeLinear, QLinearConv, ...)."""
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load_from_string(data).graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") or node.op_type.startswith("QLinear") or node.op_type.endswith("Integer"):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def latency_ms(data: bytes, size: int, batch: int = 1, threads: int = 1, repeats: int = 50) -> float:
    """Median wall ms of one forward of the model under onnxruntime (after warm-up)."""
    from .latency_target import median_ms

    runner = session(data, threads)
    feed = {"images": np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)}
    return median_ms(lambda: runner.run(None, feed), repeats=repeats, warmup=5)


class OnnxNetwork(nn.Module):
    """An ONNX file's one output as a module (CPU, float32): the export measures an INT8 file with the same code as a
    plain network (`feature_dim`, `macs(size)`), and `gatedssl.load` runs it."""

    def __init__(self, data: bytes | str | Path, output: str | None = None, threads: int = 0):
        super().__init__()
        self.runner = session(data, threads)
        self.metadata = read_metadata(self.runner)
        names = [o.name for o in self.runner.get_outputs()]
        self.output = output or self.metadata.get("output") or names[0]
        if self.output not in names:
            raise UserError(f"this ONNX file has no output {self.output!r}; it has {', '.join(names)}")
        shape = self.runner.get_outputs()[names.index(self.output)].shape
        self.feature_dim = shape[-1] if isinstance(shape[-1], int) else None
        self.input_shape = tuple(d if isinstance(d, int) else None for d in self.runner.get_inputs()[0].shape)  # None: any

    def macs(self, size: int) -> int:
        return int(self.metadata.get("macs", 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != len(self.input_shape) or any(want not in (None, got) for want, got in zip(self.input_shape, x.shape)):
            want = "x".join("N" if d is None else str(d) for d in self.input_shape)
            raise ValueError(
                f"this ONNX file takes images of shape {want} (its size is fixed at export), got {tuple(x.shape)}; "
                f"crop or resize them, or pass uint8 or PIL images, which its transform crops"
            )
        (out,) = self.runner.run([self.output], {"images": x.detach().float().cpu().contiguous().numpy()})
        return torch.from_numpy(out).to(x.device)


class OnnxModel:
    """`gatedssl.load` of an ONNX export: its one sub-network in onnxruntime, behind the Encoder interface
    (`embed`, `predict`, `transform`, `subnets`, `classes`)."""

    def __init__(self, path: str | Path, threads: int = 0):
        try:
            first = OnnxNetwork(path, threads=threads)
        except UserError:
            raise
        except Exception as exc:  # onnxruntime's own errors: a torn or foreign file
            raise UserError(f"{path}: onnxruntime cannot read it ({str(exc).splitlines()[0][:160]}); export it again") from None
        meta = first.metadata
        if meta.get("format") != METADATA_FORMAT and "crop_size" not in meta:
            raise UserError(
                f"{path} has no gatedssl metadata (input size, mean, std): it was not written by `gatedssl export` "
                f"(or by an older version); export it again, or run it with onnxruntime directly"
            )
        self.metadata, self.path = meta, Path(path)
        try:
            size = int(meta["crop_size"])
            mean, std = tuple(float(v) for v in meta["mean"]), tuple(float(v) for v in meta["std"])
            self.transform = EvalTransform(size, int(meta.get("stored_size", size)), mean, std)
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{path}: its metadata is damaged ({type(exc).__name__}: {exc}); export it again") from None
        self.classes: list[str] | None = meta.get("classes")
        self.subnets = [meta.get("subnet", "dense")]
        self.config: dict = {}
        names = [o.name for o in first.runner.get_outputs()]
        self.logits = first if first.output == "logits" else None
        self.features = first if first.output != "logits" else (OnnxNetwork(path, "features", threads) if "features" in names else None)

    def _check(self, subnet: str | None) -> None:
        if subnet not in (None, *self.subnets):
            raise ValueError(f"subnet {subnet!r} is not in this model; it has {', '.join(self.subnets)}")

    @torch.no_grad()
    def embed(self, images, subnet: str | None = None) -> torch.Tensor:
        """Features (N, D) of images (see EvalTransform for what it takes)."""
        self._check(subnet)
        if self.features is None:
            raise ValueError(f"{self.path} holds a classifier's logits only; use predict, or load its .pt export for features")
        return self.features(self.transform(images))

    @torch.no_grad()
    def predict(self, images, subnet: str | None = None) -> tuple[list[str], torch.Tensor]:
        """Class names and class probabilities (N, classes) of images, by a fine-tuned model's head."""
        self._check(subnet)
        if self.logits is None or not self.classes:
            raise ValueError(f"{self.path} is an encoder without a classifier head; fine-tune it first (gatedssl finetune)")
        probabilities = self.logits(self.transform(images)).softmax(1)
        return [self.classes[i] for i in probabilities.argmax(1).tolist()], probabilities
