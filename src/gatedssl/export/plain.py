"""A plain ResNet encoder: standard convolutions with BN folded in, no gates, any channel counts.

This is what deploys: the dense encoder (every channel, the dense BN set) and the static
sub-network (the middle channels the gates open often enough, the gated BN set) are both a
`PlainResNet`, built by slicing the trained gated network (slicing.py). Its architecture is a
small JSON-able `spec` (each convolution's channels, kernel, stride, padding), so a `.pt` export
is a state dict plus that spec, never a pickled module, and loads with `weights_only=True`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.resnet import GatedResNet
from ..models.subnets import DENSE, SubNet, as_subnet
from .slicing import copy_conv as _copy
from .slicing import first_channels, fold, kept_channels_of

SPEC_FORMAT = "gatedssl-plain-resnet/1"


def _conv(c: list[int]) -> nn.Conv2d:
    cin, cout, k, stride, padding = c
    return nn.Conv2d(cin, cout, k, stride, padding, bias=True)


def _shape(conv: nn.Conv2d) -> list[int]:
    return [conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.stride[0], conv.padding[0]]


class Constant(nn.Module):
    """The residual branch of a block left with no middle channel: a per-channel constant.

    With every middle channel off, conv2 sees zeros, so the branch is its folded biases pushed
    through the rest of the block: the block is its shortcut plus this constant.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("value", torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.value


class PlainBlock(nn.Module):
    def __init__(self, body: nn.Module, shortcut: nn.Module):
        super().__init__()
        self.body, self.shortcut = body, shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


def _body(convs: list[nn.Conv2d]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, conv in enumerate(convs):
        layers += [conv] if i == len(convs) - 1 else [conv, nn.ReLU()]
    return nn.Sequential(*layers)


class PlainResNet(nn.Module):
    """ResNet features (N, D) from standard modules; build it from a spec, or `from_gated`."""

    __jit_unused_properties__ = ["mid_channels"]

    def __init__(self, spec: dict):
        super().__init__()
        if spec.get("format") != SPEC_FORMAT:
            raise ValueError(f"not a {SPEC_FORMAT} architecture: {spec.get('format')!r}")
        self.spec = spec
        self.stem = nn.Sequential(_conv(spec["stem"]), nn.ReLU(), *([nn.MaxPool2d(3, 2, 1)] if spec["pool"] else []))
        blocks = []
        for b in spec["blocks"]:
            body = _body([_conv(c) for c in b["convs"]]) if b["convs"] else Constant(b["out"])
            shortcut = _conv(b["shortcut"]) if b["shortcut"] else nn.Identity()
            blocks.append(PlainBlock(body, shortcut))
        self.blocks = nn.Sequential(*blocks)
        self.feature_dim = spec["blocks"][-1]["out"]
        # weights and maps in channels_last for the ImageNet stem's inputs (224 px: oneDNN runs the dense network 8-9 %
        # and static ones 15-18 % faster so, and its max-pool 20x faster than in NCHW), in NCHW for the CIFAR stem's,
        # which has no max-pool (32 px: 8-14 % slower in channels_last; BENCHMARKS.md)
        self.channels_last = bool(spec["pool"])
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return torch.flatten(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1), 1)

    @property
    def mid_channels(self) -> list[int]:
        """Middle channels kept per block (0: the block is its shortcut plus a constant)."""
        return [b["convs"][0][1] if b["convs"] else 0 for b in self.spec["blocks"]]

    def macs(self, size: int) -> int:
        return spec_macs(self.spec, size)

    @classmethod
    def from_gated(cls, backbone: GatedResNet, bn: str = "dense", keep: list[torch.Tensor] | None = None) -> PlainResNet:
        """Fold one sub-network's BN set ("dense", "gated", or a slimmable width such as "width0.5") into
        its convs and keep, per block, the middle channels `keep[i]` (all the sub-network's when keep is None)."""
        sub, keep = kept_channels_of(backbone, bn, keep)
        net = cls(plain_spec(backbone, [len(k) for k in keep], sub))
        was_training = backbone.training
        backbone.eval()
        with torch.no_grad():
            _copy(
                net.stem[0],
                fold(first_channels(backbone.stem_conv, sub, in_channels=backbone.stem_conv.in_channels), backbone.stem_bn.slot(sub)),
            )
            for plain, block, idx in zip(net.blocks, backbone.blocks, keep):
                full = fold_block(block, sub)
                if len(idx) == 0:
                    plain.body.value.copy_(branch_constant(full))
                else:
                    convs = [c for c in plain.body if isinstance(c, nn.Conv2d)]
                    _copy(convs[0], full[0], out_idx=idx)
                    _copy(convs[1], full[1], in_idx=idx)
                    for small, conv in zip(convs[2:], full[2:-1]):
                        _copy(small, conv)
                if full[-1] is not None:
                    _copy(plain.shortcut, full[-1])
        backbone.train(was_training)
        return net.to(backbone.stem_conv.weight.device).eval()


def plain_spec(backbone: GatedResNet, mid: list[int], sub: SubNet = DENSE) -> dict:
    """The architecture of `backbone`'s sub-network `sub` with `mid[i]` middle channels in block i (conv1's outputs, conv2's inputs)."""
    blocks = []
    for block, k in zip(backbone.blocks, mid):
        convs = [_shape(first_channels(c, sub)) for c in (block.conv1, block.conv2, getattr(block, "conv3", None)) if c is not None]
        convs[0][1] = convs[1][0] = k
        shortcut = None if block.shortcut is None else _shape(first_channels(block.shortcut[0], sub))
        blocks.append({"convs": convs if k > 0 else [], "shortcut": shortcut, "out": sub.channels(block.out_channels)})
    stem = _shape(first_channels(backbone.stem_conv, sub, in_channels=backbone.stem_conv.in_channels))
    return {"format": SPEC_FORMAT, "stem": stem, "pool": backbone.stem_pool is not None, "blocks": blocks}


def spec_macs(spec: dict, size: int) -> int:
    """Multiply-accumulates of one size x size image, from the spec's convolution shapes."""

    def conv(c: list[int], hw: int) -> tuple[int, int]:
        cin, cout, k, stride, padding = c
        out = (hw + 2 * padding - k) // stride + 1
        return cin * cout * k * k * out * out, out

    total, hw = conv(spec["stem"], size)
    if spec["pool"]:
        hw = (hw + 2 - 3) // 2 + 1
    for b in spec["blocks"]:
        branch_hw = hw
        for c in b["convs"]:
            m, branch_hw = conv(c, branch_hw)
            total += m
        if b["shortcut"]:
            m, hw = conv(b["shortcut"], hw)
            total += m
        elif b["convs"]:
            hw = branch_hw
    return total


def fold_block(block, bn: str | SubNet) -> list[nn.Conv2d | None]:
    """The block's convolutions, as the sub-network `bn` runs them, with its BN folded in: [conv1, conv2, (conv3,) shortcut or None]."""
    sub = as_subnet(bn)
    convs = [
        fold(first_channels(getattr(block, f"conv{i}"), sub), getattr(block, f"bn{i}").slot(sub))
        for i in (1, 2, 3)
        if hasattr(block, f"conv{i}")
    ]
    shortcut = None if block.shortcut is None else fold(first_channels(block.shortcut[0], sub), block.shortcut[1].slot(sub))
    return [*convs, shortcut]


@torch.no_grad()
def branch_constant(full: list[nn.Conv2d | None]) -> torch.Tensor:
    """(1, C_out, 1, 1): the residual branch when conv2 gets only zeros (every middle channel off)."""
    convs = full[:-1]
    out = torch.zeros(1, convs[1].in_channels, 1, 1, device=convs[1].weight.device)
    for i, conv in enumerate(convs[1:]):
        out = conv(out)
        if i < len(convs) - 2:
            out = F.relu(out)
    return out
