"""What each rank runs in the torchrun tests (tests/test_distributed.py); not a test module itself.

python -m torch.distributed.run --standalone --nproc_per_node 2 tests/distributed_worker.py grads OUT
... distributed_worker.py train OUT_RUN [--kill-rank R] [--fail-rank R] [flags for gatedssl pretrain]
"""

from __future__ import annotations

import argparse
import builtins
import os
import signal
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

from gatedssl.config import PretrainConfig, resolve
from gatedssl.factory import build_objective

METHODS = ("vicreg", "simclr", "barlow")
VARIANTS = ("ddp", "no_allreduce", "no_gather", "warmup")  # warmup: a gate warm-up step (gates unused), as the trainer wraps it
GLOBAL_BATCH = 8


def equivalence_config(method: str) -> PretrainConfig:
    return resolve(PretrainConfig(dataset="embedded", method=method, mode="dual", width=4, proj_dim=32, budget=0.5))


def step_gradients(method: str, variant: str = "ddp", rank: int = 0, world: int = 1) -> dict[str, torch.Tensor]:
    """One dual-mode step (budget and bound losses on) in float64 with every BN in eval mode (a state both
    sides share: BN statistics are per rank otherwise); the gradients of every parameter that got one."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # the gate noise too
    try:
        return _step_gradients(method, variant, rank, world)
    finally:
        torch.set_default_dtype(previous)


def _step_gradients(method: str, variant: str, rank: int, world: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    objective = build_objective(equivalence_config(method)).double().train()
    for module in objective.modules():
        if isinstance(module, _BatchNorm):
            module.eval()
    objective.gather = variant != "no_gather"
    g = torch.Generator().manual_seed(1)
    x1, x2 = (torch.randn(GLOBAL_BATCH, 3, 32, 32, generator=g) for _ in range(2))
    rows = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
    ddp = {"find_unused_parameters": True} if variant == "warmup" else {}
    model = DistributedDataParallel(objective, **ddp) if variant != "no_allreduce" and world > 1 else objective
    torch.manual_seed(2)  # the gate noise: drawn for the global batch on every rank
    terms = model(x1[rows], x2[rows], 0.5, variant != "warmup")
    terms["loss"].backward()
    return {name: p.grad.detach().clone() for name, p in objective.named_parameters() if p.grad is not None}


def grads(out: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    result = {(m, v): step_gradients(m, v, rank, world) for m in METHODS for v in VARIANTS}
    torch.save(result, Path(out) / f"grads_rank{rank}.pt")
    dist.destroy_process_group()


def _spy_on_writes(folder: Path) -> list[str]:
    """Record every Python-level write under `folder` (open for writing, os.open, renames, links, deletes, mkdir)."""
    seen: list[str] = []
    root = str(folder.resolve())

    def note(path, what):
        try:
            p = os.path.realpath(os.fspath(path))
        except TypeError:
            return
        if p.startswith(root):
            seen.append(f"{what} {p}")

    real_open, real_os_open = builtins.open, os.open

    def spy_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+"):
            note(file, "open")
        return real_open(file, mode, *args, **kwargs)

    def spy_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            note(path, "os.open")
        return real_os_open(path, flags, *args, **kwargs)

    builtins.open, os.open = spy_open, spy_os_open
    for name in ("replace", "rename", "link", "unlink", "remove", "mkdir", "makedirs", "rmdir"):
        real = getattr(os, name)

        def wrapped(*args, _real=real, _name=name, **kwargs):
            note(args[0], _name)
            return _real(*args, **kwargs)

        setattr(os, name, wrapped)
    return seen


def train(out: str, argv: list[str]) -> int:
    from gatedssl import cli
    from gatedssl.errors import UserError
    from gatedssl.training import trainer

    rank = int(os.environ["RANK"])
    ours = argparse.ArgumentParser()
    ours.add_argument("--kill-rank", type=int)
    ours.add_argument("--fail-rank", type=int)
    ours.add_argument("--term-rank", type=int)
    known, argv = ours.parse_known_args(argv)
    kill_rank, fail_rank = known.kill_rank, known.fail_rank
    first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
    real_step, calls = trainer.train_step, [0]

    def step(*args, **kwargs):
        calls[0] += 1
        if rank == kill_rank and first_attempt and calls[0] == 6:  # mid-epoch 2 of 4-step epochs, after epoch 1's checkpoint
            os.kill(os.getpid(), signal.SIGKILL)
        if rank == known.term_rank and first_attempt and calls[0] == 6:  # the next step boundary is epoch 2, step 2
            os.kill(os.getpid(), signal.SIGTERM)
        if rank == fail_rank and calls[0] == 2:
            raise UserError("injected failure on this rank only")
        return real_step(*args, **kwargs)

    trainer.train_step = step
    writes = _spy_on_writes(Path(out)) if rank != 0 else []
    code = cli.main(["pretrain", "--out", out, "--device", "cpu", "--quiet", *argv])
    if rank != 0:
        print(f"rank {rank} writes: {writes}", flush=True)
    return code


if __name__ == "__main__":
    if os.environ.get("GATEDSSL_DEBUG_HANG"):
        import faulthandler

        faulthandler.dump_traceback_later(int(os.environ["GATEDSSL_DEBUG_HANG"]), exit=True)
    command, out, *rest = sys.argv[1:]
    if command == "grads":
        grads(out)
    else:
        sys.exit(train(out, rest))
