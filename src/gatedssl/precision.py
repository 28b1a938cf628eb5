"""The float format of the forward pass: bf16 autocast on CUDA, fp32 on the CPU unless asked.

On the CPU bf16 is opt-in (`--precision bf16`): on CPUs with native bf16 (AVX512-BF16, AMX) it
makes the training step 1.2x (width 8) to 1.9x (width 64) faster, but on the 16-epoch CPU demo it
cost 2.4 and 3.6 points of dense kNN on two seeds (BENCHMARKS.md), so auto keeps fp32 there.
GPUs without native bf16 (V100, T4) get fp16 under auto, with a GradScaler: fp16's narrow
exponent underflows small gradients unless the loss is scaled (the reference trained in fp16).
Losses compute in float32 either way (losses/ssl.py); weights and optimizer state stay float32.
"""

from __future__ import annotations

import torch

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def resolve_precision(device: torch.device | str, precision: str = "auto") -> str:
    """The format `precision` means on `device`: bf16, fp16 or fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {PRECISIONS}")
    if precision != "auto":
        return precision
    device = torch.device(device)
    if device.type != "cuda":
        return "fp32"
    try:
        native = torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch before 2.3 has no including_emulation
        native = torch.cuda.is_bf16_supported()
    return "bf16" if native else "fp16"


def uses_bf16(device: torch.device | str, precision: str = "auto") -> bool:
    return resolve_precision(device, precision) == "bf16"


def autocast(device: torch.device | str, precision: str = "auto") -> torch.autocast:
    device = torch.device(device)
    dtype = _DTYPES[resolve_precision(device, precision)]
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def grad_scaler(device: torch.device | str, precision: str = "auto") -> torch.amp.GradScaler | None:
    """A loss scaler for fp16 training, None otherwise (bf16 has fp32's exponent range)."""
    device = torch.device(device)
    return torch.amp.GradScaler(device.type) if resolve_precision(device, precision) == "fp16" else None
