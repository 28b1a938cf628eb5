"""Settings left as None, filled in: by the dataset's sizes, then the recipe, then the optimizer."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..names import VICREG_WEIGHTS, WIDTH_MULTIPLIER_ARCHS
from .checks import type_problems
from .settings import (
    CROP_SIZES,
    DEFAULT_WIDTHS,
    MOBILENET_WIDTHS,
    OPTIMIZER_DEFAULTS,
    POSTHOC_EPOCH_SHARE,
    RECIPES,
    REFERENCE_BLUR,
    SIZES,
    PretrainConfig,
    canonical_width,
    default_recipe,
    default_run_name,
    size_blur,
)


def resolve(cfg: PretrainConfig) -> PretrainConfig:
    """Fill the sizes and the recipe's choices (settings left as None). Returns a new config.

    Raises UserError for settings of the wrong type: the defaults are looked up by them."""
    problems = type_problems(cfg)
    if problems:
        raise UserError("\n".join(problems))
    values = cfg.to_dict()
    if values["recipe"] is None:
        values["recipe"] = default_recipe(cfg.dataset)
    crop_size = values["crop_size"] or CROP_SIZES.get(cfg.dataset, 224)
    defaults = {
        **SIZES["default"],
        **SIZES.get(cfg.dataset, {}),
        **RECIPES.get(values["recipe"], {}),
        **OPTIMIZER_DEFAULTS.get(cfg.optimizer, {}),
        "vicreg_weights": list(VICREG_WEIGHTS),
        "stem": "cifar" if crop_size <= 64 else "imagenet",
        "blur_p": REFERENCE_BLUR.get(cfg.dataset, [0.0, 0.0]) if values["recipe"] == "reference" else size_blur(crop_size),
    }
    if cfg.arch in WIDTH_MULTIPLIER_ARCHS:
        defaults["width"] = MOBILENET_WIDTHS.get(cfg.dataset, MOBILENET_WIDTHS["default"])
        defaults["stem_padding"] = 1  # the reference recipe's 2 is for the ResNets' 3x3 CIFAR stem
    for key, value in defaults.items():
        if values.get(key) is None:
            values[key] = value
    if isinstance(values["width"], float) and values["width"].is_integer() and cfg.arch not in WIDTH_MULTIPLIER_ARCHS:
        values["width"] = int(values["width"])  # a ResNet's channels: w8, never w8.0, in names and files
    if cfg.mode == "posthoc" and cfg.epochs is None:
        values["epochs"] = max(1, round(POSTHOC_EPOCH_SHARE * values["epochs"]))
    if cfg.mode == "slimmable" and values["widths"] != []:  # an empty list stays empty: validate() names it
        values["widths"] = sorted(
            {1.0, *[canonical_width(w) for w in (DEFAULT_WIDTHS if values["widths"] is None else values["widths"])]}, reverse=True
        )
    if values["out"] is None:
        values["out"] = str(Path("runs") / default_run_name(values))
    return PretrainConfig(**values)
