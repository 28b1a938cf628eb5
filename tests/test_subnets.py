"""Named sub-networks of one backbone: slimmable widths (sliced channels, switchable BN), their MACs and export."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from gatedssl.export.plain import PlainResNet
from gatedssl.models import create_backbone
from gatedssl.models.subnets import as_subnet, slim_channels
from gatedssl.names import parse_subnet


def _trained_bn(net: torch.nn.Module) -> None:
    """Give every BN (all slots) distinct statistics and affine values, so a wrong slot shows."""
    g = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.1)


def _slim(arch="resnet18", width=8, widths=(0.75, 0.5, 0.25), stem="cifar"):
    torch.manual_seed(0)
    net = create_backbone(arch, width=width, stem=stem)
    net.add_widths(widths)
    _trained_bn(net)
    return net.eval()


def test_width_one_is_the_dense_network():
    net = _slim()
    x = torch.randn(4, 3, 32, 32)
    dense, full = net(x, "dense"), net(x, "width1.0")
    assert torch.equal(dense.features, full.features)
    assert torch.equal(dense.macs, full.macs)
    net.train()
    torch.manual_seed(3)
    a = net(x, "dense").features
    torch.manual_seed(3)
    assert torch.equal(a, net(x, "width1").features), "width 1 uses the dense BN set in training too"


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_a_width_equals_a_fresh_narrow_network_with_the_sliced_weights(arch):
    net = _slim(arch)
    fresh = create_backbone(arch, width=4).eval()  # width 0.5 of 8: every layer's channels halve exactly
    full_state = net.state_dict()
    slot = as_subnet("width0.5").bn_slot
    state = {}
    for key, target in fresh.state_dict().items():
        if ".gate." in key or ".gated." in key:
            state[key] = target
            continue
        source = key.replace(".dense.", f".{slot}.")
        if key.startswith("stem_bn.") or ".shortcut.1." in key:
            prefix, leaf = key.rsplit(".", 1)
            source = f"{prefix}.{slot}.{leaf}"
        tensor = full_state[source]
        state[key] = tensor[tuple(slice(0, n) for n in target.shape)] if tensor.dim() else tensor
    fresh.load_state_dict(state)
    x = torch.randn(3, 3, 32, 32)
    got, want = net(x, "width0.5"), fresh(x, "dense")
    assert got.features.shape == (3, slim_channels(net.feature_dim, 0.5))
    torch.testing.assert_close(got.features, want.features, rtol=1e-5, atol=1e-5)
    assert got.macs[0].item() == want.macs[0].item()


@pytest.mark.parametrize("arch,stem,size", [("resnet18", "cifar", 32), ("resnet50", "cifar", 32), ("resnet18", "imagenet", 64)])
def test_macs_per_width_match_the_flop_counter(arch, stem, size):
    net = _slim(arch, width=16, widths=(0.75, 0.5, 0.3, 0.25), stem=stem)
    x = torch.randn(2, 3, size, size)
    for name in ("dense", "width0.75", "width0.5", "width0.3", "width0.25"):
        with FlopCounterMode(display=False) as counter:
            out = net(x, name)
        assert out.macs[0].item() == counter.get_total_flops() / 2 / len(x), name  # 2 FLOPs per multiply-accumulate
        assert out.dense_macs == net(x).macs[0].item()


def test_a_width_exports_as_a_plain_smaller_resnet():
    net = _slim()
    x = torch.randn(3, 3, 32, 32)
    for name in ("width0.75", "width0.25"):
        plain = PlainResNet.from_gated(net, name)
        out = net(x, name)
        torch.testing.assert_close(plain(x), out.features, rtol=1e-4, atol=1e-5)
        assert plain.macs(32) == out.macs[0].item()
        assert plain.spec["stem"][:2] == [3, slim_channels(8, as_subnet(name).width)]


def test_widths_add_bn_slots_and_leave_the_dense_and_gated_keys_as_they_were():
    plain = create_backbone("resnet18", width=8)
    slim = _slim()
    old, new = set(plain.state_dict()), set(slim.state_dict())
    assert old <= new
    added = new - old
    assert added and all(".width0_75." in k or ".width0_5." in k or ".width0_25." in k for k in added)
    assert {"stem_bn.width0_5.weight", "blocks.2.shortcut.1.width0_25.running_var", "blocks.0.bn1.width0_75.bias"} <= added


def test_a_width_the_network_was_not_given_is_an_error():
    net = create_backbone("resnet18", width=8)
    with pytest.raises(ValueError, match="no BN for that width"):
        net(torch.randn(2, 3, 32, 32), "width0.5")


def test_widths_narrow_enough_to_hit_the_onednn_bug_train():
    """width 8 at 0.25: 2-channel strided 1x1 shortcuts, the shape whose oneDNN weight gradient crashed (models/onednn.py)."""
    net = _slim().train()
    x = torch.randn(5, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    net = net.to(memory_format=torch.channels_last)
    out = net(x, "width0.25")
    out.features.sum().backward()
    shortcut = net.blocks[2].shortcut[0]
    assert shortcut.weight.grad[:4, :2].abs().sum() > 0 and shortcut.weight.grad[4:].abs().sum() == 0


@pytest.mark.parametrize("name", ["width0", "width1.5", "widthx", "wide", "width-0.5"])
def test_bad_subnet_names_are_refused(name):
    with pytest.raises(ValueError):
        parse_subnet(name)
