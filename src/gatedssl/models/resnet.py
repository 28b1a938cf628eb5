"""ResNets whose residual blocks carry a channel gate, and one BN set per sub-network.

One network object serves every sub-network (`subnets.py`): `net(x)` or `net(x, "dense")` is the
dense encoder, `net(x, "gated")` the gated sub-network (same conv weights, per-input channel
masks), `net(x, "width0.5")` a slimmable width (the first half of every conv's channels) once
`add_widths` gave it its BN. Every pass also returns its per-sample MACs, counted from the
channels it actually used, so the budget loss and the reports never need a second bookkeeping
of the architecture.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import (  # noqa: F401  (BackboneOutput, create_backbone: where they were before backbone.py)
    ARCHS,
    BackboneOutput,
    GatedBackbone,
    PassBatchNorm,
    SharedBatchNorm,
    conv_macs,
    create_backbone,
    register_arch,
    run_conv,
)
from .gate import ChannelGate
from .onednn import avoid_onednn_1x1_crash
from .subnets import DENSE, SubNet

STEMS = ("cifar", "imagenet")


def _conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(_conv(cin, cout, 1, stride), SharedBatchNorm(cout))


def _identity(block, x: torch.Tensor, sub: SubNet) -> torch.Tensor:
    return x if block.shortcut is None else block.shortcut[1](run_conv(block.shortcut[0], x, sub), sub)


class GatedBasicBlock(nn.Module):
    """3x3 -> 3x3 block; the gate switches off conv1's output channels (= conv2's inputs)."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int, separate_bn: bool, tau: float, gate_bias: bool = True):
        super().__init__()
        self.in_channels, self.mid_channels, self.out_channels = in_channels, planes, planes
        self.conv1 = _conv(in_channels, planes, 3, stride)
        self.bn1 = PassBatchNorm(planes, separate_bn)
        self.conv2 = _conv(planes, planes, 3)
        self.bn2 = PassBatchNorm(planes, separate_bn)
        self.shortcut = _shortcut(in_channels, planes, stride)
        self.gate = ChannelGate(in_channels, planes, tau, bias=gate_bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, sub: SubNet) -> torch.Tensor:
        out = F.relu(self.bn1(run_conv(self.conv1, x, sub), sub))
        if mask is not None:
            out = out * mask[:, :, None, None].to(out.dtype)
        out = self.bn2(run_conv(self.conv2, out, sub), sub)
        return F.relu(out + _identity(self, x, sub))

    def macs(self, in_hw: int, out_hw: int, sub: SubNet = DENSE) -> tuple[int, int]:
        """(MACs per active middle channel, MACs independent of the mask), per sample, for the sub-network's channels."""
        cin, cout = sub.channels(self.in_channels), sub.channels(self.out_channels)
        per_channel = 9 * out_hw * (cin + cout)
        fixed = 0 if self.shortcut is None else out_hw * cin * cout
        return per_channel, fixed


class GatedBottleneck(nn.Module):
    """1x1 reduce -> 3x3 -> 1x1 expand (stride on the 3x3, as torchvision's ResNet v1.5).

    Choice: the gate masks the channels between the 1x1 reduce and the 3x3 (conv1's outputs),
    which saves compute in both the 1x1 reduce and the 3x3. The 3x3's outputs and the expand
    stay dense, so one gate per block, as in the basic block.
    """

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int, separate_bn: bool, tau: float, gate_bias: bool = True):
        super().__init__()
        out_channels = planes * self.expansion
        self.in_channels, self.mid_channels, self.out_channels = in_channels, planes, out_channels
        self.conv1 = _conv(in_channels, planes, 1)
        self.bn1 = PassBatchNorm(planes, separate_bn)
        self.conv2 = _conv(planes, planes, 3, stride)
        self.bn2 = PassBatchNorm(planes, separate_bn)
        self.conv3 = _conv(planes, out_channels, 1)
        self.bn3 = PassBatchNorm(out_channels, separate_bn)
        self.shortcut = _shortcut(in_channels, out_channels, stride)
        self.gate = ChannelGate(in_channels, planes, tau, bias=gate_bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, sub: SubNet) -> torch.Tensor:
        out = F.relu(self.bn1(run_conv(self.conv1, x, sub), sub))
        if mask is not None:
            out = out * mask[:, :, None, None].to(out.dtype)
        out = F.relu(self.bn2(run_conv(self.conv2, out, sub), sub))
        out = self.bn3(run_conv(self.conv3, out, sub), sub)
        return F.relu(out + _identity(self, x, sub))

    def macs(self, in_hw: int, out_hw: int, sub: SubNet = DENSE) -> tuple[int, int]:
        cin, mid, cout = sub.channels(self.in_channels), sub.channels(self.mid_channels), sub.channels(self.out_channels)
        per_channel = in_hw * cin + 9 * out_hw * mid
        fixed = out_hw * mid * cout
        if self.shortcut is not None:
            fixed += out_hw * cin * cout
        return per_channel, fixed


class GatedResNet(GatedBackbone):
    """ResNet encoder (no classifier) with a dense and a gated pass over the same weights."""

    def __init__(
        self,
        block: type[GatedBasicBlock] | type[GatedBottleneck],
        layers: tuple[int, int, int, int],
        stem: str = "cifar",
        width: int = 64,
        separate_bn: bool = True,
        tau: float = 2 / 3,
        stem_padding: int = 1,
        gate_bias: bool = True,
    ):
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
        self.stem_kind, self.width, self.separate_bn = stem, width, separate_bn
        if stem == "cifar":  # 3x3 stride 1, no max-pool: 32x32 maps at padding 1, 34x34 at the reference's 2
            self.stem_conv = nn.Conv2d(3, width, 3, padding=stem_padding, bias=False)
            self.stem_pool = None
        else:
            self.stem_conv = _conv(3, width, 7, stride=2)
            self.stem_pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.stem_bn = SharedBatchNorm(width)
        self.widths: tuple[float, ...] = ()  # slimmable widths below 1 that have their BN (add_widths)
        blocks, channels = [], width
        for stage, depth in enumerate(layers):
            planes = width * 2**stage
            for i in range(depth):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(block(channels, planes, stride, separate_bn, tau, gate_bias))
                channels = planes * block.expansion
        self.blocks = nn.ModuleList(blocks)
        self.feature_dim = channels
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        avoid_onednn_1x1_crash(self)  # narrow strided shortcuts (width < 16) crash oneDNN's weight gradient on AVX512 CPUs

    def torchvision_names(self) -> dict[str, str]:
        """gatedssl key -> torchvision key of every tensor the dense pass uses (models/torchvision_names.py)."""
        from .torchvision_names import torchvision_names

        return torchvision_names(self)

    def torchvision_problem(self) -> str | None:
        """Why torchvision's constructors cannot build this network (None when they can)."""
        from .torchvision_names import torchvision_arch

        if self.width != 64:
            return f"torchvision's ResNets have width 64 and this run has width {self.width}"
        if torchvision_arch(self) is None:
            return f"torchvision has no ResNet with these blocks per stage ({len(self.blocks)} blocks)"
        return None

    def torchvision_construction(self) -> dict:
        from .torchvision_names import torchvision_construction

        return {**torchvision_construction(self), "family": "resnet"}

    def stem(self, x: torch.Tensor, sub: SubNet) -> tuple[torch.Tensor, int, int]:
        out = F.relu(self.stem_bn(run_conv(self.stem_conv, x, sub), sub))
        macs = conv_macs(self.stem_conv, x.shape[1], out)
        full = macs // out.shape[1] * self.stem_conv.out_channels
        if self.stem_pool is not None:
            out = self.stem_pool(out)
        return out, macs, full


def _register(name: str, block, layers):
    def factory(
        stem: str = "cifar", width: int = 64, separate_bn: bool = True, tau: float = 2 / 3, stem_padding: int = 1, gate_bias: bool = True
    ) -> GatedResNet:
        return GatedResNet(
            block, layers, stem=stem, width=width, separate_bn=separate_bn, tau=tau, stem_padding=stem_padding, gate_bias=gate_bias
        )

    factory.__name__ = f"gated_{name}"
    factory.__doc__ = f"Gated {name} ({block.__name__}, stages {layers}); width 64 is the standard network."
    return register_arch(name, factory)


gated_resnet18 = _register("resnet18", GatedBasicBlock, (2, 2, 2, 2))
gated_resnet34 = _register("resnet34", GatedBasicBlock, (3, 4, 6, 3))
gated_resnet50 = _register("resnet50", GatedBottleneck, (3, 4, 6, 3))
