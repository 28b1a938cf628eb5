"""MobileNets that deploy: BN folded in, hidden channels kept per block (static) or chosen per input (skipping).

One module, `FoldedInvertedResidual`, is a block with its BN folded into its convolutions. Built
from a subset of the hidden channels it is the static export's block (plain convolutions, what
TorchScript and ONNX write); built with all of them, `skip(x, idx)` computes only the hidden
channels `idx` (the real-skipping pass). Both slice the same way, with slicing.take: the expansion's
rows, the depthwise conv's channels, the SE's columns and rows, the projection's columns.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.mobilenet import GatedMobileNet
from .slicing import copy_conv as _copy
from .slicing import first_channels, fold, input_major, kept_channels_of, take, take_inputs

SPEC_FORMAT = "gatedssl-plain-mobilenet/1"


def _conv_spec(conv: nn.Conv2d) -> list[int]:
    return [conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.stride[0], conv.padding[0], conv.groups]


def _conv(c: list[int], bias: bool = True) -> nn.Conv2d:
    cin, cout, k, stride, padding, groups = c
    return nn.Conv2d(cin, cout, k, stride, padding, groups=groups, bias=bias)


def _act(x: torch.Tensor, name: str) -> torch.Tensor:
    if name == "relu":
        return F.relu(x)
    if name == "relu6":
        return F.relu6(x)
    if name == "hardswish":
        return F.hardswish(x)
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

    @torch.jit.unused
    def skip(self, x: torch.Tensor, idx: torch.Tensor, within: torch.Tensor | None, project_input_major: torch.Tensor) -> torch.Tensor:
        """The block computing only hidden channels `idx` (`within`: a per-sample 0/1 mask on them)."""
        if len(idx) == 0:
            out = self.constant.expand(x.shape[0], self.out_channels, self._out_size(x.shape[2]), self._out_size(x.shape[3]))
            return out + x if self.residual else out
        assert self.depthwise is not None and self.project is not None
        everything = len(idx) == self.depthwise.out_channels
        if self.expand is not None:
            weight, bias = (self.expand.weight, self.expand.bias) if everything else take(self.expand, out_idx=idx)
            h = _act(F.conv2d(x, weight, bias), self.act)
        else:
            h = x if everything else x.index_select(1, idx)
        weight, bias = (self.depthwise.weight, self.depthwise.bias) if everything else take(self.depthwise, out_idx=idx)
        h = _act(F.conv2d(h, weight, bias, self.depthwise.stride, self.depthwise.padding, groups=len(idx)), self.act)
        if within is not None:
            h = h * within[:, :, None, None].to(h.dtype)
        if self.fc1 is not None and self.fc2 is not None:
            w1 = self.fc1.weight if everything else self.fc1.weight.index_select(1, idx)
            w2, b2 = (self.fc2.weight, self.fc2.bias) if everything else take(self.fc2, out_idx=idx)
            scale = F.relu(F.conv2d(F.adaptive_avg_pool2d(h, 1), w1, self.fc1.bias))
            h = h * F.hardsigmoid(F.conv2d(scale, w2, b2))
        weight = self.project.weight if everything else take_inputs(project_input_major, idx)
        out = F.conv2d(h, weight, self.project.bias)
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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


class SkippingMobileNet(nn.Module):
    """Eval-only gated pass of a trained GatedMobileNet computing only the hidden channels each gate opens
    (batch 1, or the batch's union with per-sample zeros: strategy "union"; "group": one pattern at a time)."""

    def __init__(self, backbone: GatedMobileNet, strategy: str = "union"):
        super().__init__()
        from .skipping import STRATEGIES, _as_linear

        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        self.strategy = strategy
        full = PlainMobileNet.from_gated(backbone, "gated")
        self.stem, self.blocks, self.last = full.stem, full.blocks, full.last
        was_training = backbone.training
        backbone.eval()
        with torch.no_grad():
            self.gate_reduce = nn.ModuleList(_as_linear(fold(b.gate.reduce, b.gate.bn)) for b in backbone.blocks)
            self.gate_expand = nn.ModuleList(_as_linear(b.gate.expand, b.gate.offset) for b in backbone.blocks)
            for i, block in enumerate(self.blocks):
                self.register_buffer(f"project_input_major{i}", input_major(block.project))
        backbone.train(was_training)
        self.eval()

    @torch.no_grad()
    def forward(self, x: torch.Tensor, masks: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        out, used = self.stem(x), []
        for i, block in enumerate(self.blocks):
            if masks is None:
                mask = self.gate_expand[i](F.relu(self.gate_reduce[i](out.mean((2, 3))))) >= 0
            else:
                mask = masks[i].bool()
            weight = getattr(self, f"project_input_major{i}")
            if out.shape[0] == 1 or self.strategy == "union":
                open_any = mask.any(0)
                idx = open_any.nonzero().flatten()
                same = out.shape[0] == 1 or bool((mask == open_any).all())
                out = block.skip(out, idx, None if same else mask[:, idx], weight)
            else:
                patterns, which = torch.unique(mask, dim=0, return_inverse=True)
                parts = [block.skip(out[which == g], p.nonzero().flatten(), None, weight) for g, p in enumerate(patterns)]
                result = torch.empty(out.shape[0], *parts[0].shape[1:], dtype=out.dtype, device=out.device)
                for g, part in enumerate(parts):
                    result[which == g] = part
                out = result
            used.append(mask.float())
        return torch.flatten(F.adaptive_avg_pool2d(self.last(out), 1), 1), used
