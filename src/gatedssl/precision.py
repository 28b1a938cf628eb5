"""The float format of the forward pass: bf16 autocast on CUDA, fp32 on the CPU unless asked.

On the CPU bf16 is opt-in (`--precision bf16`): on CPUs with native bf16 (AVX512-BF16, AMX) it
makes the training step 1.2x (width 8) to 1.9x (width 64) faster, but on the 16-epoch CPU demo it
cost 2.4 and 3.6 points of dense kNN on two seeds (BENCHMARKS.md), so auto keeps fp32 there.
Losses compute in float32 either way (losses/ssl.py); weights and optimizer state stay float32.
"""

from __future__ import annotations

import torch

PRECISIONS = ("auto", "bf16", "fp32")


def uses_bf16(device: torch.device | str, precision: str = "auto") -> bool:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {PRECISIONS}")
    if precision == "auto":
        return torch.device(device).type == "cuda"
    return precision == "bf16"


def autocast(device: torch.device | str, precision: str = "auto") -> torch.autocast:
    device = torch.device(device)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=uses_bf16(device, precision))
