"""The network and its heads as a run's settings describe them: one place that training,
evaluation and export all build from, so none of them imports another to get a model."""

from __future__ import annotations

import torch

from .checkpoint import first_mismatch
from .config import PretrainConfig, upgrade_stored
from .errors import UserError
from .methods import JointObjective, get_method
from .models.backbone import create_backbone


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def method_options(cfg: PretrainConfig) -> dict:
    """The loss settings the config holds for its method."""
    if cfg.method == "vicreg":
        return {"weights": tuple(cfg.vicreg_weights), "variance_form": cfg.vicreg_variance}
    return {}


def build_objective(cfg: PretrainConfig) -> JointObjective:
    """The backbone and its heads, as the config describes them (also used to rebuild for eval)."""
    backbone = create_backbone(
        cfg.arch,
        stem=cfg.stem,
        width=cfg.width,
        separate_bn=cfg.separate_bn,
        tau=cfg.tau,
        stem_padding=cfg.stem_padding,
        gate_bias=cfg.gate_bias,
    )
    anneal_offset = cfg.gate_warmup_epochs / cfg.epochs if cfg.anneal_from == "gates" else 0.0
    return JointObjective(
        backbone,
        get_method(cfg.method, **method_options(cfg)),
        cfg.proj_dim,
        mode=cfg.mode,
        pairing=cfg.pairing,
        widths=tuple(cfg.widths or ()),
        slim_random=cfg.slim_random,
        finetune_dense=cfg.finetune_dense,
        budget=cfg.budget,
        budget_weight=cfg.budget_weight,
        bound_weight=cfg.bound_weight,
        bound_target=cfg.bound_target,
        bound_density=cfg.bound_density,
        anneal=cfg.anneal,
        anneal_offset=anneal_offset,
        anneal_epochs=cfg.epochs if cfg.anneal_clock == "epoch" else None,
        ema_momentum=cfg.ema_momentum,
        gather=cfg.gather,
    )


def restore_objective(state: dict, path) -> tuple[JointObjective, PretrainConfig]:
    """The run's network and heads as its checkpoint's own settings describe them, weights loaded."""
    if "finetune" in state:
        raise UserError(
            f"{path} is a fine-tune's checkpoint (gatedssl finetune), not a pretraining run's; load it with gatedssl.load "
            f"or write it out with gatedssl export"
        )
    try:
        cfg = PretrainConfig(**upgrade_stored(state["config"]))
    except TypeError as exc:
        raise UserError(f"checkpoint {path} holds settings this gatedssl does not know ({exc}); use the version that wrote it") from None
    objective = build_objective(cfg)
    try:
        objective.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise UserError(f"checkpoint {path} does not match the network its settings describe ({first_mismatch(exc)})") from None
    return objective, cfg
