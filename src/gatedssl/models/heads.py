"""Projector and predictor MLPs, the heads each SSL method puts on the backbone."""

from __future__ import annotations

from torch import nn


def mlp(dims: list[int], last_bn: bool = False, last_bias: bool = True) -> nn.Sequential:
    """Linear layers with BN + ReLU between them; optionally an affine-free BN on the output.

    dims = [in, hidden..., out]. Hidden linears have no bias (BN follows them).
    """
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        last = i == len(dims) - 2
        layers.append(nn.Linear(a, b, bias=last_bias and not last_bn if last else False))
        if not last:
            layers += [nn.BatchNorm1d(b), nn.ReLU(inplace=True)]
        elif last_bn:
            layers.append(nn.BatchNorm1d(b, affine=False))
    return nn.Sequential(*layers)
