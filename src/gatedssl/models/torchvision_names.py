"""The dense encoder's state-dict keys under torchvision's ResNet names (conv1, bn1, layerS.B..., downsample).

One mapping serves both directions: `gatedssl export --format torchvision` writes a state dict under
these names, and `--mode posthoc --init-from FILE` reads one. Other libraries' ResNets reach these
names through `canonical_resnet`: lightly's `nn.Sequential(*list(resnet.children())[:-1])` numbers
the children (0 conv1, 1 bn1, 4-7 layer1-4) and lightly's own CIFAR ResNet calls the downsample
`shortcut`; solo-learn uses torchvision's names behind `backbone.` (init_from strips the prefix).
The construction a state dict cannot hold (stem padding, max-pool) goes in a sidecar JSON beside it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ..errors import UserError
from .resnet import GatedBottleneck, GatedResNet, PassBatchNorm

# blocks per stage and bottleneck or not -> torchvision's constructor (the ones gatedssl builds are resnet18/34/50)
TORCHVISION_ARCHS = {
    ((2, 2, 2, 2), False): "resnet18",
    ((3, 4, 6, 3), False): "resnet34",
    ((3, 4, 6, 3), True): "resnet50",
    ((3, 4, 23, 3), True): "resnet101",
    ((3, 8, 36, 3), True): "resnet152",
}


def torchvision_names(backbone: GatedResNet) -> dict[str, str]:
    """gatedssl key -> torchvision key, for every parameter and buffer the dense pass uses (no gates, no gated BN)."""
    names: dict[str, str] = {}

    def put(ours: str, theirs: str, module) -> None:
        for key in module.state_dict():
            if "." not in key:  # a shared BN's own (dense) set, not its slimmable widths' slots
                names[f"{ours}.{key}"] = f"{theirs}.{key}"

    put("stem_conv", "conv1", backbone.stem_conv)
    put("stem_bn", "bn1", backbone.stem_bn)
    for i, (stage, index) in enumerate(_stage_positions(backbone)):
        block, prefix = backbone.blocks[i], f"layer{stage + 1}.{index}"
        for conv in ("conv1", "conv2", "conv3"):
            if hasattr(block, conv):
                put(f"blocks.{i}.{conv}", f"{prefix}.{conv}", getattr(block, conv))
                bn = getattr(block, f"bn{conv[-1]}")
                assert isinstance(bn, PassBatchNorm)
                put(f"blocks.{i}.bn{conv[-1]}.dense", f"{prefix}.bn{conv[-1]}", bn.dense)
        if block.shortcut is not None:
            put(f"blocks.{i}.shortcut.0", f"{prefix}.downsample.0", block.shortcut[0])
            put(f"blocks.{i}.shortcut.1", f"{prefix}.downsample.1", block.shortcut[1])
    return names


def _stage_positions(backbone: GatedResNet) -> list[tuple[int, int]]:
    """(stage, index in stage) of each block: a new stage starts where the mid channels change."""
    positions, stage, index, planes = [], 0, -1, backbone.blocks[0].mid_channels
    for block in backbone.blocks:
        if block.mid_channels != planes:
            stage, index, planes = stage + 1, -1, block.mid_channels
        index += 1
        positions.append((stage, index))
    return positions


def torchvision_arch(backbone: GatedResNet) -> str | None:
    """The torchvision constructor with this backbone's blocks (resnet18, ...), None if torchvision has none."""
    counts = [0, 0, 0, 0]
    for stage, _ in _stage_positions(backbone):
        if stage > 3:
            return None
        counts[stage] += 1
    return TORCHVISION_ARCHS.get((tuple(counts), isinstance(backbone.blocks[0], GatedBottleneck)))


def canonical_resnet(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """A ResNet backbone's tensors under torchvision's names, or None when `state` is not one.

    Raises UserError (to be prefixed with the file's name) for a ResNet gatedssl cannot reproduce.

    Takes torchvision's names (any `fc.*` is dropped), a `nn.Sequential` of a ResNet's children
    (renamed by structure, since the indices depend on which children were kept: the first conv is
    conv1, the BN after it bn1, the next four groups of blocks layer1-4), and `shortcut` for
    `downsample` (lightly's CIFAR ResNet).
    """
    if "conv1.weight" not in state:
        state = _from_sequential(state)
        if state is None:
            return None
    out = {}
    for key, value in state.items():
        if key.split(".")[0] in ("fc", "linear"):  # a classifier: not part of the encoder
            continue
        out[re.sub(r"^(layer\d\.\d+)\.shortcut\.", r"\1.downsample.", key)] = value
    return out


def _from_sequential(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    groups: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if not head.isdigit() or not rest:
            return None
        groups.setdefault(int(head), {})[rest] = value
    kinds = []
    for index in sorted(groups):
        keys = groups[index]
        if set(keys) == {"weight"} and keys["weight"].dim() == 4:
            kinds.append("conv")
        elif "running_mean" in keys:
            kinds.append("bn")
        elif all(k.partition(".")[0].isdigit() for k in keys):
            kinds.append("stage")
        elif set(keys) <= {"weight", "bias"} and keys["weight"].dim() == 2:
            kinds.append("fc")
        else:
            return None
    if kinds[:6] != ["conv", "bn", "stage", "stage", "stage", "stage"] or kinds[6:] not in ([], ["fc"]):
        return None
    indices = sorted(groups)
    if indices[2] == indices[1] + 1:  # nothing between bn1 and layer1, so no ReLU module: the stem had none
        raise UserError(
            f"its Sequential backbone has layer1 right after bn1 (children {indices[1]} and {indices[2]}), so no ReLU after the stem "
            f"(lightly's ResNetGenerator applies F.relu in its forward, which nn.Sequential(*resnet.children()) drops); "
            f"gatedssl's stem has one, so the dense features would not be this model's; start from a torchvision ResNet's children"
        )
    names = ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"]
    return {f"{name}.{key}": value for name, index in zip(names, indices) for key, value in groups[index].items()}


def describe_resnet(state: dict[str, torch.Tensor]) -> dict:
    """What a torchvision-named ResNet state dict holds: arch (or its blocks per stage), width and stem."""
    counts = [len({k.split(".")[1] for k in state if k.startswith(f"layer{s}.") and k.endswith(".conv1.weight")}) for s in (1, 2, 3, 4)]
    bottleneck = any(".conv3." in k for k in state)
    kernel = state["conv1.weight"].shape[-1]
    return {
        "arch": TORCHVISION_ARCHS.get(
            (tuple(counts), bottleneck), f"ResNet with {counts} {'bottleneck' if bottleneck else 'basic'} blocks"
        ),
        "width": state["conv1.weight"].shape[0],
        "stem": {3: "cifar", 7: "imagenet"}.get(kernel, f"{kernel}x{kernel}"),
    }


SIDECAR_FORMAT = "gatedssl-torchvision/1"


def sidecar_path(weights) -> Path:
    """The construction file written beside a torchvision export: resnet18.pth -> resnet18.json."""
    return Path(weights).with_suffix(".json")


def torchvision_construction(backbone: GatedResNet) -> dict:
    """How to build the torchvision model these weights fit: a state dict cannot say it (padding is no tensor).

    torchvision's default stem is the imagenet one (7x7/2, padding 3, max-pool); the CIFAR stem
    replaces conv1 by a 3x3 stride-1 conv (padding 1, or 2 in the reference recipe) and drops the max-pool.
    """
    conv = backbone.stem_conv
    return {
        "format": SIDECAR_FORMAT,
        "arch": torchvision_arch(backbone),
        "conv1": {"kernel_size": conv.kernel_size[0], "stride": conv.stride[0], "padding": conv.padding[0]},
        "maxpool": backbone.stem_pool is not None,
        "fc": "Identity",
        "feature_dim": backbone.feature_dim,
    }


def read_construction(sidecar) -> dict | None:
    """A torchvision export's construction file, None if absent or something else."""
    try:
        construction = json.loads(Path(sidecar).read_text())
    except (OSError, ValueError):
        return None
    return construction if isinstance(construction, dict) and construction.get("format") == SIDECAR_FORMAT else None
