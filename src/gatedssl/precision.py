"""The float format of the forward pass: bf16 autocast wherever the hardware computes bf16 natively.

On CUDA that is every GPU this library targets. On the CPU it is those with AVX512-BF16 or AMX
(checked through oneDNN); there bf16 convolutions make the whole training step 1.2x (width 8) to
1.8x (width 64) faster (BENCHMARKS.md). Elsewhere the CPU emulates bf16 slowly, so auto stays fp32.
Losses still compute in float32 (losses/ssl.py), and weights and optimizer state stay float32.
"""

from __future__ import annotations

import functools

import torch

PRECISIONS = ("auto", "bf16", "fp32")


@functools.cache
def cpu_has_native_bf16() -> bool:
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def uses_bf16(device: torch.device | str, precision: str = "auto") -> bool:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {PRECISIONS}")
    device = torch.device(device)
    if precision != "auto":
        return precision == "bf16"
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())


def autocast(device: torch.device | str, precision: str = "auto") -> torch.autocast:
    device = torch.device(device)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=uses_bf16(device, precision))
