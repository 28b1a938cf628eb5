"""SyncBatchNorm for every BN of the network, the per-sub-network sets included (`--sync-bn`).

torch's `SyncBatchNorm.convert_sync_batchnorm` replaces each BN module by a plain SyncBatchNorm,
which would drop `SharedBatchNorm`'s width slots and its (x, sub-network) call. Here plain BNs
are converted by torch, and a SharedBatchNorm becomes the same object with SyncBatchNorm's
forward: its parameters, buffers and state-dict keys stay as they are.
"""

from __future__ import annotations

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .resnet import SharedBatchNorm


class SyncSharedBatchNorm(SharedBatchNorm, nn.SyncBatchNorm):
    """SharedBatchNorm whose own (dense) set takes its statistics over every rank."""


def convert_sync_bn(module: nn.Module) -> nn.Module:
    """Convert in place (and return) every BatchNorm under `module` to synchronise across ranks."""
    for name, child in module.named_children():
        if isinstance(child, SharedBatchNorm):
            child.__class__ = SyncSharedBatchNorm
            child.process_group = None  # the default group: all ranks
            convert_sync_bn(child)  # its width slots
        elif isinstance(child, _BatchNorm):
            setattr(module, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
        else:
            convert_sync_bn(child)
    return module
