"""Datasets as uint8 NCHW images: held whole in memory, or (large folder datasets) read from their files.

Why whole and uint8: augmentation runs on the training device a batch at a time, so a split that
fits is one indexable tensor moved there once; uint8 is a quarter of float32. A folder dataset that
does not fit (ImageNet-100 stored at 256x256 is about 25 GB) is kept as `ImageFiles` instead and
decoded every epoch by DataLoader workers (see streaming.py); the rest of the library reads both
kinds through `streaming.read_batches`.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch.utils.data import DataLoader
from torchvision.io import ImageReadMode, decode_jpeg

from ..errors import UserError
from ..names import STORAGES
from .streaming import DecodedFiles, ImageFiles

DATASETS = ("embedded", "cifar10", "cifar100", "stl10", "imagefolder")
_MEMORY_SHARE = 0.5  # auto: hold a dataset only if it takes at most this share of the free memory

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
    images: torch.Tensor | ImageFiles  # (N, 3, H, W) uint8, contiguous, CPU; or the files, read a batch at a time
    labels: torch.Tensor  # (N,) int64; -1 for unlabeled images
    classes: list[str]
    names: list[str] | None = None  # one per image: its path under the split's folder ("cat/0042.jpg"), or "class/index"

    def image_names(self) -> list[str]:
        """What a label list calls each image: the file's path under its split folder, else its class and position."""
        if self.names is not None:
            return self.names
        return [f"{self.classes[y]}/{i:05d}" for i, y in enumerate(self.labels.tolist())]


@dataclass
class DatasetSplits:
    """A dataset's splits. train and test are None for unlabeled data (a folder of images without
    class folders, see `load_dataset`): None means unlabeled data, no kNN or probe; `pretrain` is
    then every image, labelled -1, and `unlabeled_reason` says in one line why."""

    name: str
    pretrain: ImageSet  # images for self-supervised training (STL-10: train + unlabeled; others: train)
    train: ImageSet | None  # labelled train split (kNN bank / linear probe); None: unlabeled data, no kNN or probe
    test: ImageSet | None  # labelled test/val split; None: unlabeled data, no kNN or probe
    crop_size: int  # training crop and evaluation size; stored images may be larger (imagefolder)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    unlabeled_reason: str | None = None  # unlabeled data: one line saying why (e.g. "DIR has no val/ or test/ folder"); None when labelled

    @property
    def labeled(self) -> bool:
        """True when there are labelled train and test splits (kNN and linear probe can run)."""
        return self.train is not None and self.test is not None


def load_run_data(cfg, device: torch.device | str = "cpu", warn=None, data_dir: str | None = None) -> DatasetSplits:
    """The splits a run's settings name (training, evaluation and export read the same data)."""
    return load_dataset(
        cfg.dataset,
        data_dir or cfg.data_dir,
        image_size=cfg.crop_size,
        limit_per_class=cfg.limit_per_class,
        strict=cfg.strict,
        warn=warn,
        storage=cfg.storage,
        device=device,
        workers=cfg.data_workers,
    )


def eval_geometry(name: str, image_size: int | None = None) -> tuple[int, int, tuple, tuple]:
    """(crop size, stored size, mean, std) of a dataset: images are stored with the shorter side at
    `stored` (centre square), and evaluation takes the centre `crop`, then normalises."""
    crop_size, (mean, std) = _SPECS[name]
    crop_size = image_size or crop_size
    stored = round(crop_size * 256 / 224) if name == "imagefolder" else crop_size
    return crop_size, stored, mean, std


def load_dataset(
    name: str,
    data_dir: str | None = None,
    *,
    image_size: int | None = None,
    limit_per_class: int | None = None,
    strict: bool = False,
    warn=None,
    storage: str = "memory",
    device: torch.device | str = "cpu",
    workers: int | None = None,
) -> DatasetSplits:
    """Load every split of a dataset into memory.

    cifar10/cifar100/stl10 read torchvision's files from data_dir (default ./.data), or,
    when data_dir has train/ and test/ (or val/) class folders, those folders (e.g. the
    JPEG copy of CIFAR-10). imagefolder reads data_dir/train/; its images are stored at
    round(crop*256/224), center-cropped, so evaluation can take the usual center crop.
    image_size sets the imagefolder crop (default 224).

    Labelled or unlabeled (whenever folders are read): the data is unlabeled when train/ holds
    image files directly at its top level, or when data_dir has no val/ and no test/ folder
    (imagefolder only: the other names read folders only when one of them exists); then every
    image under train/, at any depth, is a pretraining image (label -1, classes []), val/ or
    test/ is not read, and `train`/`test` are None (no kNN or probe; `unlabeled_reason` says
    which case). Otherwise it is labelled, as before: train/<class>/ and val/<class>/ (or
    test/) with the same class folders, each with images at any depth. data_dir itself is
    never read as the image folder: images go in data_dir/train/.

    limit_per_class keeps the first N images of every class in each split, for quick trials;
    STL-10's unlabeled images, and an unlabeled folder, count as one class.
    Unreadable image files are skipped with a count and the first few paths named (via `warn`),
    or, with strict=True, end the load with one line naming the first.

    storage (folder datasets only): "memory" decodes every image once and holds the splits;
    "stream" keeps the file list and decodes a batch at a time (with `workers` DataLoader
    workers) every time a split is read; "auto" holds the splits when they take at most half of
    the free host memory (and the pretraining split half of the free memory of a CUDA `device`),
    and streams otherwise, saying so via `warn`.
    """
    warn = warn or (lambda message: print(message, file=sys.stderr))
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    if storage not in STORAGES:
        raise UserError(f"unknown storage {storage!r}; choose one of: {', '.join(STORAGES)}")
    if image_size is not None and name != "imagefolder":
        raise UserError(f"image_size applies to the imagefolder dataset only; {name} has a fixed size")
    crop_size, stored, mean, std = eval_geometry(name, image_size)
    if name == "embedded":
        train, test = (_embedded(split, limit_per_class) for split in ("train", "test"))
        pretrain = train
    elif name == "imagefolder" or _has_split_folders(data_dir):
        root = _folder_root(name, data_dir)
        unlabeled_reason = _unlabeled_reason(root)
        if unlabeled_reason is None:
            folders = (root / "train", _eval_folder(root))
            listed = [_list_images(folder, limit_per_class, warn) for folder in folders]
        else:
            folders = (root / "train",)
            listed = [_list_unlabeled(folders[0], limit_per_class, unlabeled_reason, warn)]
        _warn_if_upsampled(listed[0][0], crop_size, stored, warn)
        if unlabeled_reason is None and listed[0][2] != listed[1][2]:  # checked before the (long) decode
            raise UserError(f"{root}: train/ and {folders[1].name}/ have different class folders; both need the same <class>/ subfolders")
        if storage == "auto":
            storage = _choose_storage(
                sum(len(paths) for paths, _, _ in listed), len(listed[0][0]), stored, torch.device(device), root, warn
            )
        if storage == "stream":
            sets = [
                ImageSet(
                    ImageFiles(paths, stored, strict=strict, warn=warn, workers=workers),
                    labels,
                    classes,
                    [os.path.relpath(p, folder) for p in paths],
                )
                for (paths, labels, classes), folder in zip(listed, folders)
            ]
        else:
            sets = [
                _decode_set(paths, labels, classes, stored, strict, warn, folder)
                for (paths, labels, classes), folder in zip(listed, folders)
            ]
        pretrain = sets[0]
        if unlabeled_reason is not None:
            return DatasetSplits(name, pretrain, None, None, crop_size, mean, std, unlabeled_reason)
        train, test = sets
    elif storage == "stream":
        raise UserError(
            f"storage stream reads image folders; {name} comes as torchvision's files and is always held in memory "
            f"(give data_dir with train/ and val/ class folders to stream it)"
        )
    elif name == "stl10":
        root = data_dir or DEFAULT_ROOT
        train, unlabeled, test = (_torchvision(name, root, limit_per_class, split=s) for s in ("train", "unlabeled", "test"))
        pretrain = ImageSet(torch.cat([train.images, unlabeled.images]), torch.cat([train.labels, unlabeled.labels]), train.classes)
    else:
        root = data_dir or DEFAULT_ROOT
        train, test = (_torchvision(name, root, limit_per_class, train=t) for t in (True, False))
        pretrain = train
    return DatasetSplits(name, pretrain, train, test, crop_size, mean, std)


def _free_bytes(device: torch.device) -> tuple[int, int | None]:
    """(free host memory, free memory of a CUDA device or None)."""
    host = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        with open("/proc/meminfo") as f:  # MemAvailable counts reclaimable caches, SC_AVPHYS_PAGES does not
            host = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
    return host, gpu


def _choose_storage(images: int, pretrain_images: int, size: int, device: torch.device, root: Path, warn) -> str:
    per_image = 3 * size * size
    host, gpu = _free_bytes(device)
    fits = images * per_image <= _MEMORY_SHARE * host and (gpu is None or pretrain_images * per_image <= _MEMORY_SHARE * gpu)
    if fits:
        return "memory"
    where = f"{host / 2**30:.1f} GiB free in memory" + ("" if gpu is None else f", {gpu / 2**30:.1f} GiB on {device}")
    warn(
        f"note: {root} decoded is {images * per_image / 2**30:.1f} GiB ({where}): streaming it from the files; --storage memory holds it anyway"
    )
    return "stream"


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
            raise UserError(
                f"{title} not found in {root}: put {files} there, or run once with internet so torchvision downloads it"
            ) from None
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
    layout = "DIR/train/<class>/<images> and DIR/val/<class>/<images> (labelled), or DIR/train/<images> (unlabeled)"
    if data_dir is None:
        raise UserError(f"the {name} dataset needs a data folder: give data_dir DIR with {layout}")
    root = Path(data_dir)
    if not root.is_dir():
        raise UserError(f"{root} is not a folder; give a folder with {layout.replace('DIR', str(root))}")
    if not (root / "train").is_dir():
        raise UserError(f"{root} has no train/ folder; expected {layout.replace('DIR', str(root))}")
    return root


def _unlabeled_reason(root: Path) -> str | None:
    """Why root/train/ is read as unlabeled pretraining images (one line), or None for labelled class folders.

    Unlabeled: train/ holds image files directly at its top level, or root has no val/ and no test/ folder.
    """
    from torchvision.datasets.folder import has_file_allowed_extension

    train = root / "train"
    with os.scandir(train) as entries:
        direct = any(has_file_allowed_extension(e.name, image_extensions()) and e.is_file() for e in entries)
    evaluation = next((root / s for s in ("val", "test") if (root / s).is_dir()), None)
    if direct:
        unused = "" if evaluation is None else f", so {evaluation}/ is not used"
        return f"{train}/ has image files directly inside, not in <class>/ folders{unused}"
    if evaluation is None:
        return f"{root} has no val/ or test/ folder"
    return None


def _eval_folder(root: Path) -> Path:
    for name in ("val", "test"):
        if (root / name).is_dir():
            return root / name
    raise UserError(f"{root} has no val/ (or test/) folder; expected {root}/val/<class>/<images> next to {root}/train/")


def image_extensions() -> tuple[str, ...]:
    """torchvision ImageFolder's, and GIF: an animated one is read as its first frame."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    return (*IMG_EXTENSIONS, ".gif")


def _warn_if_upsampled(paths: list[str], crop_size: int, stored: int, warn) -> None:
    """Small pictures blown up to a large crop train slowly and badly: say so, and what to pass instead."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # a bomb is named where it is decoded
            with Image.open(paths[0]) as first:
                side = min(first.size)
    except (OSError, IndexError, Image.DecompressionBombError):
        return  # unreadable files are reported where they are decoded
    if side < crop_size:
        warn(
            f"warning: the images are about {side} px (first: {paths[0]}); a {crop_size} px crop upsamples them {crop_size / side:.1f}x "
            f"(slower, and blurred views). Pass --crop-size {side} to train at their size"
        )


def _walk_images(
    top: Path, seen_dirs: set[str], seen_files: set[str], other_roots: frozenset[str] | set[str] = frozenset()
) -> tuple[list[str], int]:
    """Image files under `top` at any depth, symlinks followed, sorted by folder then name; and how many
    folders were not entered.

    A folder reached twice through symlinks (a loop such as `train/a/loop -> ..`, or two links to one
    folder) is read once, and so is each file: `seen_dirs` and `seen_files` (real paths) are updated,
    and can be shared by several walks. A folder whose real path is in `other_roots` is not entered.
    """
    from torchvision.datasets.folder import has_file_allowed_extension

    walked, skipped = [], 0
    for root, dirs, files in os.walk(top, followlinks=True):
        real = os.path.realpath(root)
        if real in seen_dirs or real in other_roots:
            dirs[:] = []
            skipped += 1
            continue
        seen_dirs.add(real)
        dirs.sort()  # visited in name order, so which of two paths to one folder is kept does not depend on the file system
        walked.append((root, files))
    paths, extensions = [], image_extensions()
    for root, files in sorted(walked):
        for file in sorted(files):
            if not has_file_allowed_extension(file, extensions):
                continue
            path = os.path.join(root, file)
            real = os.path.realpath(path)
            if real not in seen_files:
                seen_files.add(real)
                paths.append(path)
    return paths, skipped


def _warn_revisited(folder: Path, skipped: int, warn) -> None:
    if skipped and warn is not None:
        warn(f"warning: {folder}: {skipped} folder(s) reached again through symlinks (a loop or a second link) were read once")


def _list_images(folder: Path, limit: int | None, warn=None) -> tuple[list[str], torch.Tensor, list[str]]:
    """Files, labels and classes in torchvision ImageFolder's order (sorted classes, then sorted paths).

    Unlike ImageFolder's walk, a folder reached twice through symlinks (a loop such as
    `train/a/loop -> ..`, or two links to one folder) is read once, and so is each file.
    """
    from torchvision.datasets.folder import find_classes

    try:
        classes, class_to_idx = find_classes(str(folder))
    except FileNotFoundError as e:
        raise UserError(f"{e} (expected {folder}/<class>/<image files>)") from None
    class_roots = {os.path.realpath(folder / name) for name in classes}  # a link into another class is that class's
    paths, targets, seen_dirs, seen_files, skipped = [], [], set(), set(), 0
    for name in classes:
        found, revisited = _walk_images(folder / name, seen_dirs, seen_files, class_roots - {os.path.realpath(folder / name)})
        paths += found
        targets += [class_to_idx[name]] * len(found)
        skipped += revisited
    _warn_revisited(folder, skipped, warn)
    present = set(targets)
    empty = [name for name in classes if class_to_idx[name] not in present]
    if empty:
        raise UserError(
            f"no image file in {', '.join(str(folder / name) for name in empty)}; every <class>/ folder needs images "
            f"({', '.join(image_extensions())})"
        )
    labels = torch.tensor(targets, dtype=torch.int64)
    keep = _first_per_class(labels, limit)
    if keep is None:
        return paths, labels, classes
    return [paths[i] for i in keep.tolist()], labels[keep], classes


def _list_unlabeled(folder: Path, limit: int | None, reason: str, warn=None) -> tuple[list[str], torch.Tensor, list[str]]:
    """Every image under `folder` at any depth (the first `limit`), labelled -1, no classes; walked as `_list_images` walks a class."""
    paths, skipped = _walk_images(folder, set(), set())
    _warn_revisited(folder, skipped, warn)
    if not paths:
        raise UserError(
            f"no image file under {folder} (read as unlabeled: {reason}); put the pretraining images there "
            f"({', '.join(image_extensions())}), or {folder.parent}/train/<class>/ and {folder.parent}/val/<class>/ for labelled data"
        )
    paths = paths[:limit]
    return paths, torch.full((len(paths),), -1, dtype=torch.int64), []


def _decode_files(paths: list[str], size: int) -> tuple[torch.Tensor, list[str]]:
    """All images decoded, and one message per file that could not be read (its slot left black)."""
    images = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)  # filled in place: no 2x peak from torch.cat
    workers = min(8, os.cpu_count() or 1, math.ceil(len(paths) / _DECODE_BATCH))  # parallelism is per batch
    start, failures = 0, []
    for batch, errors in DataLoader(DecodedFiles(paths, size), batch_size=_DECODE_BATCH, num_workers=workers, generator=torch.Generator()):
        failures += [(start + i, e) for i, e in enumerate(errors) if e]
        images[start : start + len(batch)] = batch
        start += len(batch)
    return images, failures


def _decode_set(paths: list[str], labels: torch.Tensor, classes: list[str], size: int, strict: bool, warn, folder: Path) -> ImageSet:
    images, failures = _decode_files(paths, size)
    names = [os.path.relpath(p, folder) for p in paths]
    if not failures:
        return ImageSet(images, labels, classes, names)
    if strict:
        raise UserError(f"{failures[0][1]} (--strict; {len(failures)} unreadable image(s) in all)")
    bad = torch.tensor([i for i, _ in failures])
    keep = torch.ones(len(paths), dtype=torch.bool)
    keep[bad] = False
    named = ", ".join(paths[i] for i, _ in failures[:3])
    warn(f"warning: skipped {len(failures)} unreadable image(s) of {len(paths)}, e.g. {named}; --strict makes this an error")
    if not classes and not keep.any():
        raise UserError(f"no readable image left in {folder} ({len(paths)} unreadable)")
    empty = [classes[c] for c in range(len(classes)) if not (labels[keep] == c).any()]
    if empty:
        raise UserError(f"no readable image left in class folder(s) {', '.join(empty)} of {folder}")
    return ImageSet(images[keep], labels[keep], classes, [n for n, k in zip(names, keep.tolist()) if k])
