"""Settings in files: YAML given by a user or shipped, and what a run folder stores (upgraded from older versions)."""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from ..errors import UserError
from ..names import VICREG_WEIGHTS
from .checks import _INT64, _show
from .settings import CROP_SIZES, LEGACY_RECIPE, RECIPES, PretrainConfig, size_blur

SHIPPED_CONFIGS = Path(__file__).parent.parent / "configs"  # the paper's runs: --config cifar10 | cifar100 | stl10 | imagenet100


def shipped_configs() -> list[str]:
    return sorted(p.stem for p in SHIPPED_CONFIGS.glob("*.yaml"))


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML config, a file or a shipped config's name; unknown keys are an error (a typo must not be silently ignored).

    Values are read as a user means them: a number YAML 1.1 reads as text (`lr: 1e-1`) is a number, and one
    number where a list is expected (`widths: 0.5`) a list of one; resolve() and validate() judge the rest."""
    if not os.path.exists(path) and str(path) in shipped_configs():
        path = SHIPPED_CONFIGS / f"{path}.yaml"
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except FileNotFoundError:
        raise UserError(
            f"config file {path} not found; give a YAML file or one of the shipped configs: {', '.join(shipped_configs())}"
        ) from None
    except IsADirectoryError:
        raise UserError(f"config file {path} is a folder; give the YAML file itself (e.g. {Path(path) / 'config.yaml'})") from None
    except OSError as exc:
        raise UserError(f"config file {path} cannot be read ({exc.strerror or exc}); check its permissions") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"config file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except yaml.YAMLError as exc:
        raise UserError(f"config file {path} is not valid YAML: {_yaml_problem(exc)}") from None
    except (ValueError, RecursionError) as exc:  # PyYAML's own limits, e.g. an integer of over 4,300 digits, nesting
        raise UserError(f"config file {path} cannot be read: {str(exc).splitlines()[0][:200] or type(exc).__name__}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of setting: value")
    names = {f.name: str(f.type).replace(" | None", "") for f in fields(PretrainConfig)}
    not_names = [("null" if k is None else str(k).lower() if isinstance(k, bool) else _show(k)) for k in data if not isinstance(k, str)]
    if not_names:
        raise UserError(
            f"config file {path}: key(s) {', '.join(not_names)} are not setting names; write `setting: value`, e.g. `budget: 0.3`"
        )
    data = {k.replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise UserError(f"config file {path}: unknown key(s) {', '.join(unknown)}; see `gatedssl pretrain --help` for the settings")
    return {k: _as_meant(v, names[k]) for k, v in data.items()}


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's reason and where, in one line ("found unhashable key at line 1, column 1")."""
    problem, mark = getattr(exc, "problem", None), getattr(exc, "problem_mark", None)
    if not problem:
        return str(exc).splitlines()[0]
    return f"{problem}" + (f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "")


def _as_meant(value: Any, kind: str) -> Any:
    """A YAML value as the setting's type means it, where that is unambiguous; anything else unchanged (validate names it)."""
    if kind == "list[float]":
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            value = [value]
        return [_as_meant(v, "float") for v in value] if isinstance(value, list) else value
    if kind in ("float", "int") and isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        if kind == "float":
            return number
        return int(number) if number.is_integer() and abs(number) < _INT64 else value
    return value


def upgrade_stored(values: dict[str, Any]) -> dict[str, Any]:
    """A run's stored settings with what older gatedssl did for every key it did not write yet.

    Weight shapes do not change with most of these choices (a CIFAR stem padded by 2 has the
    same kernel), so a missing key must read as the old behaviour, never as today's default."""
    values = {
        "recipe": LEGACY_RECIPE,
        **RECIPES[LEGACY_RECIPE],
        "vicreg_weights": list(VICREG_WEIGHTS),
        **{k: None for k in ("widths", "init_from")},
        "slim_random": 1,
        "finetune_dense": False,
        "checkpoint_minutes": 0.0,
        "gather": True,
        "sync_bn": False,
        "calibrate_gates": False,
        "logger": "tensorboard",
        **values,
    }
    if "blur_p" not in values:
        values["blur_p"] = size_blur(values.get("crop_size") or CROP_SIZES.get(values.get("dataset"), 224))
    return values


def load_stored(run_folder: str | os.PathLike) -> dict[str, Any] | None:
    """The settings a run folder's config.yaml holds (upgraded), or None if it has none readable."""
    try:
        with open(Path(run_folder) / "config.yaml") as fh:
            values = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError):
        return None
    return upgrade_stored(values) if isinstance(values, dict) else None


def save_yaml(cfg: PretrainConfig, path: str | os.PathLike, launch: dict | None = None) -> None:
    """The settings; `launch` (world size, per-rank batch) goes in as a comment: facts of the launch, not settings."""
    with open(path, "w") as fh:
        if launch:
            fh.write("# launched with " + ", ".join(f"{k}: {v}" for k, v in launch.items()) + "\n")
        yaml.safe_dump(cfg.to_dict(), fh, sort_keys=False)
