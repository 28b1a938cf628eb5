"""ResNets whose residual blocks carry a channel gate, and one BN set per sub-network.

One network object serves every sub-network (`subnets.py`): `net(x)` or `net(x, "dense")` is the
dense encoder, `net(x, "gated")` the gated sub-network (same conv weights, per-input channel
masks), `net(x, "width0.5")` a slimmable width (the first half of every conv's channels) once
`add_widths` gave it its BN. Every pass also returns its per-sample MACs, counted from the
channels it actually used, so the budget loss and the reports never need a second bookkeeping
of the architecture.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .gate import ChannelGate
from .onednn import avoid_onednn_1x1_crash, sliced_conv
from .subnets import DENSE, GATED, SubNet, as_subnet

STEMS = ("cifar", "imagenet")


@dataclass
class BackboneOutput:
    features: torch.Tensor  # (N, D) pooled features
    masks: list[torch.Tensor]  # one (N, C_mid) 0/1 mask per gated block; all ones in the dense pass
    macs: torch.Tensor  # (N,) MACs of this pass for each sample (float32; differentiable through masks)
    dense_macs: int  # MACs of the dense pass for one sample at this input size


class PassBatchNorm(nn.Module):
    """BatchNorm with its own statistics and affine parameters per sub-network ("separate BN").

    The gated pass sees switched-off channels, so its activation statistics differ from the
    dense pass; sharing one BN would mix the two distributions. Slimmable widths add a slot
    each (switchable BN). Without `separate`, the gated pass uses the dense slot.
    """

    def __init__(self, channels: int, separate: bool):
        super().__init__()
        self.dense = nn.BatchNorm2d(channels)
        self.gated = nn.BatchNorm2d(channels) if separate else None

    def add_slot(self, slot: str, channels: int) -> None:
        self.add_module(slot, nn.BatchNorm2d(channels))

    def slot(self, sub: SubNet) -> nn.BatchNorm2d:
        """The BN this sub-network uses (its own; the dense set when it has none)."""
        return self._modules.get(sub.bn_slot) or self.dense

    def forward(self, x: torch.Tensor, sub: SubNet) -> torch.Tensor:
        return self.slot(sub)(x)


class SharedBatchNorm(nn.BatchNorm2d):
    """The stem's and shortcuts' BN: one set shared by the dense and the gated pass (their channels
    are never gated), plus a slot per slimmable width. Its own parameters are the dense slot, so
    its state-dict keys are those of a plain BatchNorm2d."""

    def add_slot(self, slot: str, channels: int) -> None:
        self.add_module(slot, nn.BatchNorm2d(channels))

    def slot(self, sub: SubNet) -> nn.BatchNorm2d:
        """The BN this sub-network uses: a width's own slot, else this shared (dense) set."""
        return self._modules.get(sub.bn_slot) or self

    def forward(self, x: torch.Tensor, sub: SubNet = DENSE) -> torch.Tensor:
        slot = self.slot(sub)
        return super().forward(x) if slot is self else slot(x)


def _run(conv: nn.Conv2d, x: torch.Tensor, sub: SubNet) -> torch.Tensor:
    """conv on x; a slimmable width runs the slice of it that its channels use."""
    return conv(x) if sub.kind != "width" else sliced_conv(conv, x, sub.channels(conv.out_channels))


def _conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(_conv(cin, cout, 1, stride), SharedBatchNorm(cout))


def _identity(block, x: torch.Tensor, sub: SubNet) -> torch.Tensor:
    return x if block.shortcut is None else block.shortcut[1](_run(block.shortcut[0], x, sub), sub)


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
        out = F.relu(self.bn1(_run(self.conv1, x, sub), sub))
        if mask is not None:
            out = out * mask[:, :, None, None].to(out.dtype)
        out = self.bn2(_run(self.conv2, out, sub), sub)
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
        out = F.relu(self.bn1(_run(self.conv1, x, sub), sub))
        if mask is not None:
            out = out * mask[:, :, None, None].to(out.dtype)
        out = F.relu(self.bn2(_run(self.conv2, out, sub), sub))
        out = self.bn3(_run(self.conv3, out, sub), sub)
        return F.relu(out + _identity(self, x, sub))

    def macs(self, in_hw: int, out_hw: int, sub: SubNet = DENSE) -> tuple[int, int]:
        cin, mid, cout = sub.channels(self.in_channels), sub.channels(self.mid_channels), sub.channels(self.out_channels)
        per_channel = in_hw * cin + 9 * out_hw * mid
        fixed = out_hw * mid * cout
        if self.shortcut is not None:
            fixed += out_hw * cin * cout
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

    @property
    def gated_channels(self) -> list[int]:
        return [b.mid_channels for b in self.blocks]

    @property
    def gates(self) -> list[ChannelGate]:
        return [b.gate for b in self.blocks]

    def dense_norms(self) -> list[nn.Module]:
        """Every BN the dense pass uses: the stem's and the shortcuts' (shared with the gated pass) and each block's dense set."""
        norms: list[nn.Module] = [self.stem_bn]
        for block in self.blocks:
            norms += [bn.dense for bn in block.children() if isinstance(bn, PassBatchNorm)]
            if block.shortcut is not None:
                norms.append(block.shortcut[1])
        return norms

    def freeze_dense(self) -> None:
        """Post-hoc gating: only the gates and the gated BN set learn; the dense weights, and the
        statistics of every BN the dense pass uses, stay as they are (those BNs stay in eval mode)."""
        self.requires_grad_(False)
        for block in self.blocks:
            block.gate.requires_grad_(True)
            for bn in block.children():
                if isinstance(bn, PassBatchNorm) and bn.gated is not None:
                    bn.gated.requires_grad_(True)
        self.dense_frozen = True
        self.train(self.training)

    def copy_dense_bn_to_gated(self) -> None:
        """Start the gated BN set as the dense one (a B1 run's gated set never trained; a torchvision state dict has none)."""
        with torch.no_grad():
            for block in self.blocks:
                for bn in block.children():
                    if isinstance(bn, PassBatchNorm) and bn.gated is not None:
                        bn.gated.load_state_dict(bn.dense.state_dict())

    def train(self, mode: bool = True):
        super().train(mode)
        if getattr(self, "dense_frozen", False):
            for norm in self.dense_norms():
                norm.train(False)
        return self

    def add_widths(self, widths) -> None:
        """Give each slimmable width below 1 its own BN set (switchable BN); width 1 is the dense network."""
        for w in sorted({float(w) for w in widths if w < 1} - set(self.widths), reverse=True):
            sub = as_subnet(f"width{w:g}")
            for m in list(self.modules()):
                if isinstance(m, (PassBatchNorm, SharedBatchNorm)):
                    full = m.dense.num_features if isinstance(m, PassBatchNorm) else m.num_features
                    m.add_slot(sub.bn_slot, sub.channels(full))
            self.widths = (*self.widths, w)
        for m in self.modules():  # new slots follow the network's device, dtype and training mode
            for slot in m.children() if isinstance(m, (PassBatchNorm, SharedBatchNorm)) else ():
                slot.to(self.stem_conv.weight.device).train(self.training)

    def forward(
        self, x: torch.Tensor, subnet: str | SubNet = DENSE, masks: list[torch.Tensor] | None = None, *, gated: bool | None = None
    ) -> BackboneOutput:
        """Run one sub-network. masks: run the gated pass with these (one (N, C_mid) 0/1 tensor per block)
        instead of the gates'. gated=True/False is the older spelling of subnet "gated"/"dense"."""
        sub = (GATED if gated else DENSE) if gated is not None else as_subnet(subnet)
        if sub.kind == "width" and sub.width not in self.widths:
            raise ValueError(
                f"{sub.name}: this network has no BN for that width (it has {', '.join(f'width{w:g}' for w in self.widths) or 'none'})"
            )
        n = x.shape[0]
        out = F.relu(self.stem_bn(_run(self.stem_conv, x, sub), sub))
        k = self.stem_conv.kernel_size[0]
        stem_macs = out.shape[-2] * out.shape[-1] * self.stem_conv.in_channels * out.shape[1] * k * k
        full_stem = stem_macs // out.shape[1] * self.stem_conv.out_channels
        if self.stem_pool is not None:
            out = self.stem_pool(out)
        fixed, dense = stem_macs, full_stem
        used, per_channel = [], []
        for i, block in enumerate(self.blocks):
            mask = (block.gate(out) if masks is None else masks[i].float()) if sub.gated else None
            in_hw = out.shape[-2] * out.shape[-1]
            out = block(out, mask, sub)
            out_hw = out.shape[-2] * out.shape[-1]
            pc, fx = block.macs(in_hw, out_hw, sub)
            full_pc, full_fx = block.macs(in_hw, out_hw)
            fixed += fx + (block.gate.macs if sub.gated else 0)
            dense += full_fx + full_pc * block.mid_channels
            per_channel.append(pc)
            if mask is None and sub.kind == "width":  # the first k channels, the same for every input
                mask = out.new_zeros(n, block.mid_channels, dtype=torch.float32)
                mask[:, : sub.channels(block.mid_channels)] = 1
            used.append(mask if mask is not None else out.new_ones(n, block.mid_channels, dtype=torch.float32))
        features = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        if sub.gated:
            # Python-int costs times mask sums: no host-to-device copy of a cost vector each step
            macs = sum(m.sum(1) * pc for m, pc in zip(used, per_channel)) + float(fixed)
        else:
            spent = fixed + sum(pc * sub.channels(b.mid_channels) for pc, b in zip(per_channel, self.blocks))
            macs = torch.full((n,), float(spent), device=x.device)
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
