"""Where the two views of each batch come from: the fast device path, or the common baseline.

Both yield (view1, view2) float batches, normalised, on the training device, `len()` batches
per epoch (drop_last, so every step has the same shapes). An epoch is `epoch(order, start)`:
`new_order()` draws the epoch's sample order, and a run stopped mid-epoch resumes at `start`
with the saved order, so the resumed run sees exactly the batches the uninterrupted one would. The trainer and the throughput
benchmark take either one, so a speed comparison is between data paths only.

- `DeviceViews` (default): the dataset sits on the device as uint8; each step indexes a batch
  and `BatchAugment` makes both views there (one recipe for both, or one per view: the
  reference's CIFAR-100 recipe blurs only the second). No decoding, no CPU worker, no host
  sync. A streamed folder dataset (`ImageFiles`) comes instead a batch at a time from DataLoader
  workers (pinned memory, non-blocking copy) and meets the same augmentation.
- `LoaderViews` (`--data-pipeline loader`): torchvision.transforms.v2 applied image by image
  in DataLoader workers, the way most SSL code does it. Kept as the measured baseline.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from ..distributed import shard
from ..names import PIPELINES
from .augment import AugmentConfig, BatchAugment
from .streaming import ImageFiles, read_batches


def _per_view(cfg):
    """(view 1, view 2) from one item for both views or a pair."""
    return cfg if isinstance(cfg, tuple) else (cfg, cfg)


class DeviceViews:
    def __init__(
        self,
        images: torch.Tensor | ImageFiles,
        augment: BatchAugment | tuple[BatchAugment, BatchAugment],
        batch_size: int,
        device: torch.device,
    ):
        self.images = images if isinstance(images, ImageFiles) else images.to(device)
        self.augments, self.batch_size, self.device = _per_view(augment), batch_size, device

    def __len__(self) -> int:
        return len(self.images) // self.batch_size

    def new_order(self) -> torch.Tensor:
        return torch.randperm(len(self.images), device=self.device)

    def batches(self, order: torch.Tensor, start: int = 0) -> Iterator[torch.Tensor]:
        """The epoch's uint8 batches from step `start` on, before augmentation: under torchrun, this
        rank's contiguous share of each global batch (one order for all ranks)."""
        indices, s = order[start * self.batch_size : len(self) * self.batch_size], shard()
        if s.world > 1:
            local = self.batch_size // s.world
            indices = indices.view(-1, self.batch_size)[:, s.rows(local)].reshape(-1)
        return read_batches(self.images, indices, self.batch_size // s.world, self.device)

    def pair(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """View 1, then view 2: with one recipe, the random stream of calling it twice."""
        return self.augments[0](batch), self.augments[1](batch)

    def epoch(self, order: torch.Tensor, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in self.batches(order, start):
            yield self.pair(batch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.epoch(self.new_order())


def torchvision_transform(cfg: AugmentConfig) -> v2.Compose:
    """The same recipe as `BatchAugment`, as per-image torchvision.transforms.v2 ops."""
    interpolation = v2.InterpolationMode.BICUBIC if cfg.interpolation == "bicubic" else v2.InterpolationMode.BILINEAR
    ops = [
        v2.RandomResizedCrop(cfg.crop_size, scale=cfg.scale, ratio=cfg.ratio, interpolation=interpolation, antialias=True),
        v2.RandomHorizontalFlip(cfg.flip_p),
        v2.RandomApply([v2.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)], p=cfg.jitter_p),
        v2.RandomGrayscale(cfg.gray_p),
    ]
    if cfg.blur_p > 0:
        kernel = max(3, int(0.1 * cfg.crop_size) // 2 * 2 + 1)
        ops.append(v2.RandomApply([v2.GaussianBlur(kernel, cfg.blur_sigma)], p=cfg.blur_p))
    ops += [v2.RandomSolarize(128, p=cfg.solarize_p), v2.ToDtype(torch.float32, scale=True), v2.Normalize(cfg.mean, cfg.std)]
    return v2.Compose(ops)


class _TwoViews(Dataset):
    def __init__(self, images: torch.Tensor | ImageFiles, transforms: tuple):
        self.images, self.transforms = images, transforms

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        image = self.images[i]
        return self.transforms[0](image), self.transforms[1](image)


class LoaderViews:
    def __init__(
        self,
        images: torch.Tensor | ImageFiles,
        cfg: AugmentConfig | tuple[AugmentConfig, AugmentConfig],
        batch_size: int,
        device: torch.device,
        workers: int | None = None,
    ):
        if workers is None:
            workers = os.cpu_count() or 1
        self.device = device
        transforms = tuple(torchvision_transform(c) for c in _per_view(cfg))
        self.loader = DataLoader(
            _TwoViews(images if isinstance(images, ImageFiles) else images.cpu(), transforms),
            batch_size=batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            persistent_workers=workers > 0,
        )

    def __len__(self) -> int:
        return len(self.loader)

    def new_order(self) -> None:
        return None  # the DataLoader's sampler draws it

    def epoch(self, order: None = None, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """A mid-epoch resume skips `start` batches of a fresh order: same step count, not the same batches."""
        for step, (x1, x2) in enumerate(self.loader):
            if step >= start:
                yield x1.to(self.device, non_blocking=True), x2.to(self.device, non_blocking=True)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.epoch()


def make_views(
    pipeline: str,
    images: torch.Tensor | ImageFiles,
    cfg: AugmentConfig | tuple[AugmentConfig, AugmentConfig],
    batch_size: int,
    device: torch.device,
):
    """`cfg`: one recipe for both views, or (view 1's, view 2's)."""
    if pipeline == "device":
        return DeviceViews(images, tuple(BatchAugment(c) for c in _per_view(cfg)), batch_size, device)
    if pipeline == "loader":
        return LoaderViews(images, cfg, batch_size, device)
    raise ValueError(f"unknown data pipeline {pipeline!r}; choose from {PIPELINES}")
