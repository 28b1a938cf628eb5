"""The gated sub-network with real channel skipping: only the channels a gate opens are computed.

Per block, the gate reads the block's input and opens a set of middle channels; conv1 then runs
with only those output channels and conv2 with only those input channels (weights and folded BN
biases sliced by slicing.take). A block with no open channel is its shortcut plus a constant.

Batches (`strategy`):
- "group": samples that share a mask run together; with per-input masks that is one sample at a
  time, so each runs exactly its own channels. At batch 1 every strategy is this one.
- "union" (the default for batches): one sliced convolution over the batch, keeping the channels
  open for any of its samples and zeroing, per sample, those its own gate closed. It never
  computes more than the masked pass and costs one kernel launch per conv, but its savings shrink
  as the batch's masks differ (BENCHMARKS.md measures both).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.resnet import GatedResNet
from .plain import ChannelsLastMaxPool, branch_constant, fold_block
from .slicing import fold, input_major, take, take_inputs

STRATEGIES = ("union", "group")


def _as_linear(conv: nn.Conv2d, offset: torch.Tensor | float = 0.0) -> nn.Linear:
    """A 1x1 convolution (with a bias, less `offset`) as the matrix product it is on a pooled vector."""
    linear = nn.Linear(conv.in_channels, conv.out_channels)
    linear.weight.data.copy_(conv.weight.detach().flatten(1))
    if conv.bias is None:  # the reference gate's last conv
        linear.bias.data.zero_()
    else:
        linear.bias.data.copy_(conv.bias.detach())
    linear.bias.data.sub_(offset)
    return linear


class _SkippingBlock(nn.Module):
    def __init__(self, block, bn: str):
        super().__init__()
        full = fold_block(block, bn)
        self.convs = nn.ModuleList(full[:-1])
        self.shortcut = full[-1]
        # the gate as two matrix products on the pooled input, its BN folded in: 1x1 convs on 1x1 maps
        # take PyTorch's slow convolution path at batch 1
        self.gate_reduce = _as_linear(fold(block.gate.reduce, block.gate.bn))
        self.gate_expand = _as_linear(block.gate.expand, block.gate.offset)
        self.mid_channels = block.mid_channels
        self.register_buffer("constant", branch_constant(full))
        self.register_buffer("second_input_major", input_major(full[1]))

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_mid) bool: the channels the block's gate opens for each sample (logit >= 0)."""
        return self.gate_expand(F.relu(self.gate_reduce(x.mean((2, 3))))) >= 0

    def branch(self, x: torch.Tensor, idx: torch.Tensor, within: torch.Tensor | None) -> torch.Tensor:
        """The residual branch computing only middle channels `idx` (`within`: per-sample mask on them)."""
        if len(idx) == 0:
            return self.constant
        everything = len(idx) == self.mid_channels
        first, second, *rest = self.convs
        weight, bias = (first.weight, first.bias) if everything else take(first, out_idx=idx)
        out = F.conv2d(x, weight, bias, first.stride, first.padding).relu_()  # in place: one map less to allocate
        if within is not None:
            out.mul_(within[:, :, None, None].to(out.dtype))
        weight = second.weight if everything else take_inputs(self.second_input_major, idx)
        out = F.conv2d(out, weight, second.bias, second.stride, second.padding)
        for conv in rest:
            out = conv(out.relu_())
        return out

    def forward(self, x: torch.Tensor, mask: torch.Tensor, strategy: str) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        if x.shape[0] == 1:  # the common deployed case: the sample's own channels, no batch bookkeeping
            idx = mask[0].nonzero().flatten()
            if len(idx) == 0:
                return F.relu(identity + self.constant)
            return self.branch(x, idx, None).add_(identity).relu_()
        if strategy == "union":
            open_any = mask.any(0)
            idx = open_any.nonzero().flatten()
            same = x.shape[0] == 1 or bool((mask == open_any).all())
            out = self.branch(x, idx, None if same else mask[:, idx])
        else:
            patterns, which = torch.unique(mask, dim=0, return_inverse=True)
            out = torch.empty_like(identity)  # the branch has the shortcut's shape
            for g, pattern in enumerate(patterns):
                rows = (which == g).nonzero().flatten()
                part = self.branch(x.index_select(0, rows), pattern.nonzero().flatten(), None)
                out.index_copy_(0, rows, part.expand(len(rows), *out.shape[1:]))
        return F.relu(out + identity)


class SkippingResNet(nn.Module):
    """Eval-only gated pass of a trained GatedResNet that computes only the open channels.

    forward(x, masks=None) -> (features, masks): with `masks` given (one (N, C_mid) 0/1 tensor per
    block) it runs exactly those, e.g. to compare with the masked pass under the same masks.
    """

    def __init__(self, backbone: GatedResNet, strategy: str = "union"):
        super().__init__()
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        self.strategy = strategy
        was_training = backbone.training
        backbone.eval()
        with torch.no_grad():
            self.stem = fold(backbone.stem_conv, backbone.stem_bn)
            self.pool = None if backbone.stem_pool is None else ChannelsLastMaxPool()
            self.blocks = nn.ModuleList(_SkippingBlock(b, "gated") for b in backbone.blocks)
        backbone.train(was_training)
        self.eval()

    @torch.no_grad()
    def forward(self, x: torch.Tensor, masks: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        out = F.relu(self.stem(x))
        if self.pool is not None:
            out = self.pool(out)
        used = []
        for i, block in enumerate(self.blocks):
            mask = block.gate(out) if masks is None else masks[i].bool()
            out = block(out, mask, self.strategy)
            used.append(mask.float())
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1), used
