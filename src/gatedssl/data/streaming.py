"""Folder datasets read from their files, a batch at a time, for sets too large to hold in memory.

`ImageFiles` stands in for a split's uint8 tensor: every file is decoded to the same stored square
(shorter side resized to `size`, centre crop) that the in-memory load keeps, so augmentation and
evaluation cannot tell a streamed split from a held one. `read_batches()` is the one reader of both
kinds: training views, evaluation features and the linear probe all go through it.

Where the decoding happens:
- "workers": DataLoader workers decode with torchvision.io and resize; batches come back in
  pinned memory and go to the device with a non-blocking copy.
- "device": workers only read the file bytes; the JPEGs of a batch are decoded together on the
  training device (nvJPEG through torchvision.io.decode_jpeg on CUDA) and resized there. Other
  formats fall back to the CPU decoder, one file at a time. The default on CUDA. nvJPEG does not
  apply EXIF orientation (torchvision implements it on the CPU only), so a rotated-by-tag photo
  comes out as stored, as it does in PIL-based loaders; the CPU paths apply the tag.
Decoding is deterministic, so a resumed run sees the same pixels: the randomness is all in the
device augmentation that follows.
"""

from __future__ import annotations

import io
import os
import re
import sys
import warnings
from collections.abc import Iterator

import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_image, decode_jpeg, read_file
from torchvision.transforms.v2 import functional as F

from ..errors import UserError

DECODE_ON = ("workers", "device")
_JPEG_MAGIC = b"\xff\xd8"


def default_workers() -> int:
    return max(1, min(16, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def _announced(source: str | io.BytesIO) -> tuple[int, str] | None:
    """The pixels the file's header announces, and how to say them, without decoding; None if PIL cannot tell."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # judged by check_size, not printed per file
        try:
            with Image.open(source) as pil:
                return pil.size[0] * pil.size[1], f"{pil.size[0]} x {pil.size[1]} pixels"
        except Image.DecompressionBombError as e:  # PIL refuses to open beyond twice its limit, naming the pixels
            found = re.search(r"\((\d+) pixels\)", str(e))
            pixels = int(found.group(1)) if found else 2 * Image.MAX_IMAGE_PIXELS + 1
            return pixels, f"{pixels / 1e6:,.0f} M pixels"
        except Exception:  # not for PIL to judge: the decoder names what is wrong
            return None


def check_size(source: str | io.BytesIO) -> None:
    """Refuse a file whose header announces more pixels than PIL's decompression-bomb limit, before a decoder
    allocates them: torchvision's PNG decoder kills the process (a segmentation fault) on a 20,000 x 20,000
    header over a few bytes of data. Raises ValueError, which the readers report like any unreadable file."""
    limit, announced = Image.MAX_IMAGE_PIXELS, _announced(source)
    if limit and announced is not None and announced[0] > limit:
        raise ValueError(
            f"its header announces {announced[1]}, over the {limit / 1e6:.0f} M of PIL's decompression-bomb limit "
            "(PIL.Image.MAX_IMAGE_PIXELS)"
        )


def read_rgb(path: str) -> torch.Tensor:
    """(3, H, W) uint8 RGB, EXIF orientation applied; grayscale, RGBA, CMYK and 16-bit files converted;
    an animated image's first frame."""
    check_size(path)
    try:
        image = decode_image(path, mode=ImageReadMode.RGB, apply_exif_orientation=True)
    except RuntimeError:  # formats torchvision cannot decode (BMP, TIFF, PPM, animated WebP, ...)
        with Image.open(path) as pil:  # PIL reads the first frame
            return F.pil_to_tensor(ImageOps.exif_transpose(pil).convert("RGB"))
    if image.ndim == 4:  # an animated GIF: (frames, 3, H, W)
        image = image[0]
    return F.to_dtype(image, torch.uint8, scale=True)  # 16-bit PNGs


def fit_square(image: torch.Tensor, size: int) -> torch.Tensor:
    """Shorter side to `size`, then the centre `size` x `size` square (works on any device)."""
    image = F.resize(image, [size], antialias=True)
    return F.center_crop(image, [size]).contiguous()


def _reason(path: str, error: Exception) -> str:
    return f"cannot read image {path} ({' '.join(str(error).split())}); remove or replace it"


class DecodedFiles(Dataset):
    """One file -> ((3, size, size) uint8, error). A failure comes back as text, so the user gets one line, not a worker traceback."""

    def __init__(self, paths: list[str], size: int):
        self.paths, self.size = paths, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        try:
            return fit_square(read_rgb(self.paths[i]), self.size), ""
        except Exception as e:
            return torch.zeros(3, self.size, self.size, dtype=torch.uint8), _reason(self.paths[i], e)


class _RawFiles(Dataset):
    """One file -> its bytes (uint8 1-D), for decoding a whole batch on the device."""

    def __init__(self, paths: list[str]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        try:
            raw = read_file(self.paths[i])
            check_size(io.BytesIO(raw.numpy().tobytes()))  # a JPEG's too: nvJPEG would allocate what its header says
            return raw, ""
        except Exception as e:
            return torch.zeros(0, dtype=torch.uint8), _reason(self.paths[i], e)


def _pack(batch):
    """A batch of file bytes as one tensor and its lengths: one shared-memory block per batch, not one per file."""
    raws = [raw for raw, _ in batch]
    return (torch.cat(raws), torch.tensor([len(r) for r in raws])), [error for _, error in batch]


class ImageFiles:
    """A split kept as file paths; reads like an (N, 3, size, size) uint8 tensor a batch at a time.

    Unreadable files are found as they are read: each is named once (via `warn`) and its slot is
    left black; with strict=True the first one ends the run with a UserError instead.
    """

    def __init__(self, paths: list[str], size: int, *, strict: bool = False, warn=None, workers: int | None = None):
        self.paths, self.size, self.strict = list(paths), size, strict
        self.workers = default_workers() if workers is None else workers
        self.warn = warn or (lambda message: print(message, file=sys.stderr))
        self.failed: set[int] = set()
        self._decoded = DecodedFiles(self.paths, size)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.paths), 3, self.size, self.size)

    def __getitem__(self, i: int) -> torch.Tensor:
        """One decoded image (for per-image pipelines such as the torchvision baseline)."""
        image, error = self._decoded[int(i)]
        self._note_failures([int(i)], [error])
        return image

    def _note_failures(self, indices: list[int], errors: list[str]) -> None:
        for i, error in zip(indices, errors):
            if error and i not in self.failed:
                if self.strict:
                    raise UserError(f"{error} (--strict)")
                self.failed.add(i)
                self.warn(f"warning: {error}; its slot is left black ({len(self.failed)} unreadable so far; --strict makes this an error)")

    def read(
        self,
        indices: torch.Tensor,
        batch_size: int,
        device: torch.device,
        decode_on: str | None = None,
    ) -> Iterator[torch.Tensor]:
        """Batches of the images at `indices`, in that order, as uint8 on `device`."""
        device = torch.device(device)
        decode_on = decode_on or ("device" if device.type == "cuda" else "workers")
        if decode_on not in DECODE_ON:
            raise ValueError(f"unknown decode_on {decode_on!r}; choose from {DECODE_ON}")
        chunks = [c.tolist() for c in indices.cpu().split(batch_size)]
        dataset = self._decoded if decode_on == "workers" else _RawFiles(self.paths)
        workers = min(self.workers, len(chunks))
        loader = DataLoader(
            dataset,
            batch_sampler=chunks,
            num_workers=workers,
            collate_fn=None if decode_on == "workers" else _pack,
            pin_memory=device.type == "cuda" and decode_on == "workers",
            prefetch_factor=4 if workers > 0 else None,
            generator=torch.Generator(),
        )  # worker seeds drawn from its own generator, not the global one training uses
        for chunk, (batch, errors) in zip(chunks, loader):
            if decode_on == "device":
                packed, lengths = batch
                batch, errors = self._decode_on(device, list(packed.split(lengths.tolist())), list(errors), chunk)
            self._note_failures(chunk, errors)
            yield batch.to(device, non_blocking=True)

    def _decode_on(self, device: torch.device, raw: list[torch.Tensor], errors: list[str], chunk: list[int]):
        """JPEGs decoded together on `device`; anything else (or a JPEG it rejects) on the CPU."""
        out = torch.zeros((len(raw), 3, self.size, self.size), dtype=torch.uint8, device=device)
        jpegs = [k for k, data in enumerate(raw) if not errors[k] and bytes(data[:2].tolist()) == _JPEG_MAGIC]
        decoded = {}
        if jpegs:
            try:
                decoded = dict(zip(jpegs, decode_jpeg([raw[k] for k in jpegs], mode=ImageReadMode.RGB, device=device)))
            except RuntimeError:  # one bad file fails the batch call: all of them go the one-at-a-time way below
                pass
        for k in range(len(raw)):
            if errors[k]:
                continue
            try:
                image = decoded[k] if k in decoded else read_rgb(self.paths[chunk[k]]).to(device)
                out[k] = fit_square(image, self.size)
            except Exception as e:
                errors[k] = _reason(self.paths[chunk[k]], e)
        return out, errors


def read_batches(
    images: torch.Tensor | ImageFiles,
    indices: torch.Tensor,
    batch_size: int,
    device: torch.device,
) -> Iterator[torch.Tensor]:
    """uint8 batches of `images` at `indices` (in order) on `device`, from a tensor or from files alike."""
    if isinstance(images, ImageFiles):
        yield from images.read(indices, batch_size, device)
        return
    indices = indices.to(images.device)
    for chunk in indices.split(batch_size):
        yield images[chunk].to(device, non_blocking=True)
