"""Pretraining: the loop, the optimizers and schedule, and checkpoints."""

from ..checkpoint import load_checkpoint, save_checkpoint
from ..factory import build_objective
from ..summary import format_summary
from .optim import LARS, build_optimizer, warmup_cosine
from .trainer import pretrain

__all__ = [
    "LARS",
    "build_objective",
    "build_optimizer",
    "format_summary",
    "load_checkpoint",
    "pretrain",
    "save_checkpoint",
    "warmup_cosine",
]
