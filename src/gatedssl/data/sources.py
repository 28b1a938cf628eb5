"""Datasets loaded whole into memory as uint8 NCHW tensors.

Why whole and uint8: augmentation runs on the training device a batch at a time, so
every split is one indexable tensor that is moved there once; uint8 is a quarter of
float32 (ImageNet-100 stored at 256x256 is about 25 GB).
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_image, decode_jpeg
from torchvision.transforms.v2 import functional as F

from ..errors import UserError

DATASETS = ("embedded", "cifar10", "cifar100", "stl10", "imagefolder")

_CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
_CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
_IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_SPECS = {  # name -> (crop size, (mean, std))
    "embedded": (32, _CIFAR10_STATS),
    "cifar10": (32, _CIFAR10_STATS),
    "cifar100": (32, _CIFAR100_STATS),
    "stl10": (96, _IMAGENET_STATS),
    "imagefolder": (224, _IMAGENET_STATS),
}
_TORCHVISION = {  # name -> (torchvision class, display name, what the user should put in the folder)
    "cifar10": ("CIFAR10", "CIFAR-10", "cifar-10-python.tar.gz (or its extracted cifar-10-batches-py/)"),
    "cifar100": ("CIFAR100", "CIFAR-100", "cifar-100-python.tar.gz (or its extracted cifar-100-python/)"),
    "stl10": ("STL10", "STL-10", "stl10_binary.tar.gz (or its extracted stl10_binary/)"),
}
EMBEDDED_PATH = Path(__file__).with_name("assets") / "cifar10_embedded.npz"
DEFAULT_ROOT = ".data"  # where torchvision datasets are looked for (and downloaded to) without data_dir
_DECODE_BATCH = 256


@dataclass
class ImageSet:
    images: torch.Tensor  # (N, 3, H, W) uint8, contiguous, CPU
    labels: torch.Tensor  # (N,) int64; -1 for unlabeled images
    classes: list[str]


@dataclass
class DatasetSplits:
    name: str
    pretrain: ImageSet  # images for self-supervised training (STL-10: train + unlabeled; others: train)
    train: ImageSet  # labelled train split (kNN bank / linear probe)
    test: ImageSet  # labelled test/val split
    crop_size: int  # training crop and evaluation size; stored images may be larger (imagefolder)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def load_dataset(
    name: str, data_dir: str | None = None, *, image_size: int | None = None, limit_per_class: int | None = None,
    strict: bool = False, warn=None,
) -> DatasetSplits:
    """Load every split of a dataset into memory.

    cifar10/cifar100/stl10 read torchvision's files from data_dir (default ./.data), or,
    when data_dir has train/ and test/ (or val/) class folders, those folders (e.g. the
    JPEG copy of CIFAR-10). imagefolder needs data_dir/train/<class>/ and
    data_dir/val/<class>/ (or test/); its images are stored at round(crop*256/224),
    center-cropped, so evaluation can take the usual center crop. image_size sets the
    imagefolder crop (default 224). limit_per_class keeps the first N images of every
    class in each split, for quick trials; STL-10's unlabeled images count as one class.
    Unreadable image files are skipped with a count and the first few paths named (via `warn`),
    or, with strict=True, end the load with one line naming the first.
    """
    warn = warn or (lambda message: print(message, file=sys.stderr))
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    if image_size is not None and name != "imagefolder":
        raise UserError(f"image_size applies to the imagefolder dataset only; {name} has a fixed size")
    crop_size, (mean, std) = _SPECS[name]
    crop_size = image_size or crop_size
    if name == "embedded":
        train, test = (_embedded(split, limit_per_class) for split in ("train", "test"))
        pretrain = train
    elif name == "imagefolder" or _has_split_folders(data_dir):
        root = _folder_root(name, data_dir)
        stored = round(crop_size * 256 / 224) if name == "imagefolder" else crop_size
        listed = [_list_images(folder, limit_per_class) for folder in (root / "train", _eval_folder(root))]
        if listed[0][2] != listed[1][2]:  # checked before the (long) decode
            raise UserError(f"{root}: train/ and {_eval_folder(root).name}/ have different class folders; both need the same <class>/ subfolders")
        train, test = (_decode_set(paths, labels, classes, stored, strict, warn) for paths, labels, classes in listed)
        pretrain = train
    elif name == "stl10":
        root = data_dir or DEFAULT_ROOT
        train, unlabeled, test = (_torchvision(name, root, limit_per_class, split=s) for s in ("train", "unlabeled", "test"))
        pretrain = ImageSet(torch.cat([train.images, unlabeled.images]), torch.cat([train.labels, unlabeled.labels]), train.classes)
    else:
        root = data_dir or DEFAULT_ROOT
        train, test = (_torchvision(name, root, limit_per_class, train=t) for t in (True, False))
        pretrain = train
    return DatasetSplits(name, pretrain, train, test, crop_size, mean, std)


def _first_per_class(labels: torch.Tensor, limit: int | None) -> torch.Tensor | None:
    """Indices of the first `limit` items of every label, in their original order (None: keep all)."""
    if limit is None:
        return None
    order = torch.argsort(labels, stable=True)
    ranked = labels[order]
    rank = torch.arange(len(labels)) - torch.searchsorted(ranked, ranked)
    return order[rank < limit].sort().values


def _embedded(split: str, limit: int | None) -> ImageSet:
    """The CIFAR-10 subset shipped with the package (see scripts/make_embedded_dataset.py)."""
    if not EMBEDDED_PATH.is_file():
        raise UserError(f"the embedded dataset is missing ({EMBEDDED_PATH}); reinstall gatedssl")
    with np.load(EMBEDDED_PATH) as z:
        jpeg, offsets = torch.from_numpy(z[f"{split}_jpeg"]), z[f"{split}_offsets"].tolist()
        labels, classes = torch.from_numpy(z[f"{split}_labels"]), z["classes"].tolist()
    keep = _first_per_class(labels, limit)
    index = range(len(labels)) if keep is None else keep.tolist()
    images = decode_jpeg([jpeg[offsets[i] : offsets[i + 1]] for i in index], mode=ImageReadMode.RGB)
    return ImageSet(torch.stack(images), labels if keep is None else labels[keep], classes)


def _torchvision(name: str, root: str, limit: int | None, **split) -> ImageSet:
    cls_name, title, files = _TORCHVISION[name]
    dataset_cls = getattr(torchvision.datasets, cls_name)
    try:
        dataset = dataset_cls(root, download=False, **split)
    except RuntimeError:  # not extracted yet: download=True also extracts an archive already in root
        try:
            dataset = dataset_cls(root, download=True, **split)
        except Exception:
            raise UserError(f"{title} not found in {root}: put {files} there, or run once with internet so torchvision downloads it") from None
    images = torch.from_numpy(dataset.data)
    if images.shape[-1] == 3:  # CIFAR is NHWC, STL-10 already NCHW
        images = images.permute(0, 3, 1, 2)
    labels = torch.as_tensor(np.asarray(dataset.targets if hasattr(dataset, "targets") else dataset.labels), dtype=torch.int64)
    keep = _first_per_class(labels, limit)
    if keep is not None:
        images, labels = images[keep], labels[keep]
    return ImageSet(images.contiguous(), labels, list(dataset.classes))


def _has_split_folders(data_dir: str | None) -> bool:
    return data_dir is not None and (Path(data_dir) / "train").is_dir() and any((Path(data_dir) / s).is_dir() for s in ("val", "test"))


def _folder_root(name: str, data_dir: str | None) -> Path:
    layout = "DIR/train/<class>/<images> and DIR/val/<class>/<images>"
    if data_dir is None:
        raise UserError(f"the {name} dataset needs a data folder: give data_dir DIR with {layout}")
    root = Path(data_dir)
    if not root.is_dir():
        raise UserError(f"{root} is not a folder; give a folder with {layout.replace('DIR', str(root))}")
    if not (root / "train").is_dir():
        raise UserError(f"{root} has no train/ folder; expected {layout.replace('DIR', str(root))}")
    _eval_folder(root)
    return root


def _eval_folder(root: Path) -> Path:
    for name in ("val", "test"):
        if (root / name).is_dir():
            return root / name
    raise UserError(f"{root} has no val/ (or test/) folder; expected {root}/val/<class>/<images> next to {root}/train/")


def _list_images(folder: Path, limit: int | None) -> tuple[list[str], torch.Tensor, list[str]]:
    """Files, labels and classes as torchvision's ImageFolder sees them (sorted classes and files)."""
    try:
        found = torchvision.datasets.ImageFolder(str(folder))
    except FileNotFoundError as e:
        raise UserError(f"{e} (expected {folder}/<class>/<image files>)") from None
    labels = torch.tensor(found.targets, dtype=torch.int64)
    keep = _first_per_class(labels, limit)
    if keep is None:
        return [path for path, _ in found.samples], labels, found.classes
    return [found.samples[i][0] for i in keep.tolist()], labels[keep], found.classes


def _read_rgb(path: str) -> torch.Tensor:
    try:
        image = decode_image(path, mode=ImageReadMode.RGB, apply_exif_orientation=True)
    except RuntimeError:  # formats torchvision cannot decode (BMP, TIFF, PPM, ...)
        with Image.open(path) as pil:
            return F.pil_to_tensor(ImageOps.exif_transpose(pil).convert("RGB"))
    return F.to_dtype(image, torch.uint8, scale=True)  # 16-bit PNGs


class _Files(Dataset):
    """One file -> (3, size, size) uint8. Failures come back as text, so the user gets one line, not a worker traceback."""

    def __init__(self, paths: list[str], size: int):
        self.paths, self.size = paths, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        try:
            image = _read_rgb(self.paths[i])
        except Exception as e:
            reason = " ".join(str(e).split())
            return torch.zeros(3, self.size, self.size, dtype=torch.uint8), f"cannot read image {self.paths[i]} ({reason}); remove or replace it"
        image = F.resize(image, [self.size], antialias=True)  # shorter side
        return F.center_crop(image, [self.size]).contiguous(), ""


def _decode_files(paths: list[str], size: int) -> tuple[torch.Tensor, list[str]]:
    """All images decoded, and one message per file that could not be read (its slot left black)."""
    images = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)  # filled in place: no 2x peak from torch.cat
    workers = min(8, os.cpu_count() or 1, math.ceil(len(paths) / _DECODE_BATCH))  # parallelism is per batch
    start, failures = 0, []
    for batch, errors in DataLoader(_Files(paths, size), batch_size=_DECODE_BATCH, num_workers=workers):
        failures += [(start + i, e) for i, e in enumerate(errors) if e]
        images[start : start + len(batch)] = batch
        start += len(batch)
    return images, failures


def _decode_set(paths: list[str], labels: torch.Tensor, classes: list[str], size: int, strict: bool, warn) -> ImageSet:
    images, failures = _decode_files(paths, size)
    if not failures:
        return ImageSet(images, labels, classes)
    if strict:
        raise UserError(f"{failures[0][1]} (--strict; {len(failures)} unreadable image(s) in all)")
    bad = torch.tensor([i for i, _ in failures])
    keep = torch.ones(len(paths), dtype=torch.bool)
    keep[bad] = False
    named = ", ".join(paths[i] for i, _ in failures[:3])
    warn(f"warning: skipped {len(failures)} unreadable image(s) of {len(paths)}, e.g. {named}; --strict makes this an error")
    empty = [classes[c] for c in range(len(classes)) if not (labels[keep] == c).any()]
    if empty:
        raise UserError(f"no readable image left in class folder(s) {', '.join(empty)} of {Path(paths[0]).parent.parent}")
    return ImageSet(images[keep], labels[keep], classes)
