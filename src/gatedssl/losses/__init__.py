"""Losses: the SSL objectives (pure functions) and the gated pass's budget losses."""

from .budget import anneal_p, block_densities, bound_loss, budget_loss
from .ssl import barlow_twins_loss, byol_loss, distillation_loss, nt_xent_loss, simsiam_loss, vicreg_loss, vicreg_terms

__all__ = [
    "anneal_p",
    "barlow_twins_loss",
    "block_densities",
    "bound_loss",
    "budget_loss",
    "byol_loss",
    "distillation_loss",
    "nt_xent_loss",
    "simsiam_loss",
    "vicreg_loss",
    "vicreg_terms",
]
