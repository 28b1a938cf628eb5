"""Linear-probe accuracy of one sub-network of a frozen backbone (dense, gated, a slimmable width).

Two protocols:

- ``fast``: features of the (un-augmented, centre-cropped) train and test images are computed once
  and a linear head is trained on them. Seconds on a CPU for the embedded dataset, so it can run
  after every pretraining run; it is the number to compare runs of this library with each other.
- ``paper``: the linear evaluation of the paper (and of solo-learn, which it builds on): the head
  is trained on features of freshly augmented images (random resized crop + flip) every step,
  the backbone frozen in eval mode, and tested on centre crops. Costs a backbone forward per
  training image and epoch; the number to compare with published results.

Both train an ``nn.Linear`` with SGD (momentum 0.9) and a per-step cosine schedule, one run per
seed; seed ``s`` (``s = 0 .. seeds-1``) sets the head's initial weights, the batch order and, for
``paper``, the augmentations. Accuracies are percentages; ``top1_std``/``top5_std`` are the
sample standard deviation (n - 1) over the seeds, since the seeds are a sample of the run-to-run
spread we want to estimate; 0 for one seed.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.augment import BatchAugment, crop_flip
from ..data.sources import DatasetSplits
from ..data.streaming import read_batches
from ..models.backbone import GatedBackbone
from ..models.subnets import as_subnet
from ..precision import autocast
from ..progress import image_bar
from .evaluate import extract

__all__ = ["FAST", "PAPER", "PROTOCOLS", "ProbeResult", "linear_probe", "topk_accuracy", "train_linear_head"]

PROTOCOLS = ("fast", "paper")

# fast: tuned on the embedded dataset (5,000 / 1,000 images) over random and VICReg-trained
# ResNet-18s of width 8 and 64, both passes. On standardised features SGD lr 0.1 (batch 256) was
# within 1 point of the best of {0.01 .. 1.0} x {SGD, AdamW} everywhere; AdamW was never better.
# A small weight decay helps the trained networks; larger ones (1e-2) only help 512-d random
# features that overfit 5,000 images, and cost trained networks 1-2 points.
FAST = {"epochs": 100, "lr": 0.1, "weight_decay": 5e-4}
# paper: solo-learn's linear evaluation (scripts/linear/*: SGD, batch 256, lr 0.1, weight decay 0,
# 100 epochs), with the cosine schedule instead of its step decay at epochs 60 and 80.
PAPER = {"epochs": 100, "lr": 0.1, "weight_decay": 0.0}
_MOMENTUM = 0.9
_BASE_BATCH = 256  # lr is given for this batch size and scaled linearly with it


@dataclass
class ProbeResult:
    top1: float  # percent, mean over seeds
    top1_std: float  # sample std over seeds (0 for one seed)
    top5: float  # top-k with k = min(5, classes)
    top5_std: float
    seeds: int
    protocol: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Percent of rows whose label is among the k highest logits; k is capped at the class count,
    so that "top-5" stays defined (and is 100%) with fewer than 5 classes."""
    k = min(k, logits.shape[1])
    hit = (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1)
    return 100.0 * hit.sum().item() / len(labels)


def _new_head(dim: int, num_classes: int, generator: torch.Generator, device) -> nn.Linear:
    """N(0, 0.01) weights and zero bias (the MoCo/SimSiam linear-eval init), drawn from the run's
    own generator so that the seed, not the global RNG state, decides the result."""
    head = nn.Linear(dim, num_classes)
    with torch.no_grad():
        head.weight.normal_(0.0, 0.01, generator=generator)
        head.bias.zero_()
    return head.to(device)


def _sgd_cosine(head: nn.Module, lr: float, weight_decay: float, batch_size: int, total_steps: int):
    optimizer = torch.optim.SGD(head.parameters(), lr=lr * batch_size / _BASE_BATCH, momentum=_MOMENTUM, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step / total_steps, 1.0))))
    return optimizer, schedule


def _standardize(train_x: torch.Tensor, test_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension z-scores with the train split's statistics.

    Why: the scale of pooled ResNet features varies by orders of magnitude between dimensions,
    widths, passes (switched-off channels shrink the gated pass's features) and training stages
    (per-dimension std 0.001 to 1.4 on the embedded set); on raw features one lr underfits some
    of these (random width-64: 46% train accuracy against 65% standardised) and is too large for
    others. Dimensions constant on the train split are only centred.
    """
    mean, std = train_x.mean(0), train_x.std(0)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    return (train_x - mean) / std, (test_x - mean) / std


def train_linear_head(train_x, train_y, test_x, test_y, num_classes, *, epochs, lr, weight_decay, batch_size, seed) -> tuple[float, float]:
    """(top-1, top-5) percent of a linear head trained on cached features; the ``fast`` protocol.

    Features are standardised first (see ``_standardize``), so ``FAST``'s lr suits any features.
    Runs where the features are (the device); the seed sets the head's init and the batch order.
    """
    train_x, test_x = _standardize(train_x.float(), test_x.float())
    train_y, test_y = train_y.to(train_x.device), test_y.to(test_x.device)
    n = len(train_y)
    generator = torch.Generator().manual_seed(seed)
    head = _new_head(train_x.shape[1], num_classes, generator, train_x.device)
    optimizer, schedule = _sgd_cosine(head, lr, weight_decay, batch_size, epochs * math.ceil(n / batch_size))
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator).to(train_x.device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            loss = F.cross_entropy(head(train_x[idx]), train_y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    with torch.no_grad():
        logits = head(test_x)
    return topk_accuracy(logits, test_y, 1), topk_accuracy(logits, test_y, 5)


def _paper_run(backbone, splits, subnet, device, test_features, epochs, batch_size, seed, bar, precision) -> tuple[float, float]:
    """One seed of the paper protocol: the head sees new augmentations of every image each epoch."""
    images, labels = splits.train.images, splits.train.labels
    n, num_classes = len(labels), len(splits.train.classes)
    generator = torch.Generator().manual_seed(seed)  # head init and batch order
    aug_generator = torch.Generator(device=device).manual_seed(seed)  # crops and flips, drawn on the device
    augment = BatchAugment(crop_flip(splits.crop_size, splits.mean, splits.std))
    head = _new_head(test_features.shape[1], num_classes, generator, device)
    optimizer, schedule = _sgd_cosine(head, PAPER["lr"], PAPER["weight_decay"], batch_size, epochs * math.ceil(n / batch_size))
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for idx, batch in zip(order.split(batch_size), read_batches(images, order, batch_size, device)):
            x = augment(batch, generator=aug_generator)
            with torch.no_grad(), autocast(device, precision):
                features = backbone(x.contiguous(memory_format=torch.channels_last), as_subnet(subnet)).features.float()
            loss = F.cross_entropy(head(features), labels[idx].to(device, non_blocking=True))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.update(len(idx))
    with torch.no_grad():
        logits = head(test_features)
    test_labels = splits.test.labels.to(device)
    return topk_accuracy(logits, test_labels, 1), topk_accuracy(logits, test_labels, 5)


def linear_probe(
    backbone: GatedBackbone,
    splits: DatasetSplits,
    subnet: str,
    device: torch.device,
    protocol: str = "fast",
    seeds: int = 1,
    epochs: int | None = None,
    batch_size: int = 256,
    *,
    progress: bool = True,
    precision: str = "auto",
) -> ProbeResult:
    """Linear-probe accuracy of one sub-network (``subnet``: a name; True/False: gated/dense) of the frozen backbone; see the module doc.

    The backbone is run in eval mode (BN statistics frozen, deterministic gates) and left in the
    train/eval mode it came in. ``progress`` shows a bar for the ``paper`` protocol (the ``fast``
    one takes seconds).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown linear-probe protocol {protocol!r}; choose from {PROTOCOLS}")
    if seeds < 1 or (epochs is not None and epochs < 1) or batch_size < 1:
        raise ValueError(f"seeds, epochs and batch_size must be positive, got {seeds}, {epochs}, {batch_size}")
    device = torch.device(device)
    num_classes = len(splits.train.classes)
    test = extract(backbone, splits.test, splits, subnet, device, precision=precision).features  # the same for every seed: backbone frozen
    runs = []
    if protocol == "fast":
        train = extract(backbone, splits.train, splits, subnet, device, precision=precision).features
        settings = {**FAST, **({"epochs": epochs} if epochs is not None else {})}
        for seed in range(seeds):
            runs.append(
                train_linear_head(
                    train, splits.train.labels, test, splits.test.labels, num_classes, batch_size=batch_size, seed=seed, **settings
                )
            )
    else:
        epochs = epochs or PAPER["epochs"]
        was_training = backbone.training
        backbone.eval()
        bar = image_bar(seeds * epochs * len(splits.train.labels), f"linear probe ({as_subnet(subnet).name})", progress)
        try:
            for seed in range(seeds):
                runs.append(_paper_run(backbone, splits, subnet, device, test, epochs, batch_size, seed, bar, precision))
        finally:
            bar.close()
            backbone.train(was_training)
    top1, top5 = zip(*runs)
    spread = statistics.stdev if seeds > 1 else (lambda values: 0.0)
    return ProbeResult(statistics.fmean(top1), spread(top1), statistics.fmean(top5), spread(top5), seeds, protocol)
