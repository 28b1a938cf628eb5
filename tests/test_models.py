import copy

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from gatedssl.models import ChannelGate, create_backbone, gated_resnet18, gated_resnet50
from gatedssl.models.gate import straight_through_mask


class FixedMask(nn.Module):
    """Stands in for a gate: returns a given mask, and counts the gate's MACs like the real one."""

    def __init__(self, gate: ChannelGate, mask: torch.Tensor):
        super().__init__()
        self.mask, self.macs = mask, gate.macs

    def forward(self, x):
        return self.mask


def test_gate_mask_is_hard_forward_and_soft_backward():
    torch.manual_seed(0)
    logits = torch.randn(4, 6, requires_grad=True)
    noise = torch.randn(4, 6)
    tau = 2 / 3
    mask = straight_through_mask(logits, tau, noise)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    soft = torch.sigmoid((logits.detach() + noise) / tau)
    assert torch.equal(mask, (soft >= 0.5).float())
    weights = torch.randn(4, 6)
    (mask * weights).sum().backward()
    expected = weights * soft * (1 - soft) / tau  # d sigmoid(u / tau) / du
    torch.testing.assert_close(logits.grad, expected)


def test_gate_eval_mask_is_deterministic_threshold_of_logits():
    torch.manual_seed(0)
    gate = ChannelGate(8, 12).eval()
    x = torch.randn(5, 8, 4, 4)
    a, b = gate(x), gate(x)
    assert torch.equal(a, b)
    assert torch.equal(a, (gate.logits(x) >= 0).float())
    gate.train()
    draws = torch.stack([gate(x) for _ in range(20)])
    assert not torch.all(draws == draws[0]), "training masks must be sampled"


@pytest.mark.parametrize(
    "arch,stem,size",
    [
        ("resnet18", "cifar", 32),
        ("resnet34", "cifar", 32),
        ("resnet50", "cifar", 32),
        ("resnet18", "imagenet", 64),
        ("resnet50", "imagenet", 64),
    ],
)
def test_dense_macs_equal_flop_counter(arch, stem, size):
    net = create_backbone(arch, stem=stem, width=8)
    x = torch.randn(3, 3, size, size)
    with FlopCounterMode(display=False) as counter:
        out = net(x, gated=False)
    per_sample = counter.get_total_flops() // 2 // 3
    assert out.dense_macs == per_sample
    assert torch.equal(out.macs, torch.full((3,), float(per_sample)))
    assert all(torch.equal(m, torch.ones_like(m)) for m in out.masks)
    assert out.features.shape == (3, net.feature_dim)


def test_standard_resnet18_cifar_count_matches_method_doc():
    net = gated_resnet18(width=64)
    assert net(torch.randn(1, 3, 32, 32)).dense_macs == 555_417_600  # 5.55e8 MACs (METHOD.md, padding 1)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_all_ones_gated_pass_is_dense_plus_gates(arch):
    net = create_backbone(arch, width=8).eval()
    for gate in net.gates:
        nn.init.constant_(gate.expand.bias, 100.0)  # every logit >= 0
    x = torch.randn(2, 3, 32, 32)
    with FlopCounterMode(display=False) as counter:
        out = net(x, gated=True)
    gate_macs = sum(g.macs for g in net.gates)
    assert torch.equal(out.macs, torch.full((2,), float(out.dense_macs + gate_macs)))
    assert out.macs[0].item() == counter.get_total_flops() // 2 // 2  # gated pass computes full convs + gates


def test_gated_macs_follow_the_analytic_formula_for_hand_made_masks():
    width = 8
    net = gated_resnet18(width=width).eval()
    n = 2
    torch.manual_seed(1)
    masks = [(torch.rand(n, b.mid_channels) > 0.5).float() for b in net.blocks]
    for block, mask in zip(net.blocks, masks):
        block.gate = FixedMask(block.gate, mask)
    out = net(torch.randn(n, 3, 32, 32), gated=True)
    # hand formula (METHOD.md): 9*H*W*c*(C_in + C_out) per block, stem and 1x1 downsamples in full, gates added
    stages = [
        (width, width, 32),
        (width, width, 32),
        (width, 2 * width, 16),
        (2 * width, 2 * width, 16),
        (2 * width, 4 * width, 8),
        (4 * width, 4 * width, 8),
        (4 * width, 8 * width, 4),
        (8 * width, 8 * width, 4),
    ]
    for i in range(n):
        expected = 9 * 32 * 32 * 3 * width
        for (cin, cout, hw), mask in zip(stages, masks):
            expected += 9 * hw * hw * mask[i].sum().item() * (cin + cout)
            expected += hw * hw * cin * cout if cin != cout else 0
            expected += cin * (cin // 4) + (cin // 4) * cout
        assert out.macs[i].item() == pytest.approx(expected, rel=1e-7)
    assert all(torch.equal(a, b) for a, b in zip(out.masks, masks))


def test_masked_channels_equal_removed_channels():
    """A switched-off channel contributes nothing: same as deleting conv2's input weights for it."""
    torch.manual_seed(0)
    net = gated_resnet50(width=8, separate_bn=False).eval()
    sliced = copy.deepcopy(net)
    x = torch.randn(2, 3, 32, 32)
    for block, block_copy in zip(net.blocks, sliced.blocks):
        keep = torch.zeros(block.mid_channels)
        keep[: block.mid_channels // 3] = 1
        block.gate = FixedMask(block.gate, keep.expand(2, -1))
        with torch.no_grad():
            block_copy.conv2.weight[:, keep == 0] = 0
    torch.testing.assert_close(net(x, gated=True).features, sliced(x, gated=False).features)


def test_separate_bn_keeps_dense_statistics_apart():
    net = gated_resnet18(width=8, separate_bn=True)
    bn = net.blocks[0].bn1
    before_gated = bn.gated.running_mean.clone()
    net(torch.randn(4, 3, 32, 32), gated=False)
    assert torch.equal(bn.gated.running_mean, before_gated)
    assert not torch.equal(bn.dense.running_mean, torch.zeros_like(before_gated))
    shared = gated_resnet18(width=8, separate_bn=False)
    assert shared.blocks[0].bn1.gated is None


def test_gated_pass_backpropagates_into_gates_through_macs():
    net = gated_resnet18(width=8)
    out = net(torch.randn(4, 3, 32, 32), gated=True)
    out.macs.mean().backward()
    assert all(g.expand.bias.grad is not None and g.expand.bias.grad.abs().sum() > 0 for g in net.gates)


def test_unknown_arch_and_stem_are_rejected():
    with pytest.raises(ValueError, match="unknown arch"):
        create_backbone("vgg")
    with pytest.raises(ValueError, match="stem"):
        gated_resnet18(stem="tiny")
