"""Every pretraining setting: the typed dataclass and its tables (settings), the defaults that fill in what was
left as None (defaults), what is wrong with a set of settings (checks), and settings in files (files).

Import from here: `from gatedssl.config import PretrainConfig, resolve, validate`."""

from .checks import crop_problems, last_map_side, path_problems, type_problems, validate
from .defaults import resolve
from .files import SHIPPED_CONFIGS, load_stored, load_yaml, save_yaml, shipped_configs, upgrade_stored
from .settings import (
    ARCHS,
    CROP_SIZES,
    DATASETS,
    DEFAULT_WIDTHS,
    FLAG_GROUPS,
    LEGACY_RECIPE,
    MIN_WARMUP_STEPS,
    OPTIMIZER_DEFAULTS,
    POSTHOC_EPOCH_SHARE,
    RECIPE_NAMES,
    RECIPES,
    REFERENCE_BLUR,
    SIZES,
    PretrainConfig,
    canonical_width,
    default_recipe,
    default_run_name,
    size_blur,
    warmup_steps,
)

__all__ = [
    "ARCHS",
    "CROP_SIZES",
    "DATASETS",
    "DEFAULT_WIDTHS",
    "FLAG_GROUPS",
    "LEGACY_RECIPE",
    "MIN_WARMUP_STEPS",
    "OPTIMIZER_DEFAULTS",
    "POSTHOC_EPOCH_SHARE",
    "RECIPE_NAMES",
    "RECIPES",
    "REFERENCE_BLUR",
    "SHIPPED_CONFIGS",
    "SIZES",
    "PretrainConfig",
    "canonical_width",
    "crop_problems",
    "default_recipe",
    "default_run_name",
    "last_map_side",
    "load_stored",
    "load_yaml",
    "path_problems",
    "resolve",
    "save_yaml",
    "shipped_configs",
    "size_blur",
    "type_problems",
    "upgrade_stored",
    "validate",
    "warmup_steps",
]
