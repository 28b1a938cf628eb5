"""MobileNets that deploy: BN folded in, hidden channels kept per block (static) or chosen per input (skipping).

One module, `FoldedInvertedResidual`, is a block with its BN folded into its convolutions: built
from a subset of the hidden channels it is the static export's block (plain convolutions, what
TorchScript and ONNX write), sliced with slicing.take (the expansion's rows, the depthwise conv's
channels, the SE's columns and rows, the projection's columns). Built with all of them, it is the
source of `_SkippingInvertedResidual`, the real-skipping pass's block, which takes the same slices
per input from weights stored hidden-channel-major and runs its 1x1 convolutions as matrix products.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.mobilenet import GatedMobileNet
from .slicing import copy_conv as _copy
from .slicing import first_channels, fold, kept_channels_of

SPEC_FORMAT = "gatedssl-plain-mobilenet/1"


def _conv_spec(conv: nn.Conv2d) -> list[int]:
    return [conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.stride[0], conv.padding[0], conv.groups]


def _conv(c: list[int], bias: bool = True) -> nn.Conv2d:
    cin, cout, k, stride, padding, groups = c
    return nn.Conv2d(cin, cout, k, stride, padding, groups=groups, bias=bias)


def _act(x: torch.Tensor, name: str) -> torch.Tensor:
    """The activation, in place: every caller passes a map it has just computed (a copy less per layer)."""
    if name == "relu":
        return F.relu(x, inplace=True)
    if name == "relu6":
        return F.relu6(x, inplace=True)
    if name == "hardswish":
        return F.hardswish(x, inplace=True)
    return x


class FoldedInvertedResidual(nn.Module):
    """An inverted residual with BN folded in, from its spec (see `block_spec`); `hidden` 0 leaves the projection's
    bias (a constant map) plus the input."""

    def __init__(self, spec: dict):
        super().__init__()
        self.act, self.residual, self.hidden = spec["act"], spec["residual"], spec["hidden"]
        self.stride, self.kernel, self.out_channels = spec["stride"], spec["kernel"], spec["out"]
        self.expand = _conv(spec["expand"]) if spec["expand"] else None
        self.depthwise = _conv(spec["depthwise"]) if spec["hidden"] else None
        self.fc1 = _conv(spec["se"][0]) if spec["se"] and spec["hidden"] else None
        self.fc2 = _conv(spec["se"][1]) if spec["se"] and spec["hidden"] else None
        self.project = _conv(spec["project"]) if spec["hidden"] else None
        self.register_buffer("constant", torch.zeros(1, spec["out"], 1, 1))  # the output with no hidden channel open
        # a block without expansion reads its hidden channels from its input: the ones kept (static export)
        self.register_buffer("take", torch.tensor(spec.get("take") or [], dtype=torch.long))

    def _out_size(self, n: int) -> int:
        return (n + 2 * ((self.kernel - 1) // 2) - self.kernel) // self.stride + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.depthwise is None or self.project is None:
            out = self.constant.expand(x.shape[0], self.out_channels, self._out_size(x.shape[2]), self._out_size(x.shape[3]))
            return out + x if self.residual else out
        h = x
        if self.expand is not None:
            h = _act(self.expand(h), self.act)
        elif self.take.numel() > 0:
            h = h.index_select(1, self.take)
        h = _act(self.depthwise(h), self.act)
        if self.fc1 is not None and self.fc2 is not None:
            scale = F.relu(self.fc1(F.adaptive_avg_pool2d(h, 1)))
            h = h * F.hardsigmoid(self.fc2(scale))
        out = self.project(h)
        return out + x if self.residual else out


def _folded_parts(block, sub) -> dict[str, nn.Conv2d | None]:
    """The block's convolutions as sub-network `sub` runs them, BN folded in (the SE has no BN)."""
    parts: dict[str, nn.Conv2d | None] = {
        "expand": None if block.expand is None else fold(first_channels(block.expand, sub), block.expand_bn.slot(sub)),
        "depthwise": fold(first_channels(block.depthwise, sub), block.depthwise_bn.slot(sub)),
        "project": fold(first_channels(block.project, sub), block.project_bn.slot(sub)),
        "fc1": None,
        "fc2": None,
    }
    if block.se is not None:
        parts["fc1"], parts["fc2"] = first_channels(block.se.fc1, sub), first_channels(block.se.fc2, sub)
    return parts


def block_spec(block, parts: dict, kept: int, take_idx: list[int] | None) -> dict:
    """The architecture of a folded block keeping `kept` hidden channels."""

    def shape(conv: nn.Conv2d | None, cout: int | None = None, cin: int | None = None, groups: int | None = None):
        if conv is None:
            return None
        s = _conv_spec(conv)
        s[0], s[1] = cin if cin is not None else s[0], cout if cout is not None else s[1]
        s[5] = groups if groups is not None else s[5]
        return s

    project = parts["project"]
    return {
        "act": block.act,
        "residual": block.residual,
        "hidden": kept,
        "kernel": block.depthwise.kernel_size[0],
        "stride": block.depthwise.stride[0],
        "out": project.out_channels,
        "expand": shape(parts["expand"], cout=kept) if kept else None,
        "depthwise": shape(parts["depthwise"], cout=kept, cin=kept, groups=kept) if kept else None,
        "se": [shape(parts["fc1"], cin=kept), shape(parts["fc2"], cout=kept)] if parts["fc1"] is not None and kept else None,
        "project": shape(project, cin=kept) if kept else None,
        "take": take_idx if parts["expand"] is None and kept else None,
    }


@torch.no_grad()
def _fill(plain: FoldedInvertedResidual, parts: dict, idx: torch.Tensor) -> None:
    if plain.depthwise is None:  # no hidden channel: the projection of zeros is its bias
        plain.constant.copy_(parts["project"].bias.view(1, -1, 1, 1))
        return
    if parts["expand"] is not None:
        _copy(plain.expand, parts["expand"], out_idx=idx)
    _copy(plain.depthwise, parts["depthwise"], out_idx=idx)
    if parts["fc1"] is not None:
        _copy(plain.fc1, parts["fc1"], in_idx=idx)
        _copy(plain.fc2, parts["fc2"], out_idx=idx)
    _copy(plain.project, parts["project"], in_idx=idx)
    plain.constant.copy_(parts["project"].bias.view(1, -1, 1, 1))


class ConvAct(nn.Module):
    def __init__(self, spec: dict):
        super().__init__()
        self.conv, self.act = _conv(spec["conv"]), spec["act"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _act(self.conv(x), self.act)


class PlainMobileNet(nn.Module):
    """MobileNet features (N, D) from standard modules; build it from a spec, or `from_gated`."""

    __jit_unused_properties__ = ["mid_channels"]

    def __init__(self, spec: dict):
        super().__init__()
        if spec.get("format") != SPEC_FORMAT:
            raise ValueError(f"not a {SPEC_FORMAT} architecture: {spec.get('format')!r}")
        self.spec = spec
        self.stem = ConvAct(spec["stem"])
        self.blocks = nn.Sequential(*[FoldedInvertedResidual(b) for b in spec["blocks"]])
        self.last = ConvAct(spec["last"])
        self.feature_dim = spec["last"]["conv"][1]
        self.to(memory_format=torch.channels_last)  # oneDNN's depthwise and 1x1 convolutions run faster so (BENCHMARKS.md)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)  # as its weights: see __init__
        return torch.flatten(F.adaptive_avg_pool2d(self.last(self.blocks(self.stem(x))), 1), 1)

    @property
    def mid_channels(self) -> list[int]:
        return [b["hidden"] for b in self.spec["blocks"]]

    def macs(self, size: int) -> int:
        return spec_macs(self.spec, size)

    @classmethod
    def from_gated(cls, backbone: GatedMobileNet, bn: str = "dense", keep: list[torch.Tensor] | None = None) -> PlainMobileNet:
        sub, keep = kept_channels_of(backbone, bn, keep)
        was_training = backbone.training
        backbone.eval()
        with torch.no_grad():
            stem = fold(first_channels(backbone.first.conv, sub, in_channels=3), backbone.first.bn.slot(sub))
            last = fold(first_channels(backbone.last.conv, sub), backbone.last.bn.slot(sub))
            parts = [_folded_parts(b, sub) for b in backbone.blocks]
            spec = {
                "format": SPEC_FORMAT,
                "arch": backbone.arch,
                "stem": {"conv": _conv_spec(stem), "act": backbone.first.act},
                "blocks": [block_spec(b, p, len(k), k.tolist()) for b, p, k in zip(backbone.blocks, parts, keep)],
                "last": {"conv": _conv_spec(last), "act": backbone.last.act},
            }
            net = cls(spec).to(backbone.first.conv.weight.device)
            _copy(net.stem.conv, stem)
            _copy(net.last.conv, last)
            for plain, p, idx in zip(net.blocks, parts, keep):
                _fill(plain, p, idx.to(plain.constant.device))
        backbone.train(was_training)
        return net.eval()


def spec_macs(spec: dict, size: int) -> int:
    """Multiply-accumulates of one size x size image, from the spec's convolution shapes."""

    def conv(c: list[int] | None, hw: int) -> tuple[int, int]:
        if c is None:
            return 0, hw
        cin, cout, k, stride, padding, groups = c
        out = (hw + 2 * padding - k) // stride + 1
        return cin // groups * cout * k * k * out * out, out

    total, hw = conv(spec["stem"]["conv"], size)
    for b in spec["blocks"]:
        if not b["hidden"]:
            hw = (hw + 2 * ((b["kernel"] - 1) // 2) - b["kernel"]) // b["stride"] + 1
            continue
        m, _ = conv(b["expand"], hw)
        total += m
        m, hw = conv(b["depthwise"], hw)
        total += m
        for c in b["se"] or []:
            total += conv(c, 1)[0]
        total += conv(b["project"], hw)[0]
    return total + conv(spec["last"]["conv"], hw)[0]


def _rows(x: torch.Tensor) -> torch.Tensor:
    """A channels_last map as the (N*H*W, C) matrix it is in memory (a view): a 1x1 convolution is one product with it."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def _as_map(rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(N*H*W, C) rows back to an (N, C, H, W) channels_last map of `like`'s N, H, W (a view)."""
    n, _, h, w = like.shape
    return rows.view(n, h, w, -1).permute(0, 3, 1, 2)


class _SkippingInvertedResidual(nn.Module):
    """An inverted residual computing only the hidden channels `idx`, in channels_last.

    In channels_last a 1x1 convolution is a matrix product with the map's rows, so the expansion and the
    projection run as products with weights stored hidden-channel-major: the kept channels are whole rows,
    read without the transposes and oneDNN weight reorders that sliced convolutions cost per call.
    """

    def __init__(self, block: FoldedInvertedResidual):
        super().__init__()
        assert block.depthwise is not None and block.project is not None
        self.act, self.residual, self.hidden = block.act, block.residual, block.depthwise.out_channels
        self.stride, self.padding = block.depthwise.stride, block.depthwise.padding
        self.register_buffer("project_bias", block.project.bias.detach().clone())
        self.register_buffer("project_rows", block.project.weight.detach().flatten(1).t().contiguous())  # (hidden, out)
        self.register_buffer("depthwise_weight", block.depthwise.weight.detach().clone())
        self.register_buffer("depthwise_bias", block.depthwise.bias.detach().clone())
        self.expand = block.expand is not None
        if block.expand is not None:
            self.register_buffer("expand_rows", block.expand.weight.detach().flatten(1).contiguous())  # (hidden, in)
            self.register_buffer("expand_bias", block.expand.bias.detach().clone())
        self.se = block.fc1 is not None and block.fc2 is not None
        if block.fc1 is not None and block.fc2 is not None:
            self.register_buffer("squeeze_rows", block.fc1.weight.detach().flatten(1).t().contiguous())  # (hidden, squeeze)
            self.register_buffer("squeeze_bias", block.fc1.bias.detach().clone())
            self.register_buffer("excite_rows", block.fc2.weight.detach().flatten(1).contiguous())  # (hidden, squeeze)
            self.register_buffer("excite_bias", block.fc2.bias.detach().clone())
        self.register_buffer("constant", block.constant.clone())
        self.kernel = block.kernel

    def _out_size(self, n: int) -> int:
        return (n + 2 * self.padding[0] - self.kernel) // self.stride[0] + 1

    def forward(self, x: torch.Tensor, idx: torch.Tensor, within: torch.Tensor | None) -> torch.Tensor:
        """The block on channels_last `x`, computing hidden channels `idx` (`within`: a per-sample 0/1 mask on them)."""
        if len(idx) == 0:
            out = self.constant.expand(x.shape[0], -1, self._out_size(x.shape[2]), self._out_size(x.shape[3]))
            return out + x if self.residual else out.contiguous(memory_format=torch.channels_last)
        every = len(idx) == self.hidden

        def rows(t: torch.Tensor) -> torch.Tensor:
            return t if every else t.index_select(0, idx)

        if self.expand:
            h = _as_map(torch.addmm(rows(self.expand_bias), _rows(x), rows(self.expand_rows).t()), x)
            h = _act(h, self.act)
        else:
            h = x if every else _as_map(_rows(x).index_select(1, idx), x)  # x.index_select(1, ...) would copy all of x first
        h = F.conv2d(h, rows(self.depthwise_weight), rows(self.depthwise_bias), self.stride, self.padding, groups=len(idx))
        h = _act(h, self.act)
        if within is not None:
            h = h * within[:, :, None, None].to(h.dtype)
        if self.se:
            squeezed = F.relu(torch.addmm(self.squeeze_bias, h.mean((2, 3)), rows(self.squeeze_rows)))
            h = h * F.hardsigmoid(torch.addmm(rows(self.excite_bias), squeezed, rows(self.excite_rows).t()))[:, :, None, None]
        out = _as_map(torch.addmm(self.project_bias, _rows(h), rows(self.project_rows)), h)
        return out + x if self.residual else out


class SkippingMobileNet(nn.Module):
    """Eval-only gated pass of a trained GatedMobileNet computing only the hidden channels each gate opens
    (batch 1, or the batch's union with per-sample zeros: strategy "union"; "group": one pattern at a time)."""

    def __init__(self, backbone: GatedMobileNet, strategy: str = "union"):
        super().__init__()
        from .skipping import STRATEGIES, _as_linear

        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        self.strategy = strategy
        full = PlainMobileNet.from_gated(backbone, "gated").to(memory_format=torch.channels_last)
        self.stem, self.last = full.stem, full.last
        self.blocks = nn.ModuleList(_SkippingInvertedResidual(b) for b in full.blocks)
        self.register_buffer("last_rows", full.last.conv.weight.detach().flatten(1).contiguous())  # the 1x1 head conv as a product
        was_training = backbone.training
        backbone.eval()
        with torch.no_grad():
            self.gate_reduce = nn.ModuleList(_as_linear(fold(b.gate.reduce, b.gate.bn)) for b in backbone.blocks)
            self.gate_expand = nn.ModuleList(_as_linear(b.gate.expand, b.gate.offset) for b in backbone.blocks)
        backbone.train(was_training)
        self.eval()

    @torch.no_grad()
    def forward(self, x: torch.Tensor, masks: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        out, used = self.stem(x.contiguous(memory_format=torch.channels_last)), []  # channels_last: see the blocks
        for i, block in enumerate(self.blocks):
            if masks is None:
                mask = self.gate_expand[i](F.relu(self.gate_reduce[i](out.mean((2, 3))))) >= 0
            else:
                mask = masks[i].bool()
            if out.shape[0] == 1 or self.strategy == "union":
                open_any = mask.any(0)
                idx = open_any.nonzero().flatten()
                same = out.shape[0] == 1 or bool((mask == open_any).all())
                out = block(out, idx, None if same else mask[:, idx])
            else:
                patterns, which = torch.unique(mask, dim=0, return_inverse=True)
                parts = [block(out[which == g], p.nonzero().flatten(), None) for g, p in enumerate(patterns)]
                result = torch.empty(out.shape[0], *parts[0].shape[1:], dtype=out.dtype, device=out.device)
                for g, part in enumerate(parts):
                    result[which == g] = part
                out = result
            used.append(mask.float())
        last = _as_map(torch.addmm(self.last.conv.bias, _rows(out), self.last_rows.t()), out)
        return torch.flatten(F.adaptive_avg_pool2d(_act(last, self.last.act), 1), 1), used
