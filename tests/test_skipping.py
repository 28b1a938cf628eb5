"""Real channel skipping and the plain (BN-folded, sliced) networks against the masked gated pass."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from gatedssl.export.plain import PlainResNet
from gatedssl.export.skipping import SkippingResNet
from gatedssl.export.static import kept_channels
from gatedssl.models import create_backbone

SIZES = {"cifar": 32, "imagenet": 64}


def trained_looking(arch: str, stem: str, seed: int = 0):
    """A random network whose BN sets carry non-trivial statistics and affine parameters, as a trained one does."""
    torch.manual_seed(seed)
    net = create_backbone(arch, stem=stem, width=8).eval()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
    return net


def make_masks(net, n: int, kind: str, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    masks = []
    for c in net.gated_channels:
        if kind == "open":
            m = torch.ones(n, c)
        elif kind == "closed":
            m = torch.zeros(n, c)
        elif kind == "one":  # all closed but one channel, a different one per sample
            m = torch.zeros(n, c)
            m[torch.arange(n), torch.randint(0, c, (n,), generator=g)] = 1
        else:
            m = (torch.rand(n, c, generator=g) < 0.4).float()
        masks.append(m)
    return masks


def close(a, b):
    return torch.allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50"])
@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
def test_skipping_equals_the_masked_pass_under_the_same_masks(arch, stem):
    net = trained_looking(arch, stem)
    x = torch.randn(5, 3, SIZES[stem], SIZES[stem], generator=torch.Generator().manual_seed(1))
    executors = {s: SkippingResNet(net, s) for s in ("union", "group")}
    with torch.no_grad():
        for kind in ("open", "closed", "one", "random"):
            masks = make_masks(net, len(x), kind)
            masked = net(x, gated=True, masks=masks).features
            for strategy, executor in executors.items():
                for rows in (slice(0, 5), slice(2, 3)):  # a mixed batch, and batch 1
                    got, used = executor(x[rows], masks=[m[rows] for m in masks])
                    assert close(got, masked[rows]), (kind, strategy, rows, (got - masked[rows]).abs().max().item())
                    assert all(torch.equal(u, m[rows]) for u, m in zip(used, masks))
            if kind == "closed":  # every block is its shortcut plus a constant: depends on the input only through shortcuts
                assert not torch.allclose(masked[0], masked[1])


@pytest.mark.parametrize("arch, offset", [("resnet18", 0.0), ("resnet50", 0.0), ("resnet18", 0.3)])
def test_skipping_with_its_own_gates_matches_end_to_end(arch, offset):
    net = trained_looking(arch, "cifar")
    for gate in net.gates:  # open about half the channels, with per-input variation
        gate.expand.bias.data.normal_(offset, 0.5)
        gate.offset.fill_(offset)  # a calibrated network: the executor must subtract it too
    x = torch.randn(200, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        masked = net(x, gated=True)
        for strategy in ("union", "group"):
            got, used = SkippingResNet(net, strategy)(x)
            same = torch.stack([(u == m).all(1) for u, m in zip(used, masked.masks)]).all(0)
            assert same.float().mean() >= 0.999
            assert close(got[same], masked.features[same])
    density = torch.cat(masked.masks, 1).mean().item()
    assert 0.2 < density < 0.8, "the masks must vary for this test to mean anything"


def test_plain_dense_equals_the_dense_pass_and_counts_its_macs():
    for arch, stem in [("resnet18", "cifar"), ("resnet50", "imagenet")]:
        net = trained_looking(arch, stem)
        x = torch.randn(3, 3, SIZES[stem], SIZES[stem])
        plain = PlainResNet.from_gated(net, "dense")
        with torch.no_grad():
            dense = net(x)
            assert torch.allclose(plain(x), dense.features, rtol=1e-4, atol=1e-5)
        with FlopCounterMode(display=False) as counter:
            plain(x[:1])
        assert counter.get_total_flops() // 2 == plain.macs(SIZES[stem]) == dense.dense_macs
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())  # folded


def test_static_keep_rate_zero_is_the_gated_pass_with_every_gate_open():
    net = trained_looking("resnet18", "cifar")
    x = torch.randn(4, 3, 32, 32)
    frequency = [torch.rand(c, generator=torch.Generator().manual_seed(c)) for c in net.gated_channels]
    static = PlainResNet.from_gated(net, "gated", keep=kept_channels(frequency, 0.0))
    assert static.mid_channels == net.gated_channels
    with torch.no_grad():
        every_gate_open = net(x, gated=True, masks=make_masks(net, 4, "open")).features
        assert torch.allclose(static(x), every_gate_open, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(static(x), net(x).features, rtol=1e-3, atol=1e-3)  # the gated BN set, not the dense one


def test_static_keep_rate_one_keeps_the_channels_open_for_every_image():
    net = trained_looking("resnet50", "cifar")
    frequency = []
    for i, c in enumerate(net.gated_channels):
        f = torch.rand(c, generator=torch.Generator().manual_seed(i)) * 0.99
        f[i % c] = 1.0  # always open
        if i == 3:
            f[:] = 0.5  # a block no channel of which is always open: its shortcut plus a constant
        frequency.append(f)
    keep = kept_channels(frequency, 1.0)
    assert [k.tolist() for k in keep] == [[] if i == 3 else [i % c] for i, c in enumerate(net.gated_channels)]
    static = PlainResNet.from_gated(net, "gated", keep=keep)
    x = torch.randn(3, 3, 32, 32)
    masks = [torch.zeros(3, c) for c in net.gated_channels]
    for m, k in zip(masks, keep):
        m[:, k] = 1
    with torch.no_grad():
        assert torch.allclose(static(x), net(x, gated=True, masks=masks).features, rtol=1e-4, atol=1e-5)
    with FlopCounterMode(display=False) as counter:
        static(x[:1])
    assert counter.get_total_flops() // 2 == static.macs(32) < PlainResNet.from_gated(net).macs(32) // 3


def test_channel_multiple_adds_the_next_most_frequent_channels():
    frequency = [torch.tensor([0.9, 0.1, 0.5, 0.7, 0.2, 0.65, 0.0, 0.3, 0.95, 0.4]), torch.zeros(10), torch.ones(4)]
    exact = kept_channels(frequency, 0.6)
    assert [k.tolist() for k in exact] == [[0, 3, 5, 8], [], [0, 1, 2, 3]]
    rounded = kept_channels(frequency, 0.6, multiple=3)
    # 4 -> 6: channels 2 (0.5) and 9 (0.4) join; an empty block stays empty; 4 of 4 cannot grow
    assert [k.tolist() for k in rounded] == [[0, 2, 3, 5, 8, 9], [], [0, 1, 2, 3]]
    assert [len(k) for k in kept_channels(frequency, 0.0, multiple=4)] == [10, 10, 4]


@pytest.mark.parametrize("small_map", [0, 10**9], ids=["convolutions", "matrix-products"])
@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_each_way_of_running_a_sliced_convolution_equals_the_masked_pass(monkeypatch, arch, small_map):
    """Every sliced convolution as a channels_last convolution, then every one as a matrix product over patches
    (strided, 1x1 and 3x3 alike, on odd and non-square maps): the executor picks between them by map size, so both
    must be exact."""
    from gatedssl.export import skipping

    monkeypatch.setattr(skipping, "SMALL_MAP", {"first": small_map, "second": small_map})
    net = trained_looking(arch, "cifar")
    x = torch.randn(3, 3, 33, 40, generator=torch.Generator().manual_seed(3))  # odd and non-square: the patch geometry
    executor = SkippingResNet(net, "union")
    with torch.no_grad():
        for kind in ("open", "one", "random"):
            masks = make_masks(net, len(x), kind)
            masked = net(x, gated=True, masks=masks).features
            for rows in (slice(0, 3), slice(1, 2)):
                got, _ = executor(x[rows], masks=[m[rows] for m in masks])
                assert close(got, masked[rows]), (kind, rows, (got - masked[rows]).abs().max().item())


def test_plain_networks_run_channels_last_where_that_is_faster():
    """The layout each deployed network runs in (BENCHMARKS.md times both): a ResNet with the ImageNet stem in
    channels_last and one with the CIFAR stem in NCHW, a MobileNet always in channels_last, the skipping pass always."""
    from gatedssl.export.deploy import plain_network, skipping_network

    def first_conv_layout(net, module, size) -> bool:
        seen = []
        handle = module.register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
        with torch.no_grad():
            net(torch.randn(1, 3, size, size))
        handle.remove()
        return seen[0]

    plain = plain_network(trained_looking("resnet18", "imagenet"), "dense")
    assert first_conv_layout(plain, plain.stem[0], 64) and plain.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    cifar = trained_looking("resnet18", "cifar")
    plain = plain_network(cifar, "dense")
    assert not first_conv_layout(plain, plain.stem[0], 32) and plain.stem[0].weight.is_contiguous()
    skipping = skipping_network(cifar)
    assert first_conv_layout(skipping, skipping.stem, 32)
    mobilenet = create_backbone("mobilenet_v2", stem="cifar", width=0.25).eval()
    plain = plain_network(mobilenet, "dense")
    assert first_conv_layout(plain, plain.stem.conv, 32)
