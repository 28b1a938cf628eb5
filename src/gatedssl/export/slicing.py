"""BN folding and channel slicing: the one piece of code that makes sub-networks physically smaller.

A block's middle channels are conv1's outputs and conv2's inputs. Keeping a subset `idx` of them
means taking rows `idx` of conv1 (and its folded bias) and columns `idx` of conv2; every other
convolution of the block is unchanged. The static export keeps one subset for all inputs (`take`), and a
width-sliced (slimmable) network keeps the first channels of every conv (`first_channels`). The
skipping executors keep one subset per input (or per batch); they store each sliced weight in the
layout its slices are read fastest from, and take its rows themselves (skipping.py, mobilenet.py).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from ..models.subnets import SubNet, as_subnet


def fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """conv -> BN (eval statistics) as one convolution with a bias: inference pays for no BN."""
    weight, bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
    folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, groups=conv.groups, bias=True)
    folded.weight.data.copy_(weight.detach())
    folded.bias.data.copy_(bias.detach())
    return folded


def first_channels(conv: nn.Conv2d, sub: SubNet, in_channels: int | None = None) -> nn.Conv2d:
    """The convolution a slimmable width runs: its first sub.channels(C) outputs and inputs (`in_channels`: the
    stem keeps its 3 colours), as a smaller conv; the conv itself for every other sub-network."""
    if sub.kind != "width":
        return conv
    cout, cin = sub.channels(conv.out_channels), in_channels or sub.channels(conv.in_channels)
    groups = 1 if conv.groups == 1 else cout  # depthwise: one input channel per output
    small = nn.Conv2d(cin, cout, conv.kernel_size, conv.stride, conv.padding, groups=groups, bias=conv.bias is not None)
    small = small.to(conv.weight.device)
    small.weight.data.copy_(conv.weight.detach()[:cout, : cin // groups])
    if conv.bias is not None:
        small.bias.data.copy_(conv.bias.detach()[:cout])
    return small


def kept_channels_of(backbone, bn: str, keep: list[torch.Tensor] | None) -> tuple[SubNet, list[torch.Tensor]]:
    """The sub-network `bn` names and, per gated unit, the hidden channels a plain network of it keeps (all of the
    sub-network's when `keep` is None)."""
    sub = as_subnet(bn)
    if sub.kind == "width" and sub.width not in backbone.widths:
        raise ValueError(f"{sub.name}: the network has no such width")
    if keep is None:
        return sub, [torch.arange(sub.channels(b.mid_channels)) for b in backbone.blocks]
    return sub, [k.to(torch.long).cpu() for k in keep]


@torch.no_grad()
def copy_conv(target: nn.Conv2d, source: nn.Conv2d, out_idx=None, in_idx=None) -> None:
    """target's weight and bias := source's, restricted to `out_idx` / `in_idx` (a missing bias copies as zeros)."""
    weight, bias = take(source, out_idx, in_idx)
    target.weight.copy_(weight)
    target.bias.copy_(bias if bias is not None else torch.zeros_like(target.bias))


def take(
    conv: nn.Conv2d, out_idx: torch.Tensor | None = None, in_idx: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) of `conv` restricted to output channels `out_idx` and input channels `in_idx`."""
    weight, bias = conv.weight, conv.bias
    if out_idx is not None:
        weight = weight.index_select(0, out_idx)
        bias = None if bias is None else bias.index_select(0, out_idx)
    if in_idx is not None:
        weight = weight.index_select(1, in_idx)
    return weight, bias
