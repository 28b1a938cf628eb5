"""The joint objective: which sub-network sees which view, the losses between them, and the budget.

The mode (`modes.py`) says what is trained: its sub-networks, the (view, sub-network) pairs the
SSL loss compares, and its regularisers (budget and bound losses on gated sides, in-place
distillation of students from detached teachers). Each (view, sub-network) side is computed
once per step even when several pairs use it.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from .. import distributed, losses
from ..models.backbone import BackboneOutput, GatedBackbone
from ..models.subnets import as_subnet
from ..names import PAIRINGS
from .modes import MODES, Mode, ModeOptions, Side, get_mode
from .registry import Embeddings, Method


class JointObjective(nn.Module):
    def __init__(
        self,
        backbone: GatedBackbone,
        method: Method,
        proj_dim: int | None = None,
        *,
        mode: str = "dual",
        pairing: str = "reference",
        widths: tuple[float, ...] = (),
        slim_random: int = 1,
        finetune_dense: bool = False,
        budget: float = 0.5,
        budget_weight: float = 5.0,
        bound_weight: float = 1.0,
        bound_target: str = "sqrt",
        bound_density: str = "mean",
        anneal: float = 10.0,
        anneal_offset: float = 0.0,
        anneal_epochs: int | None = None,
        ema_momentum: float = 0.99,
        gather: bool = True,
    ):
        super().__init__()
        if mode not in MODES or pairing not in PAIRINGS:
            raise ValueError(f"mode must be in {tuple(MODES)} and pairing in {PAIRINGS}")
        proj_dim = proj_dim or method.default_proj_dim
        self.method, self.mode_name, self.pairing = method, mode, pairing
        self.options = ModeOptions(pairing, tuple(widths), slim_random, finetune_dense)
        self.budget, self.budget_weight, self.bound_weight = budget, budget_weight, bound_weight
        self.bound_target, self.bound_density, self.ema_momentum = bound_target, bound_density, ema_momentum
        self.anneal, self.anneal_offset = anneal, anneal_offset  # the bounds' clock starts at progress anneal_offset
        self.anneal_epochs = anneal_epochs  # set: p moves once per epoch of that many, as the reference; None: every step
        self.gather = gather  # False: batch statistics per rank (the reference's per-GPU VICReg)
        self.backbone = backbone
        backbone.add_widths(self.options.widths)
        self.subnets = self.mode.subnets(self.options)
        self.projector = method.projector(backbone.feature_dim, proj_dim)
        self.predictor = method.predictor(proj_dim) if method.predictor else None
        # one projector per smaller width: their features differ in size, and a shared sliced projector would need switchable BN too
        slim = [as_subnet(n) for n in self.subnets if as_subnet(n).kind == "width"]
        self.width_projectors = (
            nn.ModuleDict({s.bn_slot: method.projector(s.channels(backbone.feature_dim), proj_dim) for s in slim}) if slim else None
        )
        self.teacher = None
        if method.ema_teacher:
            self.teacher = nn.ModuleDict({"backbone": copy.deepcopy(backbone), "projector": copy.deepcopy(self.projector)})
            self.teacher.requires_grad_(False)
        self.frozen_dense = self.mode.frozen_dense(self.options)
        if self.frozen_dense:  # post-hoc: the heads are not used either (the gated pass meets the dense one on features)
            self.requires_grad_(False)
            backbone.freeze_dense()

    @property
    def mode(self) -> Mode:
        return get_mode(self.mode_name)

    # ------------------------------------------------------------------ one step
    def pairs(self, gates_on: bool) -> list[tuple[Side, Side]]:
        """The (view, sub-network) sides that the SSL loss compares this step."""
        return self.mode.ssl_pairs(self.options, gates_on)

    def _projector(self, subnet: str) -> nn.Module:
        sub = as_subnet(subnet)
        return self.projector if sub.kind != "width" else self.width_projectors[sub.bn_slot]

    def embed(self, x: torch.Tensor, subnet: str, target: bool = True) -> tuple[Embeddings, BackboneOutput]:
        out = self.backbone(x, subnet)
        z = self._projector(subnet)(out.features)
        emb = Embeddings(z, self.predictor(z) if self.predictor is not None else None)
        if self.teacher is not None and target:
            with torch.no_grad():
                emb.target = self.teacher["projector"](self.teacher["backbone"](x, subnet).features)
        return emb, out

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, progress: float, gates_on: bool = True) -> dict[str, torch.Tensor]:
        """Loss terms for one step. `progress` = epochs done / total epochs (anneals the bounds).

        Returns `loss` (to backpropagate) and detached metrics: ssl, budget, bound, distill (modes
        that distil), macs_ratio (gated MACs / dense MACs, batch mean) and density (per gated block).
        """
        mode, views = self.mode, (x1, x2)
        pairs = self.pairs(gates_on)
        distill_pairs = mode.distill_pairs(self.options, gates_on) if mode.distill_pairs else []
        ssl_sides = {side for pair in pairs for side in pair}
        sides: dict[Side, tuple[Embeddings | None, BackboneOutput]] = {}
        for side in [s for pair in pairs + distill_pairs for s in pair]:
            if side in sides:
                continue
            view, name = side
            if side in ssl_sides or mode.distill_space == "projection":
                sides[side] = self.embed(views[view], name, target=side in ssl_sides)
            else:  # a feature-space teacher that does not learn needs no graph
                with torch.set_grad_enabled(torch.is_grad_enabled() and not (self.frozen_dense and name == "dense")):
                    sides[side] = (None, self.backbone(views[view], name))
        ref = next(iter(sides.values()))[1].features
        zero = ref.new_zeros((), dtype=torch.float32)
        ssl = sum(self._ssl(sides[a][0], sides[b][0]) for a, b in pairs) / len(pairs) if pairs else zero
        terms = {}
        if mode.distill_pairs:

            def vector(side: Side) -> torch.Tensor:
                emb, out = sides[side]
                return emb.z if mode.distill_space == "projection" else out.features

            distill = sum(losses.distillation_loss(vector(s), vector(t)) for s, t in distill_pairs) / max(len(distill_pairs), 1)
            terms["distill"] = distill
        gated_outs = [out for (view, name), (_, out) in sides.items() if name == "gated"]
        budget_term, bound_term = zero, zero
        if gated_outs:
            dense_macs = float(gated_outs[0].dense_macs)
            # global means under torchrun: the budget holds for the global batch, as in one process
            macs = distributed.global_mean(torch.cat([o.macs for o in gated_outs]).float().mean())
            density = distributed.global_mean(
                torch.stack([losses.block_densities(o.masks, self.bound_density) for o in gated_outs]).mean(0)
            )
            macs_ratio = macs.detach() / dense_macs
            if mode.budget:
                budget_term = losses.budget_loss(macs, dense_macs, self.budget, self.budget_weight)
                clock = progress if self.anneal_epochs is None else math.floor(progress * self.anneal_epochs + 1e-9) / self.anneal_epochs
                p = losses.anneal_p(max(clock - self.anneal_offset, 0.0), self.anneal)
                bound_term = losses.bound_loss(density, self.budget, p, self.bound_weight, mode=self.bound_target)
        else:
            n_blocks = len(self.backbone.blocks)
            density, macs_ratio = ref.new_ones(n_blocks, dtype=torch.float32), ref.new_ones((), dtype=torch.float32)
        loss = ssl + budget_term + bound_term
        for value in terms.values():
            loss = loss + value
        return {
            "loss": loss,
            "ssl": ssl.detach(),
            "budget": budget_term.detach(),
            "bound": bound_term.detach(),
            **{k: v.detach() for k, v in terms.items()},
            "macs_ratio": macs_ratio.detach().float(),
            "density": density.detach().float(),
        }

    def _ssl(self, a: Embeddings, b: Embeddings) -> torch.Tensor:
        """The method's loss; one that couples samples sees the global batch under torchrun (unless gather is off)."""
        if self.gather and self.method.couples_samples:
            a, b = (Embeddings(*(None if t is None else distributed.gather_rows(t) for t in (e.z, e.p, e.target))) for e in (a, b))
        return self.method(a, b)

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
