"""Batched on-device SSL augmentation vs torchvision's per-image reference.

Op tests: each batched op, with given per-sample parameters, equals the torchvision.transforms.v2
functional op applied image by image. Statistical tests: the random parameters follow
torchvision's distributions (KS distances, binomial tolerances); all seeded, so not flaky.
"""

from __future__ import annotations

import colorsys
import dataclasses
import math

import pytest
import torch
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF

from gatedssl.data import augment as A
from gatedssl.data.augment import INTERPOLATIONS, AugmentConfig, BatchAugment, center_crop, normalize, recipe
from gatedssl.data.pipelines import DeviceViews, LoaderViews, make_views, torchvision_transform

ATOL = 1e-5


def _images(n: int = 24, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    """Float images in [0, 1] with the awkward cases included: grey pixels, ties, 0 and 1."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, h, w, generator=g)
    x[0] = x[0, :1]  # grey image: hue undefined, saturation no-op
    x[1] = (x[1] * 4).round() / 4  # many channel ties (max == r == g ...)
    x[2] = (x[2] * 255).round() / 255  # uint8 levels
    x[3, :, :4] = 0.0
    x[3, :, 4:8] = 1.0
    return x


def _per_image(fn, x, factors):
    return torch.stack([fn(x[i], float(factors[i])) for i in range(x.shape[0])])


def _ks(a: torch.Tensor, b: torch.Tensor) -> float:
    """Two-sample Kolmogorov-Smirnov statistic (works for discrete values too)."""
    a, b = a.double().sort().values, b.double().sort().values
    grid = torch.cat([a, b])
    cdf_a = torch.searchsorted(a, grid, right=True).double() / a.numel()
    cdf_b = torch.searchsorted(b, grid, right=True).double() / b.numel()
    return float((cdf_a - cdf_b).abs().max())


def _ks_uniform(x: torch.Tensor, lo: float, hi: float) -> float:
    """One-sample KS distance of x to U(lo, hi)."""
    x = x.double().sort().values
    n = x.numel()
    cdf = ((x - lo) / (hi - lo)).clamp(0, 1)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return float(torch.maximum(i / n - cdf, cdf - (i - 1) / n).max())


def _binomial_ok(k: int, n: int, p: float, sigmas: float = 4.5) -> bool:
    return abs(k / n - p) <= sigmas * math.sqrt(p * (1 - p) / n)


def _static(**kw) -> AugmentConfig:
    """A config with every random op off and an identity crop; tests switch one thing back on."""
    base = dict(crop_size=8, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, gray_p=0.0, blur_p=0.0, solarize_p=0.0)
    base.update(kw)
    return AugmentConfig(**base)


def _unnormalize(y: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    mean = torch.tensor(cfg.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std).view(1, 3, 1, 1)
    return y * std + mean


# ----------------------------------------------------------------------------- colour ops


@pytest.mark.parametrize(
    "ours, theirs, lo, hi",
    [
        (A._adjust_brightness, TF.adjust_brightness, 0.0, 2.0),
        (A._adjust_contrast, TF.adjust_contrast, 0.0, 2.0),
        (A._adjust_saturation, TF.adjust_saturation, 0.0, 2.0),
        (A._adjust_hue, TF.adjust_hue, -0.5, 0.5),
    ],
    ids=["brightness", "contrast", "saturation", "hue"],
)
def test_color_op_matches_torchvision_per_image(ours, theirs, lo, hi):
    x = _images()
    factors = torch.linspace(lo, hi, x.shape[0])  # includes both ends and the identity
    factors = factors[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(1))]
    got = ours(x, factors)
    want = _per_image(theirs, x, factors)
    assert got.shape == x.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_hue_is_not_identity_and_wraps():
    x = _images()
    shifted = A._adjust_hue(x, torch.full((x.shape[0],), 0.25))
    assert (shifted[4:] - x[4:]).abs().max() > 0.1
    # A full turn is the identity, whichever way it wraps.
    torch.testing.assert_close(
        A._adjust_hue(x, torch.full((x.shape[0],), 0.5)), A._adjust_hue(x, torch.full((x.shape[0],), -0.5)), atol=ATOL, rtol=0
    )


def test_grayscale_matches_torchvision():
    x = _images()
    apply = torch.arange(x.shape[0]) % 3 == 0
    got = A._grayscale(x, apply)
    want = torch.stack([TF.rgb_to_grayscale(x[i], num_output_channels=3) if apply[i] else x[i] for i in range(x.shape[0])])
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_solarize_matches_torchvision():
    x = _images()
    x[5, :, 0, 0] = 0.5  # the threshold itself is solarized (>=)
    apply = torch.arange(x.shape[0]) % 2 == 1
    got = A._solarize(x, apply)
    want = torch.stack([TF.solarize(x[i], threshold=0.5) if apply[i] else x[i] for i in range(x.shape[0])])
    torch.testing.assert_close(got, want, atol=0, rtol=0)


@pytest.mark.parametrize("kernel_size", [3, 9])
def test_gaussian_blur_matches_torchvision(kernel_size):
    x = _images(n=8, h=20, w=24)
    sigma = torch.linspace(0.1, 2.0, 8)
    apply = torch.tensor([True, False] * 4)
    got = A._gaussian_blur(x, sigma, kernel_size, apply)
    want = torch.stack([TF.gaussian_blur(x[i], [kernel_size, kernel_size], [float(sigma[i])] * 2) if apply[i] else x[i] for i in range(8)])
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    assert torch.equal(got[~apply], x[~apply])  # the delta kernel is exactly the identity


# ----------------------------------------------------------------------------- geometry


def _reference_crop(x, boxes, flip, size):
    out = []
    for i in range(x.shape[0]):
        top, left, h, w = (int(v) for v in boxes[i])
        y = TF.resized_crop(x[i], top, left, h, w, [size, size], interpolation=TF.InterpolationMode.BILINEAR, antialias=False)
        out.append(TF.hflip(y) if flip[i] else y)
    return torch.stack(out)


@pytest.mark.parametrize("height, width, size", [(32, 32, 32), (40, 48, 32), (32, 32, 16)])
def test_resized_crop_and_flip_match_torchvision(height, width, size):
    x = _images(n=16, h=height, w=width)
    g = torch.Generator().manual_seed(3)
    boxes = A._sample_boxes(12, height, width, (0.05, 1.0), (0.5, 2.0), x.device, g)
    # Boxes on the image border and the whole image too.
    extra = torch.tensor(
        [[0, 0, height, width], [height - 5, width - 7, 5, 7], [0, width - 3, height, 3], [2, 0, 4, width]], dtype=torch.float32
    )
    boxes = torch.cat([boxes, extra])
    flip = torch.arange(16) % 2 == 0
    got = A._resized_crop(x, boxes, flip, size)
    want = _reference_crop(x, boxes, flip, size)
    assert got.shape == (16, 3, size, size)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    # and without flips, nothing is mirrored
    torch.testing.assert_close(A._resized_crop(x, boxes, None, size), _reference_crop(x, boxes, [False] * 16, size), atol=ATOL, rtol=0)


BICUBIC = TF.InterpolationMode.BICUBIC


def _pil_crop(x, boxes, flip, size, *, one_call=True):
    """The reference's crop: torchvision's RandomResizedCrop path on PIL images (crop, then PIL's
    bicubic resize), then flip; uint8.

    one_call=False resizes the width, then the height, in two calls: PIL's own passes in the
    order of Pillow <= 12's one call (the reference's). Pillow 13 starts tall down-sampled boxes
    (h > size and h - size > 2 (w - size)) with the vertical pass, so the down-sampling tests
    pin the order with two calls.
    """
    out = []
    for i in range(x.shape[0]):
        top, left, h, w = (int(v) for v in boxes[i])
        image = TF.to_pil_image(x[i])
        if one_call:
            y = TF.resized_crop(image, top, left, h, w, [size, size], interpolation=BICUBIC)
        else:
            y = TF.resized_crop(image, top, left, h, w, [h, size], interpolation=BICUBIC)
            y = TF.resize(y, [size, size], interpolation=BICUBIC)
        out.append(TF.pil_to_tensor(TF.hflip(y) if flip[i] else y))
    return torch.stack(out)


def _smooth_u8(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Photo-like (smooth) uint8 images: the rounding ties of flat areas, unlike noise."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, max(2, h // 8), max(2, w // 8), generator=g) * 255
    return torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic").clamp(0, 255).round().to(torch.uint8)


def _crop_cases(x, seed):
    """Random boxes (non-square, 5% to 100% of the image), the image border, 1-pixel strips; every other flipped."""
    n, _, height, width = x.shape
    boxes = A._sample_boxes(n - 4, height, width, (0.05, 1.0), (0.5, 2.0), x.device, torch.Generator().manual_seed(seed))
    extra = torch.tensor(
        [[0, 0, height, width], [height - 5, width - 7, 5, 7], [0, width - 1, height, 1], [2, 0, 1, width]], dtype=torch.float32
    )
    return torch.cat([boxes, extra]), torch.arange(n) % 2 == 0


# Exact, not within a tolerance: measured max |diff| 0 (so mean 0) over about 14M pixel values
# (these cases; 32 px CIFAR boxes into 32; 64-800 px images into 16-224 px), for noise and
# smooth images. The weights are PIL's to the bit and the split float32 matmuls add exactly
# (A._pil_matrix); a plain float32 matmul was one level off on about 1e-4 of the pixels (max 2
# after both passes), so even a 1-level tolerance would let that back in.
@pytest.mark.parametrize("height, width, size", [(32, 32, 32), (24, 32, 32), (20, 28, 32), (32, 64, 32)])
def test_bicubic_crop_is_pils_resized_crop(height, width, size):
    # h <= size: every Pillow resizes these horizontal pass first, as our crop, so one call is the
    # reference. (32, 64): wide boxes down-sample horizontally.
    for x in (_u8(16, height, width), _smooth_u8(16, height, width)):
        boxes, flip = _crop_cases(x, seed=height + width)
        got = A._bicubic_crop(A._to_levels(x), boxes, flip, size)
        assert got.shape == (16, 3, size, size) and got.is_contiguous()
        torch.testing.assert_close(got, _pil_crop(x, boxes, flip, size).float(), atol=0, rtol=0)


@pytest.mark.parametrize("height, width, size", [(100, 64, 32), (64, 100, 48), (80, 80, 48), (90, 70, 16)])
def test_bicubic_crop_is_pils_when_down_sampling(height, width, size):
    for x in (_u8(16, height, width), _smooth_u8(16, height, width)):
        boxes, flip = _crop_cases(x, seed=height + width)
        got = A._bicubic_crop(A._to_levels(x), boxes, flip, size)
        torch.testing.assert_close(got, _pil_crop(x, boxes, flip, size, one_call=False).float(), atol=0, rtol=0)
    no_flip = _pil_crop(x, boxes, [False] * 16, size, one_call=False).float()
    torch.testing.assert_close(A._bicubic_crop(A._to_levels(x), boxes, None, size), no_flip, atol=0, rtol=0)


def _torchvision_boxes(n: int, height: int, width: int, scale, ratio) -> torch.Tensor:
    t = T.RandomResizedCrop(32, scale=scale, ratio=ratio)
    make_params = getattr(t, "make_params", None) or t._get_params  # renamed in torchvision 0.21
    img = torch.empty(3, height, width)
    rows = []
    for _ in range(n):
        p = make_params([img])
        rows.append((p["top"], p["left"], p["height"], p["width"]))
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("height, width", [(32, 32), (24, 64)])
def test_box_distribution_matches_torchvision(height, width):
    n, scale, ratio = 20000, (0.2, 1.0), (3 / 4, 4 / 3)
    torch.manual_seed(0)
    ref = _torchvision_boxes(n, height, width, scale, ratio)
    ours = A._sample_boxes(n, height, width, scale, ratio, torch.device("cpu"), torch.Generator().manual_seed(0)).double()
    assert ours.shape == (n, 4)
    top, left, h, w = ours.unbind(1)
    # Always a valid integer box inside the image.
    assert torch.equal(ours, ours.round())
    assert (h >= 1).all() and (w >= 1).all() and (top >= 0).all() and (left >= 0).all()
    assert (top + h <= height).all() and (left + w <= width).all()
    # 5 sigma-ish bound for two 20k samples is ~0.02; a wrong scale/ratio/position rule gives >> that.
    for name, a, b in [
        ("area", h * w / (height * width), ref[:, 2] * ref[:, 3] / (height * width)),
        ("log aspect", (w / h).log(), (ref[:, 3] / ref[:, 2]).log()),
        ("height", h, ref[:, 2]),
        ("top", top, ref[:, 0]),
        ("left", left, ref[:, 1]),
    ]:
        assert _ks(a, b) < 0.02, name
    # Means: standard error of a difference of two 20k means is ~0.0025 (area) and ~0.0012 (log aspect).
    assert abs(float((h * w).mean() - (ref[:, 2] * ref[:, 3]).mean())) / (height * width) < 0.012
    assert abs(float((w / h).log().mean() - (ref[:, 3] / ref[:, 2]).log().mean())) < 0.006


def test_box_fallback_is_torchvisions_center_crop():
    # 4x200: no (area, ratio) draw fits, so every box is the fallback: full height, widest allowed ratio.
    torch.manual_seed(0)
    ref = _torchvision_boxes(50, 4, 200, (0.2, 1.0), (3 / 4, 4 / 3))
    ours = A._sample_boxes(50, 4, 200, (0.2, 1.0), (3 / 4, 4 / 3), torch.device("cpu"), torch.Generator().manual_seed(0))
    assert torch.equal(ref[0], torch.tensor([0.0, 97.0, 4.0, 5.0], dtype=torch.float64))
    assert torch.equal(ours.double(), ref)


def test_box_fallback_fraction_matches_torchvision():
    # Tall thin image (ratio 1/4): some draws fit, others fall back, in torchvision's proportion.
    n, scale, ratio = 10000, (0.08, 1.0), (3 / 4, 4 / 3)
    torch.manual_seed(1)
    ref = _torchvision_boxes(n, 64, 16, scale, ratio)
    ours = A._sample_boxes(n, 64, 16, scale, ratio, torch.device("cpu"), torch.Generator().manual_seed(1)).double()
    fallback = torch.tensor([(64 - 21) // 2, 0, 21, 16], dtype=torch.float64)  # h = round(16 / (3/4))
    ref_frac = (ref == fallback).all(1).double().mean()
    our_frac = (ours == fallback).all(1).double().mean()
    assert 0.03 < ref_frac < 0.5  # the case is informative
    assert abs(float(our_frac - ref_frac)) < 0.02  # ~5 standard errors
    assert _ks(ours[:, 2] * ours[:, 3], ref[:, 2] * ref[:, 3]) < 0.03


# ----------------------------------------------------------------------------- the pipeline


def _u8(n: int, h: int = 8, w: int = 8, seed: int = 0, low: int = 0, high: int = 256) -> torch.Tensor:
    return torch.randint(low, high, (n, 3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
def test_output_shape_dtype_device_and_range(interpolation):
    cfg = AugmentConfig(interpolation=interpolation)
    aug = BatchAugment(cfg)
    for h, w in [(32, 32), (40, 48)]:
        out = aug(_u8(16, h, w), torch.Generator().manual_seed(0))
        assert out.shape == (16, 3, 32, 32) and out.dtype == torch.float32 and out.device.type == "cpu"
        unit = _unnormalize(out, cfg)
        assert unit.min() >= -1e-5 and unit.max() <= 1 + 1e-5


def test_bilinear_is_the_default_and_the_old_code_path():
    """The bilinear pipeline is op for op (and draw for draw) what it was before the bicubic crop."""
    cfg = AugmentConfig(blur_p=0.5)
    assert AugmentConfig().interpolation == "bilinear" and recipe(32, cfg.mean, cfg.std).interpolation == "bilinear"
    x = _u8(32, 40, 48)
    got = BatchAugment(cfg)(x, torch.Generator().manual_seed(7))

    g = torch.Generator().manual_seed(7)
    coin = torch.rand(5, 32, generator=g)
    flip, jitter, gray, blur, solarize = (
        coin[i] < p for i, p in enumerate((cfg.flip_p, cfg.jitter_p, cfg.gray_p, cfg.blur_p, cfg.solarize_p))
    )
    boxes = A._sample_boxes(32, 40, 48, cfg.scale, cfg.ratio, x.device, g)
    y = A._resized_crop(A._to_unit_float(x), boxes, flip, cfg.crop_size)
    aug = BatchAugment(cfg)
    order, factors = aug._jitter_params(32, x.device, g)
    y = torch.where(jitter.view(-1, 1, 1, 1), A._apply_jitter(y, order, factors), y)
    y = A._gaussian_blur(A._grayscale(y, gray), A._uniform(32, *cfg.blur_sigma, x.device, g), aug.blur_kernel, blur)
    scale, shift = A._channel_affine(aug._norm_scale, aug._norm_shift, x.device)
    assert torch.equal(got, torch.addcmul(shift, A._solarize(y, solarize), scale))


def test_bicubic_pipeline_is_pils_crop_of_the_same_draws():
    # 16x12 images into 16: up-sampling, where one PIL call is the reference whatever the Pillow.
    cfg = _static(crop_size=16, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), flip_p=0.5, interpolation="bicubic")
    x = _u8(32, 16, 12)
    g = torch.Generator().manual_seed(0)
    out = BatchAugment(cfg)(x, g)
    ref_g = torch.Generator().manual_seed(0)
    flip = torch.rand(5, 32, generator=ref_g)[0] < 0.5  # BatchAugment's draws: the five coins, then the boxes
    boxes = A._sample_boxes(32, 16, 12, cfg.scale, cfg.ratio, x.device, ref_g)
    torch.testing.assert_close(_unnormalize(out, cfg) * 255, _pil_crop(x, boxes, flip, 16).float(), atol=1e-3, rtol=0)
    assert 0 < int(flip.sum()) < 32
    # Same random stream as bilinear: the modes differ in the crop's kernel only.
    bilinear_g = torch.Generator().manual_seed(0)
    BatchAugment(dataclasses.replace(cfg, interpolation="bilinear"))(x, bilinear_g)
    assert torch.equal(bilinear_g.get_state(), g.get_state())
    # Float input in [0, 1]: the same crop, up to the float32 rounding of x / 255 * 255.
    floats = BatchAugment(cfg)(x.float() / 255, torch.Generator().manual_seed(0))
    torch.testing.assert_close(_unnormalize(floats, cfg), _unnormalize(out, cfg), atol=1.01 / 255, rtol=0)


def test_per_view_recipes():
    """A (view 1, view 2) pair of recipes: only the second view blurred, as the reference's CIFAR-100 recipe."""
    plain, blurred = _static(), _static(blur_p=1.0, blur_sigma=(1.0, 2.0))
    x = _u8(16, 8, 8)
    device = make_views("device", x, (plain, blurred), 16, torch.device("cpu"))
    loader = LoaderViews(x, (plain, blurred), 16, torch.device("cpu"), workers=0)
    per_image = [loader.loader.dataset[i] for i in range(16)]  # both torchvision transforms, in image order
    for x1, x2 in [next(device.epoch(torch.arange(16))), tuple(torch.stack(v) for v in zip(*per_image))]:
        torch.testing.assert_close(x1, normalize(x, plain.mean, plain.std), atol=ATOL, rtol=0)
        assert ((x2 - x1).flatten(1).abs().amax(1) > 1e-2).all()


def test_one_recipe_gives_both_views_the_old_stream():
    """One config: view 1 then view 2 from the same augmentation, the stream of calling it twice."""
    cfg = AugmentConfig()
    x = _u8(16, 32, 32)
    views = DeviceViews(x, BatchAugment(cfg), 16, torch.device("cpu"))
    assert views.augments[0] is views.augments[1]
    torch.manual_seed(0)
    got = views.pair(x)
    torch.manual_seed(0)
    aug = BatchAugment(cfg)
    want = (aug(x), aug(x))
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert not torch.equal(got[0], got[1])


def test_torchvision_transform_follows_the_interpolation():
    for interpolation, mode in [("bilinear", TF.InterpolationMode.BILINEAR), ("bicubic", BICUBIC)]:
        crop = torchvision_transform(AugmentConfig(interpolation=interpolation)).transforms[0]
        assert isinstance(crop, T.RandomResizedCrop) and crop.interpolation == mode and crop.antialias


def test_static_pipeline_is_normalize():
    cfg = _static()
    x = _u8(8, 8, 8)
    torch.testing.assert_close(BatchAugment(cfg)(x), normalize(x, cfg.mean, cfg.std), atol=ATOL, rtol=0)


def test_normalize_matches_torchvision_and_inverts():
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    x = _u8(4, 32, 32)
    y = normalize(x, mean, std)
    want = TF.normalize(TF.to_dtype(x, torch.float32, scale=True), list(mean), list(std))
    torch.testing.assert_close(y, want, atol=ATOL, rtol=0)
    back = y * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    assert torch.equal((back * 255).round().to(torch.uint8), x)


def test_center_crop():
    x = _u8(2, 35, 41)  # odd margins: torchvision rounds 1.5 up, 4.5 down (half to even)
    torch.testing.assert_close(center_crop(x, 32), TF.center_crop(x, [32, 32]), atol=0, rtol=0)
    y = _u8(2, 32, 32)
    assert center_crop(y, 32) is y
    with pytest.raises(ValueError):
        center_crop(y, 40)


def test_seeded_generator_is_deterministic_and_calls_differ():
    aug = BatchAugment(AugmentConfig())
    x = _u8(32, 32, 32)
    a = aug(x, torch.Generator().manual_seed(7))
    b = aug(x, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    g = torch.Generator().manual_seed(7)
    v1, v2 = aug(x, g), aug(x, g)
    assert not torch.allclose(v1, v2)
    # Every sample's two views differ (independent draws per sample, not one per batch).
    assert ((v1 - v2).flatten(1).abs().amax(1) > 1e-3).all()
    # Without a generator: torch's default one, so torch.manual_seed reproduces.
    torch.manual_seed(3)
    c = aug(x)
    torch.manual_seed(3)
    assert torch.equal(c, aug(x))


def test_samples_get_independent_parameters():
    # Same image repeated: a per-batch (shared) draw would make all outputs equal.
    x = _u8(1, 32, 32).expand(64, -1, -1, -1)
    out = BatchAugment(AugmentConfig())(x, torch.Generator().manual_seed(0))
    distinct = {tuple(v.tolist()) for v in out.flatten(1)[:, ::97].round(decimals=4)}
    assert len(distinct) == 64


N_STAT = 4000


def test_flip_probability():
    cfg = _static(flip_p=0.5)
    x = _u8(N_STAT, 8, 8)
    unit = _unnormalize(BatchAugment(cfg)(x, torch.Generator().manual_seed(0)), cfg)
    ref = x.float() / 255
    same = (unit - ref).flatten(1).abs().amax(1) < 1e-4
    mirrored = (unit - ref.flip(-1)).flatten(1).abs().amax(1) < 1e-4
    assert (same ^ mirrored).all()  # each output is exactly one of the two
    assert _binomial_ok(int(mirrored.sum()), N_STAT, 0.5)


@pytest.mark.parametrize("field, p", [("jitter_p", 0.8), ("gray_p", 0.2), ("solarize_p", 0.1), ("blur_p", 0.5)])
def test_branch_probability(field, p):
    # (sigma >= 1 so that every blur is visible: below ~0.2 the 3-tap kernel is a delta.)
    cfg = _static(**{field: p}, blur_sigma=(1.0, 2.0))
    # Colourful images with every value >= 128, so solarization changes every pixel.
    x = _u8(N_STAT, 8, 8, low=128, high=256)
    unit = _unnormalize(BatchAugment(cfg)(x, torch.Generator().manual_seed(0)), cfg)
    changed = (unit - x.float() / 255).flatten(1).abs().amax(1) > 1e-4
    assert _binomial_ok(int(changed.sum()), N_STAT, p), (field, float(changed.float().mean()))
    if field == "gray_p":
        grey = (unit[:, 0] - unit[:, 1]).flatten(1).abs().amax(1) < 1e-5
        assert torch.equal(grey, changed)
    if field == "solarize_p":
        assert (unit[changed] <= 0.5 + 1e-5).all()


def test_branches_are_independent():
    # flip and grayscale both at p=0.5: the four combinations each at 1/4 (not correlated draws).
    cfg = _static(flip_p=0.5, gray_p=0.5)
    x = _u8(N_STAT, 8, 8)
    unit = _unnormalize(BatchAugment(cfg)(x, torch.Generator().manual_seed(0)), cfg)
    grey = (unit[:, 0] - unit[:, 1]).flatten(1).abs().amax(1) < 1e-5
    luma = A._gray(unit)
    ref = A._gray(x.float() / 255)
    mirrored = (luma - ref.flip(-1)).flatten(1).abs().amax(1) < 1e-3
    same = (luma - ref).flatten(1).abs().amax(1) < 1e-3
    assert (same ^ mirrored).all()
    for g in (False, True):
        for m in (False, True):
            assert _binomial_ok(int(((grey == g) & (mirrored == m)).sum()), N_STAT, 0.25), (g, m)


def _single_jitter(**kw) -> AugmentConfig:
    base = dict(jitter_p=1.0, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)
    base.update(kw)
    return _static(**base)


def _run(cfg, x, seed=0):
    return _unnormalize(BatchAugment(cfg)(x, torch.Generator().manual_seed(seed)), cfg)


def _check_uniform(f, lo, hi):
    assert f.min() >= lo - 1e-3 and f.max() <= hi + 1e-3
    assert f.min() < lo + 0.01 * (hi - lo) and f.max() > hi - 0.01 * (hi - lo)
    assert _ks_uniform(f, lo, hi) < 0.03


def test_brightness_factor_range():
    cfg = _single_jitter(brightness=0.4)
    x = torch.full((N_STAT, 3, 8, 8), 100, dtype=torch.uint8)
    f = _run(cfg, x).mean(dim=(1, 2, 3)) / (100 / 255)
    _check_uniform(f, 0.6, 1.4)


def test_contrast_factor_range():
    cfg = _single_jitter(contrast=0.4)
    x = torch.full((N_STAT, 3, 8, 8), 100, dtype=torch.uint8)
    x[:, :, :, :4] = 140  # grey image, mean 120: out = 120 + f * (x - 120)
    out = _run(cfg, x) * 255
    f = (out[:, 0, 0, 4] - 120) / (100 - 120)
    _check_uniform(f, 0.6, 1.4)


def test_saturation_factor_range():
    cfg = _single_jitter(saturation=0.2)
    x = torch.zeros(N_STAT, 3, 8, 8, dtype=torch.uint8)
    x[:, 0] = 200  # red: out_r = gray + f * (200 - gray)
    gray = 0.2989 * 200
    f = (_run(cfg, x)[:, 0, 0, 0] * 255 - gray) / (200 - gray)
    _check_uniform(f, 0.8, 1.2)


def test_hue_shift_range():
    cfg = _single_jitter(hue=0.1)
    x = torch.zeros(N_STAT, 3, 8, 8, dtype=torch.uint8)
    x[:, 0] = 255  # pure red, hue 0
    px = _run(cfg, x)[:, :, 0, 0]
    shift = torch.tensor([colorsys.rgb_to_hsv(*p.tolist())[0] for p in px])
    shift = torch.where(shift > 0.5, shift - 1, shift)
    _check_uniform(shift, -0.1, 0.1)


def test_jitter_with_given_params_matches_torchvision_sequence():
    x = _images(n=8)
    g = torch.Generator().manual_seed(0)
    factors = {
        0: torch.empty(8).uniform_(0.6, 1.4, generator=g),
        1: torch.empty(8).uniform_(0.6, 1.4, generator=g),
        2: torch.empty(8).uniform_(0.8, 1.2, generator=g),
        3: torch.empty(8).uniform_(-0.1, 0.1, generator=g),
    }
    fns = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    outs = []
    for order in ([0, 1, 2, 3], [3, 2, 1, 0], [2, 3, 0, 1]):
        got = A._apply_jitter(x, order, factors)
        want = []
        for i in range(8):
            y = x[i]
            for idx in order:
                y = fns[idx](y, float(factors[idx][i]))
            want.append(y)
        torch.testing.assert_close(got, torch.stack(want), atol=ATOL, rtol=0)
        outs.append(got)
    assert not torch.allclose(outs[0], outs[1], atol=1e-3)  # the order matters, and is honoured


def test_jitter_order_is_a_uniform_random_permutation_per_call():
    aug = BatchAugment(AugmentConfig())
    assert set(aug.jitter_ranges) == {0, 1, 2, 3}
    assert aug.jitter_ranges[0] == pytest.approx((0.6, 1.4)) and aug.jitter_ranges[2] == pytest.approx((0.8, 1.2))
    assert aug.jitter_ranges[3] == pytest.approx((-0.1, 0.1))
    g = torch.Generator().manual_seed(0)
    counts: dict[tuple, int] = {}
    calls = 2400
    for _ in range(calls):
        order, factors = aug._jitter_params(2, torch.device("cpu"), g)
        assert sorted(order) == [0, 1, 2, 3] and factors[0].shape == (2,)
        counts[tuple(order)] = counts.get(tuple(order), 0) + 1
    assert len(counts) == 24
    expected = calls / 24
    assert max(abs(c - expected) for c in counts.values()) < 5 * math.sqrt(expected)


def test_zero_strength_jitter_ops_are_skipped():
    aug = BatchAugment(AugmentConfig(brightness=0.0, hue=0.0))
    assert set(aug.jitter_ranges) == {1, 2}


# ----------------------------------------------------------------------------- config


def test_recipe():
    cifar = recipe(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert cifar.interpolation == "bilinear"
    assert recipe(32, (0.5,) * 3, (0.25,) * 3, interpolation="bicubic", blur_p=0.2) == dataclasses.replace(
        cifar, interpolation="bicubic", blur_p=0.2
    )
    assert recipe(224, (0.5,) * 3, (0.25,) * 3, blur_p=0.0).blur_p == 0.0
    assert cifar.blur_p == 0.0 and cifar.crop_size == 32 and cifar.mean == (0.5, 0.5, 0.5)
    assert cifar.scale == (0.2, 1.0) and cifar.jitter_p == 0.8 and cifar.gray_p == 0.2 and cifar.solarize_p == 0.1
    assert recipe(64, (0.5,) * 3, (0.25,) * 3).blur_p == 0.0
    big = recipe(224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert big.blur_p == 0.5 and BatchAugment(big).blur_kernel == 23
    out = BatchAugment(recipe(96, (0.5,) * 3, (0.25,) * 3))(_u8(4, 100, 100), torch.Generator().manual_seed(0))
    assert out.shape == (4, 3, 96, 96) and torch.isfinite(out).all()


@pytest.mark.parametrize(
    "kw",
    [
        dict(flip_p=1.5),
        dict(scale=(0.5, 0.2)),
        dict(hue=0.6),
        dict(brightness=-0.1),
        dict(std=(0.2, 0.0, 0.2)),
        dict(crop_size=0),
        dict(interpolation="nearest"),
    ],
)
def test_config_rejects_bad_values(kw):
    with pytest.raises(ValueError):
        AugmentConfig(**kw)


def test_rejects_bad_input():
    aug = BatchAugment(AugmentConfig())
    with pytest.raises(ValueError):
        aug(torch.zeros(2, 1, 32, 32, dtype=torch.uint8))
    with pytest.raises(TypeError):
        aug(torch.zeros(2, 3, 32, 32, dtype=torch.int32))
