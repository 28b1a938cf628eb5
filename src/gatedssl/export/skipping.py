"""The gated sub-network with real channel skipping: only the channels a gate opens are computed.

Per block, the gate reads the block's input and opens a set of middle channels; conv1 then runs
with only those output channels and conv2 with only those input channels (weights and folded BN
biases taken by rows from layouts kept for it). A block with no open channel is its shortcut plus a
constant. The pass runs in channels_last, where sliced convolutions keep oneDNN's full speed and
small maps become one matrix product over patches (_SlicedConv; BENCHMARKS.md measures both choices).

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
from .gather_gemm import gathered_dots
from .plain import branch_constant, fold_block
from .slicing import fold

STRATEGIES = ("union", "group")
CL = torch.channels_last
# output positions (N*H*W) up to which a sliced convolution runs as one matrix product (BENCHMARKS.md): conv2's
# other path must first transpose its sliced weight, conv1's need not, so conv2's matrix product pays off on larger maps
SMALL_MAP = {"first": 64, "second": 196}


class _SlicedConv(nn.Module):
    """One of a block's two convolutions, run on the middle channels its gate keeps: conv1's outputs ("outputs")
    or conv2's inputs ("inputs"). The weight is stored in the layout its slices are read fastest from: conv1's as
    (C_mid, kh, kw, C_in), whose kept rows are a channels_last weight as they stand; conv2's as
    (kh, kw, C_mid, C_out), whose kept channels are kh*kw blocks of whole rows of a matrix product.

    Small maps (ResNet's last stages at batch 1) run as one matrix product over patches: conv1's reads its kept
    rows where they lie (gather_gemm), conv2's a copy of them. Larger maps run as a channels_last convolution of
    the kept rows' copy, which oneDNN computes at full speed for any channel count.
    """

    def __init__(self, conv: nn.Conv2d, keeps: str):
        super().__init__()
        assert conv.groups == 1 and conv.kernel_size[0] == conv.kernel_size[1] and keeps in ("outputs", "inputs")
        self.kernel, self.stride, self.padding, self.keeps = conv.kernel_size[0], conv.stride[0], conv.padding[0], keeps
        order = (0, 2, 3, 1) if keeps == "outputs" else (2, 3, 1, 0)
        self.register_buffer("weight", conv.weight.detach().permute(*order).contiguous())
        self.register_buffer("bias", conv.bias.detach().clone())
        self.channels = conv.out_channels if keeps == "outputs" else conv.in_channels

    def forward(self, x: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
        """The convolution of x keeping middle channels `idx` (None: all of them)."""
        k, s, p = self.kernel, self.stride, self.padding
        n, _, h, w = x.shape
        ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        if n * ho * wo > SMALL_MAP["first" if self.keeps == "outputs" else "second"]:
            return F.conv2d(x, self._kept_weight(idx), self._kept_bias(idx), s, p)
        windows = F.pad(x, (p, p, p, p)).permute(0, 2, 3, 1).unfold(1, k, s).unfold(2, k, s)  # (N, Ho, Wo, C, kh, kw), a view
        patches = windows.permute(0, 1, 2, 4, 5, 3).reshape(n * ho * wo, -1)  # one copy; columns in (i, j, channel) order
        if idx is None:
            matrix = self.weight.flatten(1).t() if self.keeps == "outputs" else self.weight.view(-1, self.weight.shape[-1])
            out = torch.addmm(self.bias, patches, matrix)
        elif self.keeps == "outputs":
            out = gathered_dots(patches, self.weight.view(self.channels, -1), idx, self.bias)
        else:
            out = torch.addmm(self.bias, patches, self.weight.index_select(2, idx).view(-1, self.weight.shape[-1]))
        return out.view(n, ho, wo, -1).permute(0, 3, 1, 2)

    def _kept_weight(self, idx: torch.Tensor | None) -> torch.Tensor:
        """The kept slice as a (C_out, C_in, kh, kw) weight (a channels_last one for conv1)."""
        if self.keeps == "outputs":
            return (self.weight if idx is None else self.weight.index_select(0, idx)).permute(0, 3, 1, 2)
        return (self.weight if idx is None else self.weight.index_select(2, idx)).permute(3, 2, 0, 1)

    def _kept_bias(self, idx: torch.Tensor | None) -> torch.Tensor:
        return self.bias if idx is None or self.keeps == "inputs" else self.bias.index_select(0, idx)


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
    """One residual block of the skipping pass: its gate, its two sliced convolutions, the rest as they are."""

    def __init__(self, block, bn: str):
        super().__init__()
        full = fold_block(block, bn)
        first, second, *rest = full[:-1]
        self.first, self.second = _SlicedConv(first, keeps="outputs"), _SlicedConv(second, keeps="inputs")
        self.rest = nn.ModuleList(rest).to(memory_format=CL)
        self.shortcut = None if full[-1] is None else full[-1].to(memory_format=CL)
        # the gate as two matrix products on the pooled input, its BN folded in: 1x1 convs on 1x1 maps
        # take PyTorch's slow convolution path at batch 1
        self.gate_reduce = _as_linear(fold(block.gate.reduce, block.gate.bn))
        self.gate_expand = _as_linear(block.gate.expand, block.gate.offset)
        self.mid_channels = block.mid_channels
        self.register_buffer("constant", branch_constant(full))

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_mid) bool: the channels the block's gate opens for each sample (logit >= 0)."""
        return self.gate_expand(F.relu(self.gate_reduce(x.mean((2, 3))))) >= 0

    def branch(self, x: torch.Tensor, idx: torch.Tensor, within: torch.Tensor | None) -> torch.Tensor:
        """The residual branch computing only middle channels `idx` (`within`: per-sample mask on them)."""
        if len(idx) == 0:
            return self.constant
        kept = None if len(idx) == self.mid_channels else idx
        out = self.first(x, kept).relu_()  # in place: one map less to allocate
        if within is not None:
            out.mul_(within[:, :, None, None].to(out.dtype))
        out = self.second(out, kept)
        for conv in self.rest:
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
            self.stem = fold(backbone.stem_conv, backbone.stem_bn).to(memory_format=CL)
            self.pool = None if backbone.stem_pool is None else nn.MaxPool2d(3, 2, 1)
            self.blocks = nn.ModuleList(_SkippingBlock(b, "gated") for b in backbone.blocks)
        backbone.train(was_training)
        self.eval()

    @torch.no_grad()
    def forward(self, x: torch.Tensor, masks: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        out = self.stem(x.contiguous(memory_format=CL)).relu_()  # channels_last throughout: see _SlicedConv
        if self.pool is not None:
            out = self.pool(out)
        used = []
        for i, block in enumerate(self.blocks):
            mask = block.gate(out) if masks is None else masks[i].bool()
            out = block(out, mask, self.strategy)
            used.append(mask.float())
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1), used
