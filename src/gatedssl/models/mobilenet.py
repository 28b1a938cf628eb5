"""Gated MobileNetV2 and MobileNetV3 (large, small): torchvision's networks, with a gate per inverted residual.

What each gate switches, and why:
- The expanded hidden channels of the block: the expansion 1x1's outputs, the depthwise conv's
  channels, the squeeze-excitation's inputs and outputs, the projection 1x1's inputs. That is
  where the block's compute is, and it never touches the residual stream.
- Blocks without an expansion (the first of V2 and of V3) are gated the same way: their hidden
  channels are the depthwise conv's, read straight from the block input, so a closed channel is
  a depthwise channel and a projection column that are not computed.
- The SE of a V3 block squeezes the masked map, so it sees only open channels (a closed one pools
  to zero); its excitation of a closed channel multiplies a zero. Counting its two 1x1s per open
  channel is then exact.
- The stem, the projections (into the residual stream) and the last 1x1 conv before pooling stay
  dense: the last conv's outputs are the features, whose meaning must not depend on the input.

`--width` is torchvision's width multiplier (1.0 = the standard network; channels rounded to
multiples of 8). The CIFAR stem (`--stem cifar`, for 32 px inputs) sets stride 1 in the stem and in
the first stride-2 block, as the common CIFAR ports do, so 32 px inputs end at 4 x 4 maps (224 px end at 7 x 7).
BN epsilon and momentum are torchvision's (V3: 0.001 and 0.01), so its state dicts give its features.

Each arch is a declaration (`MobileNetDesign`: its stem, a `BlockSpec` per block, its last conv), so another
backbone of inverted residuals (MnasNet-, EfficientNet-lite-like) is a design function and one `register_mobilenet` call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from .backbone import ACTIVATIONS, GatedBackbone, PassBatchNorm, SharedBatchNorm, conv_macs, register_arch, run_conv
from .gate import ChannelGate
from .subnets import DENSE, SubNet


def make_divisible(value: float, divisor: int = 8) -> int:
    """torchvision's channel rounding (never more than 10 % below `value`)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


@dataclass(frozen=True)
class BlockSpec:
    in_channels: int
    kernel: int
    hidden: int
    out_channels: int
    se: bool
    act: str
    stride: int
    imagenet_stride: int = 0  # torchvision's stride, which decides the residual (0: the stride itself)

    @property
    def residual(self) -> bool:
        """torchvision's rule, from its own stride: the CIFAR variant's stride-1 block keeps torchvision's structure."""
        return (self.imagenet_stride or self.stride) == 1 and self.in_channels == self.out_channels


class ConvNormAct(nn.Module):
    """An ungated conv -> BN (shared by dense and gated passes) -> activation: the stem and the last conv."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, act: str, eps: float, momentum: float):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, bias=False)
        self.bn = SharedBatchNorm(cout, eps=eps, momentum=momentum)
        self.act = act

    def forward(self, x: torch.Tensor, sub: SubNet) -> tuple[torch.Tensor, int, int]:
        out = ACTIVATIONS[self.act](self.bn(run_conv(self.conv, x, sub), sub))
        macs = conv_macs(self.conv, x.shape[1], out)
        full = out.shape[-2] * out.shape[-1] * self.conv.in_channels * self.conv.out_channels * self.conv.kernel_size[0] ** 2
        return out, macs, full


class SqueezeExcitation(nn.Module):
    """torchvision's SE (fc1 -> ReLU -> fc2 -> hardsigmoid, 1x1 convs with bias) on the hidden channels."""

    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor, sub: SubNet) -> torch.Tensor:
        scale = torch.nn.functional.adaptive_avg_pool2d(x, 1)
        scale = torch.relu(run_conv(self.fc1, scale, sub))
        return x * torch.nn.functional.hardsigmoid(run_conv(self.fc2, scale, sub))


class GatedInvertedResidual(nn.Module):
    """(expand 1x1 ->) depthwise kxk (-> SE) -> project 1x1, plus the input when the shapes allow; the gate
    switches the hidden channels (see the module docstring)."""

    def __init__(self, spec: BlockSpec, separate_bn: bool, tau: float, gate_bias: bool, eps: float, momentum: float):
        super().__init__()
        cin, hidden, cout = spec.in_channels, spec.hidden, spec.out_channels
        self.in_channels, self.mid_channels, self.out_channels = cin, hidden, cout
        self.act, self.residual = spec.act, spec.residual
        self.expand = nn.Conv2d(cin, hidden, 1, bias=False) if hidden != cin else None
        self.expand_bn = PassBatchNorm(hidden, separate_bn, eps, momentum) if hidden != cin else None
        self.depthwise = nn.Conv2d(hidden, hidden, spec.kernel, spec.stride, (spec.kernel - 1) // 2, groups=hidden, bias=False)
        self.depthwise_bn = PassBatchNorm(hidden, separate_bn, eps, momentum)
        self.se = SqueezeExcitation(hidden, make_divisible(hidden // 4)) if spec.se else None
        self.project = nn.Conv2d(hidden, cout, 1, bias=False)
        self.project_bn = PassBatchNorm(cout, separate_bn, eps, momentum)
        self.gate = ChannelGate(cin, hidden, tau, bias=gate_bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, sub: SubNet) -> torch.Tensor:
        act = ACTIVATIONS[self.act]
        out = x if self.expand is None else act(self.expand_bn(run_conv(self.expand, x, sub), sub))
        out = act(self.depthwise_bn(run_conv(self.depthwise, out, sub), sub))
        if mask is not None:
            out = out * mask[:, :, None, None].to(out.dtype)
        if self.se is not None:
            out = self.se(out, sub)
        out = self.project_bn(run_conv(self.project, out, sub), sub)
        return out + x if self.residual else out

    def macs(self, in_hw: int, out_hw: int, sub: SubNet = DENSE) -> tuple[int, int]:
        """(MACs per open hidden channel, MACs independent of the mask), per sample."""
        cin, cout = sub.channels(self.in_channels), sub.channels(self.out_channels)
        per_channel = self.depthwise.kernel_size[0] ** 2 * out_hw + out_hw * cout
        if self.expand is not None:
            per_channel += in_hw * cin
        if self.se is not None:
            per_channel += 2 * sub.channels(self.se.fc1.out_channels)
        return per_channel, 0


@dataclass(frozen=True)
class MobileNetDesign:
    """Everything that tells one MobileNet-like backbone from another, at one width multiplier. A new backbone of
    inverted residuals is a function width -> MobileNetDesign and one `register_mobilenet` call."""

    stem_channels: int  # the stem's 3x3 conv (stride 2; 1 in the CIFAR variant)
    blocks: list[BlockSpec]
    last_channels: int  # the 1x1 conv before pooling: the feature dimension
    act: tuple[str, str] = ("relu6", "relu6")  # the stem's and the last conv's activations
    bn: tuple[float, float] = (1e-5, 0.1)  # BN epsilon and momentum (torchvision's, so that its state dicts give its features)
    torchvision_layout: str | None = None  # "v2" or "v3": how torchvision names the layers; None: no torchvision twin


def mobilenet_v2_design(width: float) -> MobileNetDesign:
    """torchvision's MobileNetV2: (expansion t, channels c, blocks n, first stride s) per stage."""
    cin, blocks = make_divisible(32 * width), []
    for t, c, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]:
        cout = make_divisible(c * width)
        for i in range(n):
            blocks.append(BlockSpec(cin, 3, int(round(cin * t)), cout, False, "relu6", s if i == 0 else 1))
            cin = cout
    return MobileNetDesign(make_divisible(32 * width), blocks, make_divisible(1280 * max(1.0, width)), torchvision_layout="v2")


def v3_design(table: list[tuple], width: float) -> MobileNetDesign:
    """A MobileNetV3 from torchvision's table: (in, kernel, hidden, out, SE, activation, stride) per block."""
    blocks = [
        BlockSpec(make_divisible(i * width), k, make_divisible(h * width), make_divisible(o * width), se, act, s)
        for i, k, h, o, se, act, s in table
    ]
    last = 6 * blocks[-1].out_channels
    return MobileNetDesign(make_divisible(16 * width), blocks, last, ("hardswish", "hardswish"), (1e-3, 0.01), "v3")


V3_LARGE = [
    (16, 3, 16, 16, False, "relu", 1),
    (16, 3, 64, 24, False, "relu", 2),
    (24, 3, 72, 24, False, "relu", 1),
    (24, 5, 72, 40, True, "relu", 2),
    (40, 5, 120, 40, True, "relu", 1),
    (40, 5, 120, 40, True, "relu", 1),
    (40, 3, 240, 80, False, "hardswish", 2),
    (80, 3, 200, 80, False, "hardswish", 1),
    (80, 3, 184, 80, False, "hardswish", 1),
    (80, 3, 184, 80, False, "hardswish", 1),
    (80, 3, 480, 112, True, "hardswish", 1),
    (112, 3, 672, 112, True, "hardswish", 1),
    (112, 5, 672, 160, True, "hardswish", 2),
    (160, 5, 960, 160, True, "hardswish", 1),
    (160, 5, 960, 160, True, "hardswish", 1),
]
V3_SMALL = [
    (16, 3, 16, 16, True, "relu", 2),
    (16, 3, 72, 24, False, "relu", 2),
    (24, 3, 88, 24, False, "relu", 1),
    (24, 5, 96, 40, True, "hardswish", 2),
    (40, 5, 240, 40, True, "hardswish", 1),
    (40, 5, 240, 40, True, "hardswish", 1),
    (40, 5, 120, 48, True, "hardswish", 1),
    (48, 5, 144, 48, True, "hardswish", 1),
    (48, 5, 288, 96, True, "hardswish", 2),
    (96, 5, 576, 96, True, "hardswish", 1),
    (96, 5, 576, 96, True, "hardswish", 1),
]


class GatedMobileNet(GatedBackbone):
    """MobileNet-like features (no classifier) with a dense and a gated pass over the same weights."""

    def __init__(
        self,
        arch: str,
        design: MobileNetDesign,
        stem: str = "cifar",
        width: float = 1.0,
        separate_bn: bool = True,
        tau: float = 2 / 3,
        gate_bias: bool = True,
    ):
        super().__init__()
        if stem not in ("cifar", "imagenet"):
            raise ValueError(f"stem must be one of ('cifar', 'imagenet'), got {stem!r}")
        self.arch, self.stem_kind, self.width, self.separate_bn = arch, stem, width, separate_bn
        self.torchvision_layout = design.torchvision_layout
        specs = list(design.blocks)
        eps, momentum = design.bn
        self.cifar_block = None  # the block whose stride the CIFAR variant sets to 1
        if stem == "cifar":  # stride 1 in the stem and in the first stride-2 block
            first = self.cifar_block = next(i for i, b in enumerate(specs) if b.stride == 2)
            specs[first] = BlockSpec(**{**specs[first].__dict__, "stride": 1, "imagenet_stride": specs[first].stride})
        self.first = ConvNormAct(3, design.stem_channels, 3, 1 if stem == "cifar" else 2, design.act[0], eps, momentum)
        self.widths: tuple[float, ...] = ()
        self.blocks = nn.ModuleList(GatedInvertedResidual(s, separate_bn, tau, gate_bias, eps, momentum) for s in specs)
        self.last = ConvNormAct(specs[-1].out_channels, design.last_channels, 1, 1, design.act[1], eps, momentum)
        self.feature_dim = design.last_channels
        gate_convs = {id(m) for g in self.gates for m in g.modules()}
        for m in self.modules():  # torchvision's initialisation (the gates' as in the ResNets: kaiming, default biases)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None and id(m) not in gate_convs:
                    nn.init.zeros_(m.bias)

    def stem(self, x: torch.Tensor, sub: SubNet) -> tuple[torch.Tensor, int, int]:
        return self.first(x, sub)

    def head(self, x: torch.Tensor, sub: SubNet) -> tuple[torch.Tensor, int, int]:
        return self.last(x, sub)

    def torchvision_problem(self) -> str | None:
        # torchvision builds every width multiplier; the CIFAR strides are set by the construction
        return None if self.torchvision_layout else f"{self.arch} has no torchvision twin; export it as pt, onnx or torchscript"

    def torchvision_construction(self) -> dict:
        """How to build the torchvision model the dense weights fit: the width multiplier, and the convolutions whose
        stride the CIFAR variant sets to 1 (a state dict cannot say it)."""
        from .torchvision_names import SIDECAR_FORMAT

        stride_one = []
        if self.cifar_block is not None:
            names = self.torchvision_names()
            stride_one = [names[f"{key}.weight"].rsplit(".", 1)[0] for key in ("first.conv", f"blocks.{self.cifar_block}.depthwise")]
        return {
            "format": SIDECAR_FORMAT,
            "family": "mobilenet",
            "arch": self.arch,
            "width_mult": self.width,
            "stride_one": stride_one,
            "classifier": "Identity",
            "feature_dim": self.feature_dim,
        }

    def torchvision_names(self) -> dict[str, str]:
        """gatedssl key -> torchvision key, for every tensor the dense pass uses (no gates, no gated BN)."""
        names: dict[str, str] = {}

        def put(ours: str, theirs: str, module: nn.Module) -> None:
            for key in module.state_dict():
                if "." not in key:  # a shared BN's own (dense) set, not its slimmable widths' slots
                    names[f"{ours}.{key}"] = f"{theirs}.{key}"

        put("first.conv", "features.0.0", self.first.conv)
        put("first.bn", "features.0.1", self.first.bn)
        v2 = self.torchvision_layout == "v2"
        for i, block in enumerate(self.blocks):
            prefix, j = f"features.{i + 1}.{'conv' if v2 else 'block'}", 0
            for conv in ("expand", "depthwise"):
                if getattr(block, conv) is not None:
                    put(f"blocks.{i}.{conv}", f"{prefix}.{j}.0", getattr(block, conv))
                    put(f"blocks.{i}.{conv}_bn.dense", f"{prefix}.{j}.1", getattr(block, f"{conv}_bn").dense)
                    j += 1
            if block.se is not None:
                put(f"blocks.{i}.se.fc1", f"{prefix}.{j}.fc1", block.se.fc1)
                put(f"blocks.{i}.se.fc2", f"{prefix}.{j}.fc2", block.se.fc2)
                j += 1
            if v2:  # V2's projection is a bare conv and BN, V3's a Conv2dNormActivation
                put(f"blocks.{i}.project", f"{prefix}.{j}", block.project)
                put(f"blocks.{i}.project_bn.dense", f"{prefix}.{j + 1}", block.project_bn.dense)
            else:
                put(f"blocks.{i}.project", f"{prefix}.{j}.0", block.project)
                put(f"blocks.{i}.project_bn.dense", f"{prefix}.{j}.1", block.project_bn.dense)
        put("last.conv", f"features.{len(self.blocks) + 1}.0", self.last.conv)
        put("last.bn", f"features.{len(self.blocks) + 1}.1", self.last.bn)
        return names


def register_mobilenet(name: str, design: Callable[[float], MobileNetDesign]):
    """Make `--arch name` the MobileNet that `design(width multiplier)` declares (and add `name` to names.ARCH_NAMES
    and WIDTH_MULTIPLIER_ARCHS for the command line). Masks, MACs, skipping, static and slimmable export follow."""

    def factory(
        stem: str = "cifar", width: float = 1.0, separate_bn: bool = True, tau: float = 2 / 3, stem_padding: int = 1, gate_bias: bool = True
    ) -> GatedMobileNet:
        if stem_padding != 1:
            raise ValueError(f"{name}: stem_padding applies to the ResNets' CIFAR stem only")
        if not 0 < width <= 4:
            raise ValueError(f"width is {name}'s width multiplier, in (0, 4]; got {width:g}")
        return GatedMobileNet(name, design(width), stem=stem, width=width, separate_bn=separate_bn, tau=tau, gate_bias=gate_bias)

    factory.__name__ = f"gated_{name}"
    factory.__doc__ = f"Gated {name}; width is its width multiplier (1.0 = the standard network)."
    return register_arch(name, factory)


gated_mobilenet_v2 = register_mobilenet("mobilenet_v2", mobilenet_v2_design)
gated_mobilenet_v3_large = register_mobilenet("mobilenet_v3_large", partial(v3_design, V3_LARGE))
gated_mobilenet_v3_small = register_mobilenet("mobilenet_v3_small", partial(v3_design, V3_SMALL))
