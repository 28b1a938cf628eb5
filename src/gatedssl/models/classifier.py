"""A sub-network of a gated backbone with a linear head: what a fine-tune trains and a user ships.

The backbone stays the training network (BN not folded, gates in place), so every sub-network fine-tunes
end to end as the network export writes: `dense` and `widthW` as their plain ResNets, `gated` with its
gates choosing channels per input, `static` with the channels export keeps fixed for every input (a
mask on the gated pass: the same function as the pruned plain network, which export then writes).
"""

from __future__ import annotations

import torch
from torch import nn

from .backbone import BackboneOutput, GatedBackbone
from .subnets import GATED, as_subnet

FINETUNE_SUBNETS = ("dense", "gated", "static")  # and a slimmable run's widthW


class Classifier(nn.Module):
    def __init__(self, backbone: GatedBackbone, subnet: str, classes: list[str], keep: list[torch.Tensor] | None = None):
        super().__init__()
        self.backbone, self.subnet_name, self.classes = backbone, subnet, list(classes)
        self.sub = GATED if subnet == "static" else as_subnet(subnet)
        if subnet == "static":
            if keep is None:
                raise ValueError("the static sub-network needs its kept channels")
            for i, (block, kept) in enumerate(zip(backbone.blocks, keep)):
                mask = torch.zeros(block.mid_channels)
                mask[kept] = 1.0
                self.register_buffer(f"static_mask{i}", mask)
        self.head = nn.Linear(self.sub.channels(backbone.feature_dim), len(self.classes))
        nn.init.zeros_(self.head.bias)

    @property
    def static_masks(self) -> list[torch.Tensor] | None:
        if self.subnet_name != "static":
            return None
        return [getattr(self, f"static_mask{i}") for i in range(len(self.backbone.blocks))]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, BackboneOutput]:
        """(logits, the backbone's output: features, masks and per-sample MACs)."""
        fixed = self.static_masks
        masks = None if fixed is None else [m.expand(x.shape[0], -1) for m in fixed]
        out = self.backbone(x, self.sub, masks)
        return self.head(out.features), out
