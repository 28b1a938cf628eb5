"""Many processes, one run: torch.distributed as `torchrun` starts it.

The rule that makes N ranks train like one process: every rank draws every random number for
the GLOBAL batch, from the same seed, and keeps its contiguous share of the rows. So the sample
order, the augmentation parameters and the gate noise of N ranks are those of one process with
the same global batch, and a checkpoint can move between world sizes. Losses that couple
samples (SimCLR's negatives, Barlow Twins' and VICReg's batch statistics, the budget's mean
MACs) see the global batch through differentiable collectives (`gather_rows`, `global_mean`):
every rank computes the same global loss, the collectives' backward sums the gradient back to
the rank that holds each row, and DDP's mean over ranks then gives the single-process gradient.

Nothing here launches processes or moves bytes itself: torchrun starts the ranks,
torch.distributed (NCCL on CUDA, gloo on the CPU) talks between them.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as collectives

# The public, differentiable all_gather (its backward sums each row's gradient back to its rank); torch 2.10+ calls it
# deprecated in favour of private functional collectives whose names still change between releases.
warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.all_gather is deprecated", category=FutureWarning)

# Rank 0 evaluates (kNN, probe) while the others wait in their next collective: give it time.
TIMEOUT = datetime.timedelta(minutes=60)


@dataclass(frozen=True)
class Shard:
    """This process's place in the run: rank `rank` of `world`."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        """The one rank that writes files and prints."""
        return self.rank == 0

    def rows(self, n_local: int) -> slice:
        """This rank's contiguous rows of a global batch of n_local * world."""
        return slice(self.rank * n_local, (self.rank + 1) * n_local)


_simulated: Shard | None = None
_control: dist.ProcessGroup | None = None
_joins = 0  # process groups joined by this process (pretrain called again, e.g. in a loop of runs)


def shard() -> Shard:
    if _simulated is not None:
        return _simulated
    if dist.is_available() and dist.is_initialized():
        return Shard(dist.get_rank(), dist.get_world_size())
    return Shard()


@contextlib.contextmanager
def simulate(rank: int, world: int) -> Iterator[None]:
    """Draw as rank `rank` of `world` would, in one process (tests of the global-draw rule)."""
    global _simulated
    previous, _simulated = _simulated, Shard(rank, world)
    try:
        yield
    finally:
        _simulated = previous


def global_rows(n_local: int) -> tuple[int, slice]:
    """(rows to draw, this rank's share of them) for a per-sample random draw of a local batch."""
    s = shard()
    return n_local * s.world, s.rows(n_local)


def env_world_size() -> int:
    """The world size torchrun announces (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init(device: torch.device) -> bool:
    """Join the process group torchrun described, if there is one to join; True if this call joined it.

    NCCL for CUDA tensors, plus a gloo group for the small host-side agreements (stop, save),
    which then never wait on the GPU stream."""
    global _control, _joins
    if env_world_size() <= 1 or dist.is_initialized():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    # torchrun keeps one store across the restarts of --max-restarts, and torch (2.14) does not key the process
    # group's rendezvous by attempt: a restarted rank can read the dead attempt's addresses and fail to connect.
    # Keyed here by attempt, and by how many groups this process joined before.
    store, rank, world = next(dist.rendezvous("env://", timeout=TIMEOUT))
    store = dist.PrefixStore(f"gatedssl/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/{_joins}", store)
    _joins += 1
    dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=TIMEOUT)
    _control = dist.new_group(backend="gloo", timeout=TIMEOUT) if backend != "gloo" else None
    return True


def lost_contact(exc: BaseException) -> bool:
    """Whether `exc` is a collective that failed because another rank is gone (its own error says why)."""
    if env_world_size() <= 1 or not isinstance(exc, RuntimeError):
        return False
    text = str(exc).lower()
    return isinstance(exc, dist.DistError) or "gloo" in text or "nccl" in text or "connection" in text


def close() -> None:
    global _control
    if dist.is_initialized():
        dist.destroy_process_group()
    _control = None


def local_device(device: torch.device) -> torch.device:
    """Each rank's own GPU (torchrun's LOCAL_RANK) when the run is on CUDA."""
    if device.type != "cuda" or env_world_size() == 1:
        return device
    index = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """The global batch of a per-rank (n, ...) tensor, rank order; gradients flow back to their rank."""
    if shard().world == 1 or not dist.is_initialized():
        return x
    return torch.cat(collectives.all_gather(x), dim=0)


def global_mean(x: torch.Tensor) -> torch.Tensor:
    """The mean over ranks of a per-rank mean (equal shares), differentiable."""
    if shard().world == 1 or not dist.is_initialized():
        return x
    return gather_rows(x[None]).mean(0)


def mean_over_ranks(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-rank metric sums as their global means (once per epoch, for the log)."""
    if shard().world == 1:
        return values
    out = {}
    for key, value in sorted(values.items()):  # the same order on every rank
        total = value.float().clone()
        dist.all_reduce(total)
        out[key] = total / dist.get_world_size()
    return out


def agree(*flags: bool) -> tuple[bool, ...]:
    """Each flag true on ANY rank, known to every rank: all ranks then stop or save at the same step."""
    if shard().world == 1:
        return flags
    votes = torch.tensor([int(f) for f in flags], dtype=torch.int32)
    dist.all_reduce(votes, op=dist.ReduceOp.MAX, group=_control)
    return tuple(bool(v) for v in votes.tolist())


def all_objects(obj) -> list:
    """Every rank's `obj` (rank order), on every rank."""
    if shard().world == 1:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj, group=_control)
    return out


def from_main(obj):
    """Rank 0's `obj` on every rank."""
    if shard().world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_control)
    return box[0]


def barrier() -> None:
    if shard().world > 1:
        dist.barrier(group=_control)
