"""What every gated backbone is: ungated stem layers, a list of gated units, ungated head layers.

A backbone family (resnet.py, mobilenet.py) declares only its pieces; the passes, the MACs, the BN
sets of every sub-network and post-hoc freezing live here once. A gated unit is a module with

    gate            a ChannelGate reading the unit's input and switching its `mid_channels`
    in_channels, mid_channels, out_channels
    forward(x, mask, sub)        the unit with hidden channels outside `mask` (N, mid) set to zero
    macs(in_hw, out_hw, sub)     (MACs per open hidden channel, MACs that do not depend on the mask), per sample
    folded(sub)                  its convolutions with the sub-network's BN folded in (export/plain.py slices them)

The hidden channels a unit switches never reach the residual stream (a ResNet block's middle
channels, an inverted residual's expanded ones), so a closed channel is one that is not computed.
A family registers its archs with `register_arch`; a new MobileNet-like one is a `register_mobilenet` declaration.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .gate import ChannelGate
from .onednn import sliced_conv
from .subnets import DENSE, GATED, SubNet, as_subnet


@dataclass
class BackboneOutput:
    features: torch.Tensor  # (N, D) pooled features
    masks: list[torch.Tensor]  # one (N, C_mid) 0/1 mask per gated unit; all ones in the dense pass
    macs: torch.Tensor  # (N,) MACs of this pass for each sample (float32; differentiable through masks)
    dense_macs: int  # MACs of the dense pass for one sample at this input size
    costs: ChannelCosts | None = None  # how those MACs split into per-channel and fixed (Python ints)


@dataclass(frozen=True)
class ChannelCosts:
    """A sub-network's per-sample MACs at one input size, as `fixed + sum(per_channel[i] * open channels of unit i)`
    (gates not included): a static network's MACs are arithmetic on these, for any channel counts."""

    fixed: int
    per_channel: tuple[int, ...]

    def macs(self, counts: list[int]) -> int:
        return self.fixed + sum(pc * k for pc, k in zip(self.per_channel, counts, strict=True))


def _batch_norm(channels: int, eps: float, momentum: float) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=eps, momentum=momentum)


class PassBatchNorm(nn.Module):
    """BatchNorm with its own statistics and affine parameters per sub-network ("separate BN").

    The gated pass sees switched-off channels, so its activation statistics differ from the
    dense pass; sharing one BN would mix the two distributions. Slimmable widths add a slot
    each (switchable BN). Without `separate`, the gated pass uses the dense slot.
    """

    def __init__(self, channels: int, separate: bool, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.dense = _batch_norm(channels, eps, momentum)
        self.gated = _batch_norm(channels, eps, momentum) if separate else None

    def add_slot(self, slot: str, channels: int) -> None:
        self.add_module(slot, _batch_norm(channels, self.dense.eps, self.dense.momentum))

    def slot(self, sub: SubNet) -> nn.BatchNorm2d:
        """The BN this sub-network uses (its own; the dense set when it has none)."""
        return self._modules.get(sub.bn_slot) or self.dense

    def forward(self, x: torch.Tensor, sub: SubNet) -> torch.Tensor:
        return self.slot(sub)(x)


class SharedBatchNorm(nn.BatchNorm2d):
    """The BN of ungated channels (stems, shortcuts, projections into the residual stream): one set shared
    by the dense and the gated pass, plus a slot per slimmable width. Its own parameters are the dense
    slot, so its state-dict keys are those of a plain BatchNorm2d."""

    def add_slot(self, slot: str, channels: int) -> None:
        self.add_module(slot, nn.BatchNorm2d(channels, eps=self.eps, momentum=self.momentum))

    def slot(self, sub: SubNet) -> nn.BatchNorm2d:
        """The BN this sub-network uses: a width's own slot, else this shared (dense) set."""
        return self._modules.get(sub.bn_slot) or self

    def forward(self, x: torch.Tensor, sub: SubNet = DENSE) -> torch.Tensor:
        slot = self.slot(sub)
        return super().forward(x) if slot is self else slot(x)


def run_conv(conv: nn.Conv2d, x: torch.Tensor, sub: SubNet) -> torch.Tensor:
    """conv on x; a slimmable width runs the slice of it that its channels use."""
    return conv(x) if sub.kind != "width" else sliced_conv(conv, x, sub.channels(conv.out_channels))


def conv_macs(conv: nn.Conv2d, in_channels: int, out: torch.Tensor) -> int:
    """Per-sample MACs of an ungrouped `conv` (a stem's, a last 1x1's) run on `in_channels` channels into `out`.
    Units count their own convolutions, depthwise ones included, per open channel (`macs`)."""
    assert conv.groups == 1, "conv_macs counts ungrouped convolutions"
    return out.shape[-2] * out.shape[-1] * conv.kernel_size[0] * conv.kernel_size[1] * in_channels * out.shape[1]


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "relu6": F.relu6,
    "hardswish": F.hardswish,
    "none": lambda x: x,
}


class GatedBackbone(nn.Module):
    """The passes every backbone shares. Subclasses set `blocks` (the gated units), `feature_dim`,
    `widths = ()`, and define `stem(x, sub)` and, if they have one, `head(x, sub)`: each returns
    (output, MACs of `sub`, MACs of the dense network) per sample."""

    blocks: nn.ModuleList
    feature_dim: int
    widths: tuple[float, ...]

    def head(self, x: torch.Tensor, sub: SubNet) -> tuple[torch.Tensor, int, int]:
        return x, 0, 0

    @property
    def gated_channels(self) -> list[int]:
        return [b.mid_channels for b in self.blocks]

    @property
    def gates(self) -> list[ChannelGate]:
        return [b.gate for b in self.blocks]

    def _pass_norms(self) -> list[PassBatchNorm]:
        return [m for m in self.modules() if isinstance(m, PassBatchNorm)]

    def dense_norms(self) -> list[nn.Module]:
        """Every BN the dense pass uses: the shared ones (stem, shortcuts, ...) and each unit's dense set."""
        return [m for m in self.modules() if isinstance(m, SharedBatchNorm)] + [bn.dense for bn in self._pass_norms()]

    def freeze_dense(self) -> None:
        """Post-hoc gating: only the gates and the gated BN set learn; the dense weights, and the
        statistics of every BN the dense pass uses, stay as they are (those BNs stay in eval mode)."""
        self.requires_grad_(False)
        for gate in self.gates:
            gate.requires_grad_(True)
        for bn in self._pass_norms():
            if bn.gated is not None:
                bn.gated.requires_grad_(True)
        self.dense_frozen = True
        self.train(self.training)

    def copy_dense_bn_to_gated(self) -> None:
        """Start the gated BN set as the dense one (a B1 run's gated set never trained; a torchvision state dict has none)."""
        with torch.no_grad():
            for bn in self._pass_norms():
                if bn.gated is not None:
                    bn.gated.load_state_dict(bn.dense.state_dict())

    def train(self, mode: bool = True):
        super().train(mode)
        if getattr(self, "dense_frozen", False):
            for norm in self.dense_norms():
                norm.train(False)
        return self

    def add_widths(self, widths) -> None:
        """Give each slimmable width below 1 its own BN set (switchable BN); width 1 is the dense network."""
        device = next(self.parameters()).device
        for w in sorted({float(w) for w in widths if w < 1} - set(self.widths), reverse=True):
            sub = as_subnet(f"width{w:g}")
            for m in list(self.modules()):
                if isinstance(m, (PassBatchNorm, SharedBatchNorm)):
                    full = m.dense.num_features if isinstance(m, PassBatchNorm) else m.num_features
                    m.add_slot(sub.bn_slot, sub.channels(full))
            self.widths = (*self.widths, w)
        for m in self.modules():  # new slots follow the network's device, dtype and training mode
            for slot in m.children() if isinstance(m, (PassBatchNorm, SharedBatchNorm)) else ():
                slot.to(device).train(self.training)

    def forward(
        self, x: torch.Tensor, subnet: str | SubNet = DENSE, masks: list[torch.Tensor] | None = None, *, gated: bool | None = None
    ) -> BackboneOutput:
        """Run one sub-network. masks: run the gated pass with these (one (N, C_mid) 0/1 tensor per unit)
        instead of the gates'. gated=True/False is the older spelling of subnet "gated"/"dense"."""
        sub = (GATED if gated else DENSE) if gated is not None else as_subnet(subnet)
        if sub.kind == "width" and sub.width not in self.widths:
            raise ValueError(
                f"{sub.name}: this network has no BN for that width (it has {', '.join(f'width{w:g}' for w in self.widths) or 'none'})"
            )
        n = x.shape[0]
        out, fixed, dense = self.stem(x, sub)
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
        gate_macs = sum(b.gate.macs for b in self.blocks) if sub.gated else 0
        out, head_macs, head_dense = self.head(out, sub)
        fixed, dense = fixed + head_macs, dense + head_dense
        features = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        if sub.gated:
            # Python-int costs times mask sums: no host-to-device copy of a cost vector each step
            macs = sum(m.sum(1) * pc for m, pc in zip(used, per_channel)) + float(fixed)
        else:
            spent = fixed + sum(pc * sub.channels(b.mid_channels) for pc, b in zip(per_channel, self.blocks))
            macs = torch.full((n,), float(spent), device=x.device)
        return BackboneOutput(features, used, macs, dense, ChannelCosts(fixed - gate_macs, tuple(per_channel)))

    @torch.no_grad()
    def channel_costs(self, size: int, subnet: str | SubNet = DENSE) -> ChannelCosts:
        """The MACs split of `subnet` on size x size images (one pass of a blank image)."""
        device = next(self.parameters()).device
        was = self.training
        self.eval()
        costs = self(torch.zeros(1, 3, size, size, device=device), subnet).costs
        self.train(was)
        assert costs is not None
        return costs


ARCHS: dict[str, Callable[..., GatedBackbone]] = {}


def register_arch(name: str, factory: Callable[..., GatedBackbone]) -> Callable[..., GatedBackbone]:
    """Make `--arch name` build `factory(stem=..., width=..., separate_bn=..., tau=..., stem_padding=..., gate_bias=...)`."""
    ARCHS[name] = factory
    return factory


def create_backbone(arch: str, **kwargs) -> GatedBackbone:
    from . import mobilenet, resnet  # noqa: F401  (each registers its archs)

    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose from {sorted(ARCHS)}")
    return ARCHS[arch](**kwargs)
