"""SSL augmentation of whole uint8 batches on the training device.

Per-image transforms in DataLoader workers cap throughput on small images (CIFAR): the GPU
waits on a few CPU cores doing PIL work. Here every random parameter is drawn as a tensor on
the images' device and every op works on the whole batch at once, so one call is a fixed
sequence of batched kernels: no Python loop over samples, no ``.item()``, no host sync.

The recipe is the reference code's (torchvision semantics): RandomResizedCrop, horizontal
flip, ColorJitter applied with probability ``jitter_p``, RandomGrayscale, Gaussian blur,
solarization, normalisation. Each random draw is independent per sample, with one exception:
the order of the four colour-jitter ops is drawn once per batch (see
``BatchAugment._jitter_params``). The crop is bilinear by default (one grid_sample);
``interpolation="bicubic"`` is the reference's PIL bicubic, bit for bit (``_bicubic_crop``), from
the same random draws.

torchvision's functional colour ops take one factor per call, not one per sample, so the
colour ops below are hand-written batched versions of the same formulas
(torchvision.transforms.v2.functional.adjust_*); tests/test_augment.py checks them against
torchvision image by image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..distributed import global_rows

__all__ = ["INTERPOLATIONS", "AugmentConfig", "BatchAugment", "center_crop", "crop_flip", "normalize", "recipe"]

# ITU-R 601-2 luma, as torchvision's rgb_to_grayscale.
_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)

INTERPOLATIONS = ("bilinear", "bicubic")


@dataclass(frozen=True)
class AugmentConfig:
    """One view's augmentation recipe; defaults are the reference CIFAR-10 recipe."""

    crop_size: int = 32
    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    gray_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.1
    mean: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
    std: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)
    interpolation: str = "bilinear"  # of the crop: "bicubic" is the reference's (PIL's, antialiased)

    def __post_init__(self):
        # Fail at construction, not in the middle of a training step.
        if self.crop_size < 1:
            raise ValueError(f"crop_size must be positive, got {self.crop_size}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"scale must satisfy 0 < min <= max, got {self.scale}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {self.ratio}")
        for name in ("flip_p", "jitter_p", "gray_p", "blur_p", "solarize_p"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
        for name in ("brightness", "contrast", "saturation"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)}")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {self.hue}")
        if not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError(f"blur_sigma must satisfy 0 < min <= max, got {self.blur_sigma}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean/std must be 3 values with std > 0, got {self.mean}, {self.std}")


def recipe(crop_size: int, mean, std, *, interpolation: str = "bilinear", blur_p: float | None = None) -> AugmentConfig:
    """The reference recipe at this resolution.

    blur_p None: no blur at CIFAR scale (<= 64 px), as the reference CIFAR-10 code; p=0.5 above,
    the single-view form of the ImageNet recipes' 1.0 / 0.1 pair. An explicit value is for the
    per-view recipes (the reference blurs only the second CIFAR-100 view, p=0.2).
    """
    return AugmentConfig(
        crop_size=int(crop_size),
        blur_p=(0.0 if crop_size <= 64 else 0.5) if blur_p is None else float(blur_p),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        interpolation=interpolation,
    )


def crop_flip(crop_size: int, mean, std, min_scale: float = 0.08) -> AugmentConfig:
    """Random resized crops and flips only: what supervised heads train on (the paper probe, fine-tuning); the colour
    augmentations are the SSL task's."""
    return AugmentConfig(
        crop_size=int(crop_size),
        scale=(min_scale, 1.0),
        jitter_p=0.0,
        gray_p=0.0,
        blur_p=0.0,
        solarize_p=0.0,
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
    )


def _blur_kernel_size(crop_size: int) -> int:
    """About 10% of the view, odd: the SimCLR/BYOL convention (23 at 224 px)."""
    return max(3, int(0.1 * crop_size) // 2 * 2 + 1)


# ----------------------------------------------------------------------------- input, evaluation helpers


def _to_unit_float(images: torch.Tensor) -> torch.Tensor:
    if images.dtype == torch.uint8:
        return images.float().mul_(1.0 / 255.0)
    if images.is_floating_point():
        return images.float()
    raise TypeError(f"expected uint8 (or float in [0, 1]) images, got {images.dtype}")


def _to_levels(images: torch.Tensor) -> torch.Tensor:
    """(N, H, 3, W) float on the 0..255 grid PIL works on, as _bicubic_crop wants it; uint8 exactly
    (x / 255 * 255 is not always x in float32), in one copy."""
    if images.dtype == torch.uint8:
        return images.transpose(1, 2).to(torch.float32, memory_format=torch.contiguous_format)
    return _to_unit_float(images).mul(255.0).transpose(1, 2).contiguous()


def _check_batch(images: torch.Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape (N, 3, H, W), got {tuple(images.shape)}")


def normalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 -> normalised float32 in one fused multiply-add (evaluation path, no augmentation)."""
    _check_batch(images)
    if not (images.dtype == torch.uint8 or images.is_floating_point()):
        raise TypeError(f"expected uint8 (or float in [0, 1]) images, got {images.dtype}")
    # (x / 255 - mean) / std  ==  x * (1 / (255 std)) + (-mean / std)
    unit = 1.0 / 255.0 if images.dtype == torch.uint8 else 1.0
    scale, shift = _channel_affine(tuple(unit / s for s in std), tuple(-m / s for m, s in zip(mean, std)), images.device)
    return torch.addcmul(shift, images.float(), scale)


_AFFINE_CACHE: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _channel_affine(scale, shift, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel constants, built once per device: a host->device copy per call blocks the host."""
    key = (tuple(float(v) for v in scale), tuple(float(v) for v in shift), torch.device(device))
    if key not in _AFFINE_CACHE:
        _AFFINE_CACHE[key] = (
            torch.tensor(key[0], dtype=torch.float32, device=device).view(1, 3, 1, 1),
            torch.tensor(key[1], dtype=torch.float32, device=device).view(1, 3, 1, 1),
        )
    return _AFFINE_CACHE[key]


def center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """Centre crop with torchvision's anchor rounding; a view, so no copy of the uint8 batch."""
    h, w = images.shape[-2:]
    if (h, w) == (size, size):
        return images
    if h < size or w < size:
        raise ValueError(f"cannot center-crop {h}x{w} images to {size}x{size}")
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return images[..., top : top + size, left : left + size]


# ----------------------------------------------------------------------------- geometry


def _sample_boxes(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    device: torch.device,
    generator: torch.Generator | None = None,
    attempts: int = 10,
) -> torch.Tensor:
    """RandomResizedCrop.get_params for a batch: (n, 4) float boxes (top, left, height, width).

    torchvision tries up to 10 (area, aspect) draws and keeps the first that fits; drawing all
    10 per sample at once and taking the first valid one (argmax over the validity mask) gives
    the same distribution without a data-dependent loop. If none fits, torchvision's fallback
    (a centre crop clamped to the ratio range) is a constant for a given image size.
    """
    area = float(height * width)
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    u = torch.rand(n, attempts, 2, device=device, generator=generator)
    target_area = area * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    aspect = torch.exp(log_r[0] + (log_r[1] - log_r[0]) * u[..., 1])
    # torch.round and Python's round both round half to even.
    w = torch.sqrt(target_area * aspect).round_()
    h = torch.sqrt(target_area / aspect).round_()
    valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = valid.to(torch.uint8).argmax(dim=1, keepdim=True)  # first True (argmax keeps the first max)
    found = valid.any(dim=1)
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)

    # torchvision's fallback, computed on the host: it only depends on the image size.
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fh, fw = height, int(round(height * max(ratio)))
    else:
        fw, fh = width, height
    w = torch.where(found, w, float(fw))
    h = torch.where(found, h, float(fh))

    # torch.randint(0, H - h + 1) with a per-sample bound: floor(U * (H - h + 1)), U in [0, 1).
    v = torch.rand(n, 2, device=device, generator=generator)
    top = torch.floor(v[:, 0] * (height - h + 1)).clamp_(max=height - h)
    left = torch.floor(v[:, 1] * (width - w + 1)).clamp_(max=width - w)
    top = torch.where(found, top, float((height - fh) // 2))
    left = torch.where(found, left, float((width - fw) // 2))
    return torch.stack((top, left, h, w), dim=1)


def _source_coords(start: torch.Tensor, length: torch.Tensor, size: int) -> torch.Tensor:
    """Pixel coordinates F.interpolate(bilinear, align_corners=False) reads for each output pixel.

    src = start + (k + 0.5) * length / size - 0.5, clamped to the crop ([start, start+length-1]),
    as interpolate clamps to the cropped tensor: near the crop edge, upsampling repeats the edge
    pixel instead of blending in the pixel just outside the crop.
    """
    k = torch.arange(size, device=start.device, dtype=torch.float32).add_(0.5).div_(size)
    src = start[:, None] + k[None, :] * length[:, None] - 0.5
    return torch.minimum(torch.maximum(src, start[:, None]), (start + length - 1)[:, None])


def _resized_crop(x: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor | None, size: int) -> torch.Tensor:
    """Crop each sample to its box, resize to size x size (bilinear) and mirror where flip: one kernel.

    grid_sample rather than torchvision.ops.roi_align: the horizontal flip is folded into the
    same sampling grid (reversed x coordinates) instead of costing a second pass, and the grid
    is built from two 1-D coordinate vectors so it can clamp to the crop box exactly as
    resized_crop(antialias=False) does (affine_grid cannot express that clamp, roi_align clamps
    to the image border instead). Bilinear without antialiasing: a view that is smaller than its
    box (down-sampling, e.g. large images cropped to 224 px) is not low-pass filtered first,
    unlike torchvision's default antialias=True; on CIFAR (boxes <= 32 px into 32 px views)
    there is only up-sampling, where antialiasing has no effect.
    """
    n, _, height, width = x.shape
    top, left, h, w = boxes.unbind(1)
    xs = _source_coords(left, w, size)
    ys = _source_coords(top, h, size)
    if flip is not None:
        xs = torch.where(flip[:, None], xs.flip(1), xs)
    # Pixel coordinate -> grid_sample's [-1, 1] (align_corners=False: -1 is the left edge of pixel 0).
    gx = xs.mul_(2.0 / width).add_(1.0 / width - 1.0)
    gy = ys.mul_(2.0 / height).add_(1.0 / height - 1.0)
    grid = torch.stack((gx[:, None, :].expand(n, size, size), gy[:, :, None].expand(n, size, size)), dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _cubic(t: torch.Tensor) -> torch.Tensor:
    """PIL's bicubic kernel (a = -0.5), in PIL's operation order."""
    t = t.abs()
    near = (1.5 * t - 2.5) * t * t + 1.0
    far = (((t - 5.0) * t + 8.0) * t - 4.0) * -0.5
    return torch.where(t < 1.0, near, torch.where(t < 2.0, far, 0.0))


def _pil_taps(start: torch.Tensor, length: torch.Tensor, size: int, extent: int) -> tuple[torch.Tensor, torch.Tensor]:
    """PIL's bicubic resize of [start, start + length) to `size` pixels: (n, size, K) tap indices and weights.

    PIL's precompute_coeffs and its 22-bit rounding, in float64 and in PIL's operation order, so
    the weights are PIL's to the bit: the kernel is stretched by the reduction factor when
    down-sampling (PIL's antialiasing), taps outside the crop are dropped and each output
    pixel's weights renormalised. K, PIL's tap count for the whole image, is fixed by the
    shapes: each output pixel reads K consecutive pixels, a window moved inside the image where
    needed; taps outside PIL's own window weigh exactly 0.
    """
    dev, f64 = start.device, torch.float64
    taps = min(extent, 2 * math.ceil(2.0 * max(1.0, extent / size)) + 1)
    start, length = start.to(f64)[:, None, None], length.to(f64)[:, None, None]
    scale = length / size
    filterscale = scale.clamp(min=1.0)
    center = torch.arange(size, device=dev, dtype=f64).add_(0.5)[None, :, None] * scale  # in the crop
    first = (center - 2.0 * filterscale + 0.5).floor_().clamp_(min=0.0).add_(start).clamp_(max=extent - taps)
    pos = first + torch.arange(taps, device=dev, dtype=f64)  # in the image
    w = torch.where((pos >= start) & (pos < start + length), _cubic((pos - start - center + 0.5) * (1.0 / filterscale)), 0.0)
    total = w[..., 0]
    for k in range(1, taps):  # PIL's summation order (leading zeros leave it unchanged)
        total = total + w[..., k]
    w = w / total[..., None]
    # normalize_coeffs_8bpc: round half away from zero to 22 fractional bits.
    return pos.long(), w.abs().mul_(2.0**22).add_(0.5).floor_().div_(2.0**22).mul_(w.sign())


def _pil_matrix(start: torch.Tensor, length: torch.Tensor, size: int, extent: int, flip: torch.Tensor | None = None) -> torch.Tensor:
    """(n, 2 size, extent) resampling matrix, zero outside the box: PIL's weights as hi (rows < size) + lo halves.

    A weight has up to 23 significant bits and a pixel 8, so one float32 matmul would round the
    sums (about 1e-4 of the pixels then land one level off). Split at 2^-11, each half's
    products and sums are exact in float32, in any summation order: hi sums are multiples of
    2^-11 below 2^9; lo terms are multiples of 2^-22 below 2^-4, exact (with _pil_round) up to
    48 taps, a 12x reduction. The flip reverses the output columns.
    """
    index, w = _pil_taps(start, length, size, extent)
    if flip is not None:
        index = torch.where(flip[:, None, None], index.flip(1), index)
        w = torch.where(flip[:, None, None], w.flip(1), w)
    hi = torch.round(w * 2.0**11).div_(2.0**11)
    band = torch.cat((hi, w - hi), dim=1).float()
    return torch.zeros(len(start), 2 * size, extent, device=start.device).scatter_(2, index.repeat(1, 2, 1), band)


def _pil_round(hi: torch.Tensor, lo: torch.Tensor) -> torch.Tensor:
    """PIL's clip8: round half up and clip to [0, 255], from the exact sums of the two halves.

    hi + lo would round in float32; instead floor(hi + 0.5) + floor(frac + lo), each step exact.
    """
    u = hi + 0.5
    q = u.floor()
    return q.add_(u.sub_(q).add_(lo).floor_()).clamp_(0.0, 255.0)


def _bicubic_crop(levels: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor | None, size: int) -> torch.Tensor:
    """The reference's crop: PIL's antialiased bicubic resize of each box, then flip; on the 0..255 grid.

    PIL's arithmetic as two batched matmuls with per-sample resampling matrices: horizontal pass
    first, each pass rounded to uint8, as Pillow <= 12 (the reference's). Pillow 13 starts with
    the vertical pass when h > size and h - size > 2 (w - size); in those tall down-sampled
    boxes up to ~10% of a smooth image's pixels then differ by a level or two (more on noise).
    Never at CIFAR scale (h <= size). The matrices span the whole image, so the cost grows with
    the image, not the box. `levels` is (N, H, 3, W): both passes are then plain bmms on views,
    with no transposing copy.
    """
    n, height, c, width = levels.shape
    top, left, h, w = boxes.unbind(1)
    rows = torch.bmm(levels.view(n, height * c, width), _pil_matrix(left, w, size, width, flip).transpose(1, 2))
    rows = _pil_round(rows[..., :size], rows[..., size:]).view(n, height, c * size)
    out = torch.bmm(_pil_matrix(top, h, size, height), rows).view(n, 2 * size, c, size)
    return _pil_round(out[:, :size], out[:, size:]).transpose(1, 2).contiguous()


# ----------------------------------------------------------------------------- colour ops
# Each takes one factor per sample (shape (N,)); torchvision's take one per call.


def _gray(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) luma with torchvision's weights."""
    r, g, b = x.unbind(1)
    return r.mul(_GRAY_WEIGHTS[0]).add_(g, alpha=_GRAY_WEIGHTS[1]).add_(b, alpha=_GRAY_WEIGHTS[2]).unsqueeze_(1)


def _adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return x.mul(factor.view(-1, 1, 1, 1)).clamp_(0.0, 1.0)


def _adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
    return torch.lerp(mean, x, factor.view(-1, 1, 1, 1)).clamp_(0.0, 1.0)


def _adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return torch.lerp(_gray(x), x, factor.view(-1, 1, 1, 1)).clamp_(0.0, 1.0)


def _adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate hue in HSV by a per-sample shift (fraction of a turn), as adjust_hue.

    Same rgb->hsv as torchvision (Pillow's); hsv->rgb by the closed form
    c = min + (max - min) * clamp(|((6H + n) mod 6) - 3| - 1, 0, 1), n = 6, 4, 2 for r, g, b
    (Wikipedia's "alternative HSV to RGB", V - V*S*clamp(min(k, 4 - k), 0, 1), rewritten):
    no gather over the six hue sectors, and V, S never need to be formed.
    """
    r, g, b = x.unbind(1)
    # maximum/minimum of the three planes: much faster than aminmax(dim=1) on CPU, same on GPU.
    maxc = torch.maximum(torch.maximum(r, g), b)
    minc = torch.minimum(torch.minimum(r, g), b)
    delta = maxc - minc
    is_r = maxc == r
    is_g = maxc == g
    # 6 * hue before the mod; torchvision's sector priority is r, then g, then b. The sector
    # offsets (0, 2, 4) are added as multiples of delta, before the one division.
    num = torch.where(is_r, g - b, torch.where(is_g, (b - r).add_(delta, alpha=2.0), (r - g).add_(delta, alpha=4.0)))
    # Grey pixels (delta == 0) have no hue; any finite value works since delta multiplies it below.
    hue6 = num.div_(torch.where(delta == 0, 1.0, delta))
    hue6 = hue6.add_(6.0 * shift.view(-1, 1, 1)).unsqueeze_(1)  # (N, 1, H, W); the mod 6 is taken below
    n = torch.arange(6.0, 0.0, -2.0, device=x.device).view(1, 3, 1, 1)  # 6, 4, 2 without a host copy
    weight = (hue6 + n).remainder_(6.0).sub_(3.0).abs_().sub_(1.0).clamp_(0.0, 1.0)
    return weight.mul_(delta.unsqueeze(1)).add_(minc.unsqueeze(1))


def _grayscale(x: torch.Tensor, apply: torch.Tensor) -> torch.Tensor:
    return torch.where(apply.view(-1, 1, 1, 1), _gray(x), x)


def _solarize(x: torch.Tensor, apply: torch.Tensor) -> torch.Tensor:
    """where(x >= 0.5, 1 - x, x) is min(x, 1 - x) on [0, 1]: one fewer full-size mask."""
    return torch.where(apply.view(-1, 1, 1, 1), torch.minimum(x, 1.0 - x), x)


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int, apply: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample-sigma Gaussian blur, reflect padding, as torchvision's gaussian_blur.

    torchvision's takes one sigma per call; here each (sample, channel) is its own group of a
    separable depthwise conv. Samples not blurred get a delta kernel, which is exactly the
    identity, so there is no extra select pass.
    """
    n, c, height, width = x.shape
    lim = (kernel_size - 1) / (2.0 * math.sqrt(2.0))
    t = torch.linspace(-lim, lim, steps=kernel_size, device=x.device, dtype=x.dtype)
    kernel = torch.softmax(-(t[None, :] / sigma[:, None]).pow(2), dim=1)  # (N, k), torchvision's formula
    if apply is not None:
        delta = (torch.arange(kernel_size, device=x.device) == kernel_size // 2).to(x.dtype)
        kernel = torch.where(apply[:, None], kernel, delta)
    kernel = kernel.repeat_interleave(c, dim=0)  # (N*C, k), one per group
    pad = kernel_size // 2
    y = F.pad(x.reshape(1, n * c, height, width), (pad, pad, pad, pad), mode="reflect")
    y = F.conv2d(y, kernel.view(n * c, 1, 1, kernel_size), groups=n * c)
    y = F.conv2d(y, kernel.view(n * c, 1, kernel_size, 1), groups=n * c)
    return y.view(n, c, height, width)


# ----------------------------------------------------------------------------- the pipeline


def _uniform(n: int, low: float, high: float, device, generator) -> torch.Tensor:
    return torch.empty(n, device=device).uniform_(low, high, generator=generator)


# ColorJitter's op indices (its fn_idx): brightness, contrast, saturation, hue.
_JITTER_OPS = (_adjust_brightness, _adjust_contrast, _adjust_saturation, _adjust_hue)


def _apply_jitter(x: torch.Tensor, order: list[int], factors: dict[int, torch.Tensor]) -> torch.Tensor:
    """The jitter ops in `order` (op indices), each with its per-sample factors; ops without factors are skipped."""
    for idx in order:
        if idx in factors:
            x = _JITTER_OPS[idx](x, factors[idx])
    return x


class BatchAugment:
    """One SSL view of a whole batch: crop+flip, colour jitter, grayscale, blur, solarize, normalise.

    Call it once per view; each call draws fresh, independent parameters for every sample.
    """

    def __init__(self, cfg: AugmentConfig):
        self.cfg = cfg
        self.blur_kernel = _blur_kernel_size(cfg.crop_size)
        # Factor ranges as ColorJitter builds them; an op whose range is the identity alone is
        # skipped, as torchvision does.
        ranges = {}
        for idx, value in enumerate((cfg.brightness, cfg.contrast, cfg.saturation)):
            if value > 0:
                ranges[idx] = (max(0.0, 1.0 - value), 1.0 + value)
        if cfg.hue > 0:
            ranges[3] = (-cfg.hue, cfg.hue)
        self.jitter_ranges = ranges
        self._norm_scale = tuple(1.0 / s for s in cfg.std)
        self._norm_shift = tuple(-m / s for m, s in zip(cfg.mean, cfg.std))

    def __repr__(self) -> str:
        return f"BatchAugment({self.cfg})"

    def _jitter_params(self, n: int, device: torch.device, generator: torch.Generator | None):
        """Per-sample factors, and ONE op order for the whole batch.

        torchvision applies the four ops in a random order per image. A per-sample order would
        mean evaluating every op at every position (4x the work, hue being the costly one), so
        the order is drawn once per batch (every sample still gets its own factors). Over many
        batches each sample sees every order equally often; only samples within one batch share
        it. The permutation is drawn on the CPU (from `generator` if it is a CPU generator, else
        from torch's default CPU generator, which torch.manual_seed seeds): the host needs it to
        sequence the kernels, and drawing it on the device would need a sync.
        """
        factors = {idx: _uniform(n, lo, hi, device, generator) for idx, (lo, hi) in self.jitter_ranges.items()}
        cpu_gen = generator if generator is not None and generator.device.type == "cpu" else None
        order = torch.randperm(4, generator=cpu_gen).tolist()
        return order, factors

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(N, 3, H, W) uint8 -> (N, 3, S, S) float32, normalised, on the same device."""
        _check_batch(images)
        cfg = self.cfg
        n, _, height, width = images.shape
        device = images.device
        # Under torchrun, every draw is for the global batch and this rank keeps its rows (gatedssl.distributed).
        total, rows = global_rows(n)
        # All Bernoulli draws at once: flip, jitter, gray, blur, solarize.
        # (Compared with Python floats: a torch.tensor(list, device=cuda) would be a blocking copy.)
        coin = torch.rand(5, total, device=device, generator=generator)[:, rows]
        flip, jitter, gray, blur, solarize = (
            coin[i] < p for i, p in enumerate((cfg.flip_p, cfg.jitter_p, cfg.gray_p, cfg.blur_p, cfg.solarize_p))
        )

        boxes = _sample_boxes(total, height, width, cfg.scale, cfg.ratio, device, generator)[rows]
        flip = flip if cfg.flip_p > 0 else None
        if cfg.interpolation == "bicubic":
            x = _bicubic_crop(_to_levels(images), boxes, flip, cfg.crop_size).mul_(1.0 / 255.0)
        else:
            x = _resized_crop(_to_unit_float(images), boxes, flip, cfg.crop_size)
        if cfg.jitter_p > 0 and self.jitter_ranges:
            order, factors = self._jitter_params(total, device, generator)
            factors = {idx: f[rows] for idx, f in factors.items()}
            x = torch.where(jitter.view(-1, 1, 1, 1), _apply_jitter(x, order, factors), x)
        if cfg.gray_p > 0:
            x = _grayscale(x, gray)
        if cfg.blur_p > 0:
            sigma = _uniform(total, cfg.blur_sigma[0], cfg.blur_sigma[1], device, generator)[rows]
            x = _gaussian_blur(x, sigma, self.blur_kernel, blur)
        if cfg.solarize_p > 0:
            x = _solarize(x, solarize)
        scale, shift = _channel_affine(self._norm_scale, self._norm_shift, device)
        return torch.addcmul(shift, x, scale)
