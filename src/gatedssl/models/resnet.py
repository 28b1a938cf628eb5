"""ResNets whose residual blocks carry a channel gate and, optionally, one BN set per pass.

One network object serves both passes: `net(x, gated=False)` is the dense encoder,
`net(x, gated=True)` the gated sub-network (same conv weights, per-input channel masks).
Every pass also returns its per-sample MACs, counted from the masks it actually used, so
the budget loss and the reports never need a second bookkeeping of the architecture.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .gate import ChannelGate
from .onednn import avoid_onednn_1x1_crash

STEMS = ("cifar", "imagenet")


@dataclass
class BackboneOutput:
    features: torch.Tensor  # (N, D) pooled features
    masks: list[torch.Tensor]  # one (N, C_mid) 0/1 mask per gated block; all ones in the dense pass
    macs: torch.Tensor  # (N,) MACs of this pass for each sample (float32; differentiable through masks)
    dense_macs: int  # MACs of the dense pass for one sample at this input size


class PassBatchNorm(nn.Module):
    """BatchNorm with its own statistics and affine parameters per pass ("separate BN").

    The gated pass sees switched-off channels, so its activation statistics differ from the
    dense pass; sharing one BN would mix the two distributions.
    """

    def __init__(self, channels: int, separate: bool):
        super().__init__()
        self.dense = nn.BatchNorm2d(channels)
        self.gated = nn.BatchNorm2d(channels) if separate else None

    def forward(self, x: torch.Tensor, gated: bool) -> torch.Tensor:
        return self.gated(x) if gated and self.gated is not None else self.dense(x)


def _conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(_conv(cin, cout, 1, stride), nn.BatchNorm2d(cout))


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

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, gated: bool) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x), gated))
        if mask is not None:
            out = out * mask[:, :, None, None].to(out.dtype)
        out = self.bn2(self.conv2(out), gated)
        identity = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + identity)

    def macs(self, in_hw: int, out_hw: int) -> tuple[int, int]:
        """(MACs per active middle channel, MACs independent of the mask), per sample."""
        per_channel = 9 * out_hw * (self.in_channels + self.out_channels)
        fixed = 0 if self.shortcut is None else out_hw * self.in_channels * self.out_channels
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

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, gated: bool) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x), gated))
        if mask is not None:
            out = out * mask[:, :, None, None].to(out.dtype)
        out = F.relu(self.bn2(self.conv2(out), gated))
        out = self.bn3(self.conv3(out), gated)
        identity = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + identity)

    def macs(self, in_hw: int, out_hw: int) -> tuple[int, int]:
        per_channel = in_hw * self.in_channels + 9 * out_hw * self.mid_channels
        fixed = out_hw * self.mid_channels * self.out_channels
        if self.shortcut is not None:
            fixed += out_hw * self.in_channels * self.out_channels
        return per_channel, fixed


class GatedResNet(nn.Module):
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
        self.stem_bn = nn.BatchNorm2d(width)
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

    @property
    def gated_channels(self) -> list[int]:
        return [b.mid_channels for b in self.blocks]

    @property
    def gates(self) -> list[ChannelGate]:
        return [b.gate for b in self.blocks]

    def forward(self, x: torch.Tensor, gated: bool = False, masks: list[torch.Tensor] | None = None) -> BackboneOutput:
        """masks: run the gated pass with these (one (N, C_mid) 0/1 tensor per block) instead of the gates'."""
        n = x.shape[0]
        out = F.relu(self.stem_bn(self.stem_conv(x)))
        k = self.stem_conv.kernel_size[0]
        stem_macs = out.shape[-2] * out.shape[-1] * self.stem_conv.in_channels * self.stem_conv.out_channels * k * k
        if self.stem_pool is not None:
            out = self.stem_pool(out)
        fixed = stem_macs
        dense = stem_macs
        used, per_channel = [], []
        for i, block in enumerate(self.blocks):
            mask = (block.gate(out) if masks is None else masks[i].float()) if gated else None
            in_hw = out.shape[-2] * out.shape[-1]
            out = block(out, mask, gated)
            pc, fx = block.macs(in_hw, out.shape[-2] * out.shape[-1])
            fixed += fx + (block.gate.macs if gated else 0)
            dense += fx + pc * block.mid_channels
            per_channel.append(pc)
            used.append(mask if mask is not None else out.new_ones(n, block.mid_channels, dtype=torch.float32))
        features = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        if gated:
            # Python-int costs times mask sums: no host-to-device copy of a cost vector each step
            macs = sum(m.sum(1) * pc for m, pc in zip(used, per_channel)) + float(fixed)
        else:
            macs = torch.full((n,), float(dense), device=x.device)
        return BackboneOutput(features, used, macs, dense)


ARCHS: dict[str, Callable[..., GatedResNet]] = {}


def _register(name: str, block, layers):
    def factory(
        stem: str = "cifar", width: int = 64, separate_bn: bool = True, tau: float = 2 / 3, stem_padding: int = 1, gate_bias: bool = True
    ) -> GatedResNet:
        return GatedResNet(
            block, layers, stem=stem, width=width, separate_bn=separate_bn, tau=tau, stem_padding=stem_padding, gate_bias=gate_bias
        )

    factory.__name__ = f"gated_{name}"
    factory.__doc__ = f"Gated {name} ({block.__name__}, stages {layers}); width 64 is the standard network."
    ARCHS[name] = factory
    return factory


gated_resnet18 = _register("resnet18", GatedBasicBlock, (2, 2, 2, 2))
gated_resnet34 = _register("resnet34", GatedBasicBlock, (3, 4, 6, 3))
gated_resnet50 = _register("resnet50", GatedBottleneck, (3, 4, 6, 3))


def create_backbone(arch: str, **kwargs) -> GatedResNet:
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose from {sorted(ARCHS)}")
    return ARCHS[arch](**kwargs)
