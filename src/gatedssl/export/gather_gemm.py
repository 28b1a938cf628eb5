"""A matrix product over a weight's kept rows, read where they lie: conv1 of the real-skipping pass on small maps.

PyTorch has no such product: it copies the kept rows (index_select), then multiplies, which at batch 1 on small
maps costs as much as the product itself (BENCHMARKS.md). gather_gemm.c does both in one pass. (conv2's kept
channels are rows too, but a kernel that took them in place measured no faster in the network than PyTorch's copy
and product, so conv2 keeps those.) It is compiled at
first use with the machine's C compiler into a cache (GATEDSSL_CACHE, else ~/.cache/gatedssl), keyed by its source
and this CPU's features; without a compiler, or with GATEDSSL_KERNELS=0, the same products run in PyTorch.
The kernels run on one thread, so they are used only when torch runs on one (the deployed batch-1 case).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)
SOURCE = Path(__file__).with_name("gather_gemm.c")
_library: ctypes.CDLL | None | bool = False  # False: not tried yet; None: unavailable


def _cpu_features() -> str:
    """What the compiled code depends on: the architecture and the CPU's flags (-march=native)."""
    flags = ""
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith(("flags", "Features"))), "")
    except OSError:
        pass
    return f"{platform.machine()} {flags}"


def _build() -> ctypes.CDLL | None:
    if os.environ.get("GATEDSSL_KERNELS", "1") == "0":
        return None
    found = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    compiler = shlex.split(os.environ["CC"]) if os.environ.get("CC") else [found] if found else None  # CC may hold flags
    if compiler is None:
        log.info("no C compiler: the skipping pass copies kept weight rows before multiplying (slower at batch 1)")
        return None
    flags = ["-O3", "-march=native", "-shared", "-fPIC"]
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join([*compiler, *flags, _cpu_features()]).encode()).hexdigest()[:16]
    try:
        cache = Path(os.environ.get("GATEDSSL_CACHE") or Path.home() / ".cache" / "gatedssl")
        target = cache / f"gather_gemm-{key}.so"
        try:
            library = ctypes.CDLL(str(target))
        except OSError:  # not built yet, or torn (a crash mid-copy, a full disk): build it again
            cache.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=cache) as scratch:  # built aside, then renamed: never half-written
                built = Path(scratch) / target.name
                subprocess.run([*compiler, *flags, "-o", str(built), str(SOURCE)], check=True, capture_output=True, timeout=120)
                os.replace(built, target)
            library = ctypes.CDLL(str(target))
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:  # RuntimeError: no home folder
        log.info("the gather kernel could not be built (%s): the skipping pass copies kept weight rows instead", exc)
        return None
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    library.gather_dots.argtypes = [pointer, size, pointer, size, pointer, size, pointer, pointer, size, size, size]
    return library


def library() -> ctypes.CDLL | None:
    """The compiled kernel, or None where it cannot be built (built once per process)."""
    global _library
    if _library is False:
        _library = _build()
    return _library


def _usable(*tensors: torch.Tensor) -> ctypes.CDLL | None:
    if torch.get_num_threads() != 1 or not all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors):
        return None
    return library()


def gathered_dots(a: torch.Tensor, weight: torch.Tensor, rows: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """bias[rows] + a @ weight[rows].T without copying weight[rows]: a (P, K), weight (R, K), rows (M,) -> (P, M)."""
    kernels = _usable(a, weight, bias)
    if kernels is None:
        return torch.addmm(bias.index_select(0, rows), a, weight.index_select(0, rows).t())
    a, rows = a.contiguous(), rows.to(torch.int64).contiguous()
    assert weight.is_contiguous() and bias.is_contiguous() and a.shape[1] == weight.shape[1]
    out = a.new_empty(a.shape[0], len(rows))
    kernels.gather_dots(
        a.data_ptr(), a.stride(0), weight.data_ptr(), weight.stride(0), rows.data_ptr(), len(rows),
        bias.data_ptr(), out.data_ptr(), out.stride(0), a.shape[0], a.shape[1],
    )  # fmt: skip
    return out
