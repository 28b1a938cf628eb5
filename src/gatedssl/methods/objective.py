"""The joint objective: which passes see which view, the SSL loss between them, and the budget.

`mode` says what is trained (the rows of the paper's Table 1):
  dual   view 1 -> gated pass, view 2 -> dense pass (this method; "Dual")
  dense  both views dense, no gates trained (the vanilla baseline, "B1")
  gated  both views gated (gated-only SSL as in the IMVIP paper, "B2")
`pairing` `symmetric` adds the swapped pair (view 2 gated, view 1 dense) and averages.
Each (view, pass) is computed once per step even when several pairs use it.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from .. import losses
from ..models.resnet import BackboneOutput, GatedResNet
from .registry import Embeddings, Method

MODES = ("dual", "dense", "gated")
PAIRINGS = ("reference", "symmetric")


class JointObjective(nn.Module):
    def __init__(
        self,
        backbone: GatedResNet,
        method: Method,
        proj_dim: int | None = None,
        *,
        mode: str = "dual",
        pairing: str = "reference",
        budget: float = 0.5,
        budget_weight: float = 5.0,
        bound_weight: float = 1.0,
        bound_target: str = "sqrt",
        bound_density: str = "mean",
        anneal: float = 10.0,
        anneal_offset: float = 0.0,
        anneal_epochs: int | None = None,
        ema_momentum: float = 0.99,
    ):
        super().__init__()
        if mode not in MODES or pairing not in PAIRINGS:
            raise ValueError(f"mode must be in {MODES} and pairing in {PAIRINGS}")
        proj_dim = proj_dim or method.default_proj_dim
        self.method, self.mode, self.pairing = method, mode, pairing
        self.budget, self.budget_weight, self.bound_weight = budget, budget_weight, bound_weight
        self.bound_target, self.bound_density, self.ema_momentum = bound_target, bound_density, ema_momentum
        self.anneal, self.anneal_offset = anneal, anneal_offset  # the bounds' clock starts at progress anneal_offset
        self.anneal_epochs = anneal_epochs  # set: p moves once per epoch of that many, as the reference; None: every step
        self.backbone = backbone
        self.projector = method.projector(backbone.feature_dim, proj_dim)
        self.predictor = method.predictor(proj_dim) if method.predictor else None
        self.teacher = None
        if method.ema_teacher:
            self.teacher = nn.ModuleDict({"backbone": copy.deepcopy(backbone), "projector": copy.deepcopy(self.projector)})
            self.teacher.requires_grad_(False)

    def pairs(self, gates_on: bool) -> list[tuple[tuple[int, bool], tuple[int, bool]]]:
        """The (view, gated) sides that the SSL loss compares this step."""
        if self.mode == "dense" or not gates_on:
            return [((0, False), (1, False))]
        if self.mode == "gated":
            return [((0, True), (1, True))]
        pairs = [((0, True), (1, False))]
        if self.pairing == "symmetric":
            pairs.append(((1, True), (0, False)))
        return pairs

    def embed(self, x: torch.Tensor, gated: bool) -> tuple[Embeddings, BackboneOutput]:
        out = self.backbone(x, gated=gated)
        z = self.projector(out.features)
        emb = Embeddings(z, self.predictor(z) if self.predictor is not None else None)
        if self.teacher is not None:
            with torch.no_grad():
                emb.target = self.teacher["projector"](self.teacher["backbone"](x, gated=gated).features)
        return emb, out

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, progress: float, gates_on: bool = True) -> dict[str, torch.Tensor]:
        """Loss terms for one step. `progress` = epochs done / total epochs (anneals the bounds).

        Returns `loss` (to backpropagate) and detached metrics: ssl, budget, bound,
        macs_ratio (gated MACs / dense MACs, batch mean) and density (per gated block).
        """
        views = (x1, x2)
        pairs = self.pairs(gates_on)
        sides = {side: self.embed(views[side[0]], side[1]) for pair in pairs for side in pair}
        ssl = sum(self.method(sides[a][0], sides[b][0]) for a, b in pairs) / len(pairs)
        gated_outs = [out for (view, gated), (_, out) in sides.items() if gated]
        zero = ssl.new_zeros(())
        budget_term, bound_term = zero, zero
        if gated_outs:
            dense_macs = float(gated_outs[0].dense_macs)
            macs = torch.cat([o.macs for o in gated_outs])
            density = torch.stack([losses.block_densities(o.masks, self.bound_density) for o in gated_outs]).mean(0)
            budget_term = losses.budget_loss(macs, dense_macs, self.budget, self.budget_weight)
            clock = progress if self.anneal_epochs is None else math.floor(progress * self.anneal_epochs + 1e-9) / self.anneal_epochs
            p = losses.anneal_p(max(clock - self.anneal_offset, 0.0), self.anneal)
            bound_term = losses.bound_loss(density, self.budget, p, self.bound_weight, mode=self.bound_target)
            macs_ratio = macs.mean().detach() / dense_macs
        else:
            n_blocks = len(self.backbone.blocks)
            density, macs_ratio = ssl.new_ones(n_blocks), ssl.new_ones(())
        loss = ssl + budget_term + bound_term
        return {
            "loss": loss,
            "ssl": ssl.detach(),
            "budget": budget_term.detach(),
            "bound": bound_term.detach(),
            "macs_ratio": macs_ratio.detach().float(),
            "density": density.detach().float(),
        }

    @torch.no_grad()
    def update_teacher(self, progress: float) -> None:
        """EMA of the student into the teacher; momentum rises from ema_momentum to 1 (cosine)."""
        if self.teacher is None:
            return
        m = 1 - (1 - self.ema_momentum) * (math.cos(math.pi * progress) + 1) / 2
        for student, teacher in ((self.backbone, self.teacher["backbone"]), (self.projector, self.teacher["projector"])):
            t_params, s_params = list(teacher.parameters()), list(student.parameters())
            torch._foreach_lerp_(t_params, s_params, 1 - m)
            for tb, sb in zip(teacher.buffers(), student.buffers()):
                tb.copy_(sb)
