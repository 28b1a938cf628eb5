"""The dense encoder's state-dict keys under torchvision's ResNet names (conv1, bn1, layerS.B..., downsample).

One mapping serves both directions: `gatedssl export --format torchvision` writes a state dict under
these names, and `--mode posthoc --init-from FILE` reads one (solo-learn's and lightly's ResNet
backbones use the same names once their prefix is stripped: `backbone.` in solo-learn, the
`backbone.` or `encoder.` module name in a lightly model)."""

from __future__ import annotations

from .resnet import GatedResNet, PassBatchNorm


def torchvision_names(backbone: GatedResNet) -> dict[str, str]:
    """gatedssl key -> torchvision key, for every parameter and buffer the dense pass uses (no gates, no gated BN)."""
    names: dict[str, str] = {}

    def put(ours: str, theirs: str, module) -> None:
        for key in module.state_dict():
            if "." not in key:  # a shared BN's own (dense) set, not its slimmable widths' slots
                names[f"{ours}.{key}"] = f"{theirs}.{key}"

    put("stem_conv", "conv1", backbone.stem_conv)
    put("stem_bn", "bn1", backbone.stem_bn)
    stage, index, planes = 0, -1, backbone.blocks[0].mid_channels
    for i, block in enumerate(backbone.blocks):
        if block.mid_channels != planes:
            stage, index, planes = stage + 1, -1, block.mid_channels
        index += 1
        prefix = f"layer{stage + 1}.{index}"
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
