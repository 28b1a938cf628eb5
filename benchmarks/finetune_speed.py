"""Fine-tuning step time: gatedssl's loop against a standard torchvision loop, side by side in one process (issue 23).

    python benchmarks/finetune_speed.py [--width 64] [--steps 10] [--rounds 2] [--batch-size 128] [--device cpu]

Ours: `gatedssl.training.finetune.train_step` on batches augmented on the device (crop + flip, one batched op
each), our dense ResNet-18 (switchable BN, channels_last), SGD with Nesterov momentum. Theirs: torchvision's
resnet18 with the CIFAR stem (3x3 conv1, no max-pool), the same crop + flip as per-image
torchvision.transforms.v2 in a DataLoader (the loop most users write), the same optimizer and loss. Same images
(the embedded CIFAR-10 subset), same batch and width. Rounds alternate (ours, theirs, ours, ...) so that a
drifting machine load hits both; the median step of each is compared.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision
from torch import nn
from torchvision.transforms import v2

from gatedssl.config import PretrainConfig, resolve
from gatedssl.data.sources import load_dataset
from gatedssl.factory import build_objective
from gatedssl.models.classifier import Classifier
from gatedssl.precision import resolve_precision
from gatedssl.training.finetune import augmentation, build_optimizer, train_step
from gatedssl.training.optim import warmup_cosine


def ours(splits, width: int, batch: int, device: torch.device):
    model = Classifier(build_objective(resolve(PretrainConfig(width=width, mode="dense"))).backbone, "dense", splits.train.classes)
    model = model.to(device, memory_format=torch.channels_last).train()
    optimizer = build_optimizer(model, 0.1 * batch / 256, 5e-4)
    scheduler = warmup_cosine(optimizer, 1, 10_000)
    augment, precision = augmentation(splits, "default"), resolve_precision(device, "auto")
    images, labels = splits.train.images, splits.train.labels

    def step():
        rows = torch.randint(0, len(labels), (batch,))
        x = augment(images[rows].to(device))
        terms = train_step(model, optimizer, scheduler, x, labels[rows].to(device), 0.1, precision)
        terms[0].item()  # wait for the step

    return step


class Images(torch.utils.data.Dataset):
    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(self.images[i]), self.labels[i]


def theirs(splits, batch: int, device: torch.device):
    model = torchvision.models.resnet18(num_classes=len(splits.train.classes))
    model.conv1, model.maxpool = nn.Conv2d(3, 64, 3, padding=1, bias=False), nn.Identity()
    model = model.to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1 * batch / 256, momentum=0.9, nesterov=True, weight_decay=5e-4)
    transform = v2.Compose(
        [
            v2.RandomResizedCrop(splits.crop_size, scale=(0.25, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(splits.mean), list(splits.std)),
        ]
    )
    loader = torch.utils.data.DataLoader(
        Images(splits.train.images, splits.train.labels, transform), batch_size=batch, shuffle=True, drop_last=True
    )
    batches = iter(loader)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)

    def step():
        nonlocal batches
        try:
            x, y = next(batches)
        except StopIteration:
            batches = iter(loader)
            x, y = next(batches)
        loss = loss_fn(model(x.to(device)), y.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()

    return step


def timed(step, n: int) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    device = torch.device(args.device)
    splits = load_dataset("embedded")
    if args.width != 64:
        print(f"note: torchvision's resnet18 has width 64; ours runs at width {args.width}")
    steps = {"gatedssl": ours(splits, args.width, args.batch_size, device), "torchvision": theirs(splits, args.batch_size, device)}
    for step in steps.values():
        timed(step, 2)  # warm-up: allocations, oneDNN kernels chosen
    measured = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            measured[name] += timed(step, args.steps)
    median = {name: statistics.median(t) for name, t in measured.items()}
    for name, t in median.items():
        print(f"{name:12s} {1000 * t:8.1f} ms/step  {args.batch_size / t:8.1f} img/s  ({len(measured[name])} steps)")
    ratio = median["torchvision"] / median["gatedssl"]
    print(
        f"gatedssl's fine-tuning step is {ratio:.2f}x the speed of the torchvision loop ({device}, {torch.get_num_threads()} threads, batch {args.batch_size})"
    )


if __name__ == "__main__":
    main()
