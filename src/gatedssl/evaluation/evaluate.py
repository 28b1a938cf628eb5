"""Frozen-backbone evaluation of both passes: kNN accuracy and MACs actually spent on the test set."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.augment import center_crop, normalize
from ..data.sources import DatasetSplits, ImageSet
from ..models.resnet import GatedResNet
from .knn import knn_top1


@dataclass
class Features:
    features: torch.Tensor  # (N, D) float32
    macs: torch.Tensor  # (N,) per-sample MACs of the pass
    density: torch.Tensor  # (blocks,) mean share of active channels per gated block
    dense_macs: int


@torch.no_grad()
def extract(backbone: GatedResNet, images: ImageSet, splits: DatasetSplits, gated: bool, device: torch.device, batch_size: int = 500) -> Features:
    """Eval-mode features (deterministic gates); images are moved to the device a batch at a time."""
    was_training = backbone.training
    backbone.eval()
    feats, macs, active = [], [], 0
    dense_macs = 0
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    for start in range(0, len(images.labels), batch_size):
        batch = images.images[start : start + batch_size].to(device, non_blocking=True)
        x = normalize(center_crop(batch, splits.crop_size), splits.mean, splits.std)
        with autocast:
            out = backbone(x.contiguous(memory_format=torch.channels_last), gated=gated)
        feats.append(out.features.float())
        macs.append(out.macs)
        active = active + torch.stack([m.sum() / m.shape[1] for m in out.masks])
        dense_macs = out.dense_macs
    backbone.train(was_training)
    n = len(images.labels)
    return Features(torch.cat(feats), torch.cat(macs), active / n, dense_macs)


def evaluate(backbone: GatedResNet, splits: DatasetSplits, device: torch.device, protocol: str = "weighted", k: int = 200, temperature: float = 0.07) -> dict:
    """kNN top-1 (percent) and test-set MACs for the dense and the gated pass."""
    result = {}
    train_labels = splits.train.labels.to(device)
    test_labels = splits.test.labels.to(device)
    num_classes = len(splits.train.classes)
    for name, gated in (("dense", False), ("gated", True)):
        train = extract(backbone, splits.train, splits, gated, device)
        test = extract(backbone, splits.test, splits, gated, device)
        top1 = knn_top1(train.features, train_labels, test.features, test_labels, num_classes, protocol, k, temperature)
        mean_macs = test.macs.mean().item()
        result[name] = {
            "knn_top1": top1,
            "macs": mean_macs,
            "macs_ratio": mean_macs / test.dense_macs,
            "density": [round(d, 4) for d in test.density.tolist()],
        }
    result["knn"] = {"protocol": protocol, "k": k, "temperature": temperature}
    return result
