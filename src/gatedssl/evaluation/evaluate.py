"""Frozen-backbone evaluation of a run's sub-networks: kNN accuracy and MACs actually spent on the test set."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.augment import center_crop, normalize
from ..data.sources import DatasetSplits, ImageSet
from ..data.streaming import read_batches
from ..models.backbone import GatedBackbone
from ..models.subnets import as_subnet
from ..precision import autocast
from .knn import knn_top1


@dataclass
class Features:
    features: torch.Tensor  # (N, D) float32
    macs: torch.Tensor  # (N,) per-sample MACs of the pass
    channel_frequency: list[torch.Tensor]  # per block, (C,) share of samples in which each middle channel is on
    dense_macs: int

    @property
    def density(self) -> torch.Tensor:
        """(blocks,) mean share of active channels per gated block."""
        return torch.stack([f.mean() for f in self.channel_frequency])


@torch.no_grad()
def extract(
    backbone: GatedBackbone,
    images: ImageSet,
    splits: DatasetSplits,
    subnet: str,
    device: torch.device,
    batch_size: int = 500,
    precision: str = "auto",
    indices: torch.Tensor | None = None,
) -> Features:
    """Eval-mode features (deterministic gates) of the images at `indices` (default all); images are moved
    to (or decoded for) the device a batch at a time."""
    was_training = backbone.training
    backbone.eval()
    feats, macs, on_counts = [], [], None
    dense_macs = 0
    indices = torch.arange(len(images.labels)) if indices is None else indices
    for batch in read_batches(images.images, indices, batch_size, device):
        x = normalize(center_crop(batch, splits.crop_size), splits.mean, splits.std)
        with autocast(device, precision):
            out = backbone(x.contiguous(memory_format=torch.channels_last), as_subnet(subnet))
        feats.append(out.features.float())
        macs.append(out.macs)
        counts = [m.sum(0) for m in out.masks]
        on_counts = counts if on_counts is None else [a + b for a, b in zip(on_counts, counts)]
        dense_macs = out.dense_macs
    backbone.train(was_training)
    n = len(indices)
    return Features(torch.cat(feats), torch.cat(macs), [c / n for c in on_counts], dense_macs)


ONLINE_BANK, ONLINE_QUERIES = 5000, 1000


def spread(n: int, m: int) -> torch.Tensor:
    """m indices spread evenly over range(n): a fixed subset that needs no random draw (the training stream stays as it is)."""
    return torch.arange(n) if m >= n else torch.linspace(0, n - 1, m).round().long()


def evaluate(
    backbone: GatedBackbone,
    splits: DatasetSplits,
    device: torch.device,
    protocol: str = "weighted",
    k: int = 200,
    temperature: float = 0.07,
    precision: str = "auto",
    subnets: tuple[str, ...] = ("dense", "gated"),
) -> dict:
    """kNN top-1 (percent) and test-set MACs of each named sub-network, one entry under each name.

    Unlabeled data (splits.labeled False) has no kNN (knn_top1 None); its MACs and channel usage
    are measured on up to ONLINE_QUERIES of the pretraining images instead of a test split."""
    result = {}
    if splits.labeled:
        measured, indices = splits.test, None
        train_labels, test_labels = splits.train.labels.to(device), splits.test.labels.to(device)
        num_classes = len(splits.train.classes)
    else:
        measured, indices = splits.pretrain, spread(len(splits.pretrain.labels), ONLINE_QUERIES)
    for name in subnets:
        test = extract(backbone, measured, splits, name, device, precision=precision, indices=indices)
        mean_macs = test.macs.mean().item()
        result[name] = {
            "knn_top1": None,
            "macs": mean_macs,
            "macs_ratio": mean_macs / test.dense_macs,
            "density": [round(d, 4) for d in test.density.tolist()],
            "macs_ratio_per_class": {},
        }
        if splits.labeled:
            train = extract(backbone, splits.train, splits, name, device, precision=precision)
            result[name]["knn_top1"] = knn_top1(
                train.features, train_labels, test.features, test_labels, num_classes, protocol, k, temperature
            )
            per_class = torch.zeros(num_classes, device=test.macs.device).index_add_(0, test_labels, test.macs)
            per_class /= torch.bincount(test_labels, minlength=num_classes).clamp(min=1)
            result[name]["macs_ratio_per_class"] = dict(
                zip(splits.test.classes, [round(v / test.dense_macs, 5) for v in per_class.tolist()])
            )
        if as_subnet(name).gated:
            result[name]["channel_frequency"] = [[round(v, 4) for v in f.tolist()] for f in test.channel_frequency]
    result["knn"] = {"protocol": protocol, "k": k, "temperature": temperature}
    return result


def online_knn(
    backbone: GatedBackbone,
    splits: DatasetSplits,
    device: torch.device,
    passes: tuple[str, ...],
    protocol: str = "weighted",
    k: int = 200,
    temperature: float = 0.07,
    precision: str = "auto",
) -> dict[str, float]:
    """kNN top-1 during training (--eval-every): a bank of at most ONLINE_BANK train images and at most
    ONLINE_QUERIES test images, so that it costs a small part of an epoch; the final evaluation uses all."""
    bank, queries = spread(len(splits.train.labels), ONLINE_BANK), spread(len(splits.test.labels), ONLINE_QUERIES)
    bank_labels, query_labels = splits.train.labels[bank].to(device), splits.test.labels[queries].to(device)
    result = {}
    for name in passes:
        train = extract(backbone, splits.train, splits, name, device, precision=precision, indices=bank)
        test = extract(backbone, splits.test, splits, name, device, precision=precision, indices=queries)
        result[f"knn_{name}"] = knn_top1(
            train.features, bank_labels, test.features, query_labels, len(splits.train.classes), protocol, k, temperature
        )
    return result
