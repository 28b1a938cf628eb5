"""Backbones as declarations: the ResNets unchanged by the move, and the MobileNets through the whole toolchain."""

import json
import warnings
from pathlib import Path

import pytest
import torch

from gatedssl.models import create_backbone

REFERENCE = Path(__file__).parent / "fixtures" / "resnet_reference.pt"


@pytest.mark.parametrize("case", ["resnet18/cifar/32", "resnet50/cifar/32", "resnet18/imagenet/64"])
def test_resnets_give_the_outputs_the_code_before_declarations_gave(case):
    """tests/fixtures/make_resnet_reference.py recorded these with the ResNet code of d6a113a, on fixed inputs."""
    want = torch.load(REFERENCE, weights_only=True)[case]
    arch, stem, _ = case.split("/")
    torch.manual_seed(0)
    net = create_backbone(arch, stem=stem, width=8)
    net.add_widths([0.5])
    for mode in ("train", "eval"):
        net.train(mode == "train")
        for sub in ("dense", "gated", "width0.5"):
            torch.manual_seed(1)
            got, ref = net(want["x"], sub), want[f"{mode}/{sub}"]
            assert got.dense_macs == ref["dense_macs"]
            assert all(torch.equal(a, b) for a, b in zip(got.masks, ref["masks"], strict=True)), (mode, sub)
            assert torch.equal(got.macs, ref["macs"]), (mode, sub)
            # same machine and threads: bit for bit; other thread counts and CPUs round differently (2 threads: 1e-4)
            torch.testing.assert_close(got.features, ref["features"], rtol=1e-3, atol=1e-4)


MOBILENETS = ["mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small"]


def torchvision_model(arch: str, width: float = 1.0) -> torch.nn.Module:
    import torchvision

    model = getattr(torchvision.models, arch)(width_mult=width)
    model.classifier = torch.nn.Identity()
    return model.eval()


@pytest.mark.parametrize("arch", MOBILENETS)
@pytest.mark.parametrize("width", [1.0, 0.5])
def test_the_dense_mobilenet_is_torchvisions_under_its_names(arch, width):
    """Both directions of the name map: torchvision's weights give torchvision's features, and our dense
    state dict loads strictly into torchvision's constructor (classifier replaced by Identity)."""
    torch.manual_seed(0)
    theirs = torchvision_model(arch, width)
    for m in theirs.modules():  # non-trivial BN statistics, so that eps and the BN order matter
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    ours = create_backbone(arch, stem="imagenet", width=width).eval()
    names = ours.torchvision_names()
    assert set(names.values()) == set(theirs.state_dict())
    state = theirs.state_dict()
    ours.load_state_dict({k: state[v] for k, v in names.items()}, strict=False)
    x = torch.randn(2, 3, 96, 96)
    torch.testing.assert_close(ours(x).features, theirs(x), rtol=1e-4, atol=1e-5)
    back = {v: ours.state_dict()[k] for k, v in names.items()}
    fresh = torchvision_model(arch, width)
    fresh.load_state_dict(back, strict=True)
    torch.testing.assert_close(fresh(x), theirs(x), rtol=0, atol=0)


def flops_per_sample(net, x, sub) -> tuple[float, object]:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        out = net(x, sub)
    return counter.get_total_flops() / 2 / len(x), out  # 2 FLOPs per multiply-accumulate


@pytest.mark.parametrize("arch", MOBILENETS)
@pytest.mark.parametrize("width", [1.0, 0.25])
def test_the_cifar_variant_exports_as_torchvisions_model_with_the_strides_its_sidecar_names(arch, width, tmp_path):
    """The CIFAR variant changes two strides and nothing else: torchvision's model built from the sidecar (its residual
    connections decided by its own strides) gives the features of ours."""
    from gatedssl.export.encoder import EvalTransform
    from gatedssl.export.formats import torchvision_model, write_torchvision

    net = trained_looking(arch, stem="cifar", width=width)
    write_torchvision(net, EvalTransform.for_dataset("embedded"), tmp_path / "net.pth")
    x = torch.randn(2, 3, 32, 32)
    ours, theirs = net(x).features, torchvision_model(tmp_path / "net.pth")(x)
    assert (ours - theirs).norm() <= 1e-5 * ours.norm()


@pytest.mark.parametrize("arch", MOBILENETS)
@pytest.mark.parametrize("stem,size,width", [("cifar", 32, 0.5), ("imagenet", 64, 1.0), ("cifar", 32, 0.35)])
def test_mobilenet_macs_equal_the_flop_counter_for_every_sub_network(arch, stem, size, width):
    """Depthwise convs, SE and the last conv counted as FlopCounterMode counts them; slimmable widths too;
    a gated pass with every gate open costs the dense pass plus the gates."""
    net = create_backbone(arch, stem=stem, width=width)
    net.add_widths([0.5, 0.25])
    x = torch.randn(2, 3, size, size)
    for sub in ("dense", "width0.5", "width0.25"):
        flops, out = flops_per_sample(net, x, sub)
        assert out.macs.tolist() == [flops, flops], sub
    assert flops_per_sample(net, x, "dense")[1].dense_macs == flops_per_sample(net, x, "dense")[0]
    net.eval()
    for gate in net.gates:
        torch.nn.init.constant_(gate.expand.bias, 100.0)  # every logit >= 0
    flops, out = flops_per_sample(net, x, "gated")
    assert out.macs.tolist() == [flops, flops] == [out.dense_macs + sum(g.macs for g in net.gates)] * 2


def trained_looking(arch: str, stem: str = "cifar", width: float = 0.5, widths=()):
    """A network whose BN statistics and gates are not the identity at init, so that folding and slicing matter."""
    torch.manual_seed(0)
    net = create_backbone(arch, stem=stem, width=width)
    net.add_widths(widths)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
            elif isinstance(m, torch.nn.Conv2d) and m.bias is not None:  # the SE's: zeros at init, not once trained
                m.bias.uniform_(-0.3, 0.3)
    return net.eval()


def random_masks(net, n: int, p: float = 0.5, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(n, c, generator=g) < p).float() for c in net.gated_channels]


@pytest.mark.parametrize("arch", MOBILENETS)
def test_a_static_mobilenet_equals_the_gated_pass_with_its_channels_and_costs_what_it_counted(arch):
    from gatedssl.export.mobilenet import PlainMobileNet

    net = trained_looking(arch)
    x = torch.randn(3, 3, 32, 32)
    every = PlainMobileNet.from_gated(net, "gated")  # Q = 0: every channel kept
    torch.testing.assert_close(
        every(x), net(x, "gated", masks=[torch.ones(3, c) for c in net.gated_channels]).features, rtol=1e-4, atol=1e-5
    )
    dense = PlainMobileNet.from_gated(net, "dense")
    torch.testing.assert_close(dense(x), net(x, "dense").features, rtol=1e-4, atol=1e-5)
    assert dense.macs(32) == net(x).dense_macs
    for p in (0.5, 0.0):  # some channels; none (each block its input plus a constant)
        mask = random_masks(net, 1, p)
        keep = [m[0].nonzero().flatten() for m in mask]
        static = PlainMobileNet.from_gated(net, "gated", keep=keep)
        gated = net(x, "gated", masks=[m.expand(3, -1) for m in mask])
        torch.testing.assert_close(static(x), gated.features, rtol=1e-4, atol=1e-5)
        flops, _ = flops_per_sample_plain(static, x)
        assert static.macs(32) == flops == gated.macs[0].item() - sum(g.macs for g in net.gates)


def flops_per_sample_plain(plain, x):
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        out = plain(x)
    return counter.get_total_flops() / 2 / len(x), out


@pytest.mark.parametrize("arch", MOBILENETS)
@pytest.mark.parametrize("strategy", ["union", "group"])
def test_real_skipping_in_a_mobilenet_equals_the_masked_pass(arch, strategy):
    from gatedssl.export.mobilenet import SkippingMobileNet

    net = trained_looking(arch)
    skipping = SkippingMobileNet(net, strategy)
    x = torch.randn(4, 3, 32, 32)
    for masks in (
        random_masks(net, 4),
        random_masks(net, 4, 0.0),
        random_masks(net, 4, 1.0),
        [m[:1].expand(4, -1) for m in random_masks(net, 4)],
    ):
        features, _ = skipping(x, masks)
        torch.testing.assert_close(features, net(x, "gated", masks=masks).features, rtol=1e-4, atol=1e-5)
    one = x[:1]
    features, used = skipping(one)  # the gates' own choice at batch 1
    want = net(one, "gated")
    assert all(torch.equal(a, b) for a, b in zip(used, want.masks))
    torch.testing.assert_close(features, want.features, rtol=1e-4, atol=1e-5)
    flops, _ = flops_per_sample_plain(lambda t: skipping(t)[0], one)
    assert flops == want.macs[0].item()  # the gates included: their matrix products are counted too


def test_width_is_a_channel_count_for_resnets_and_a_multiplier_for_mobilenets():
    from gatedssl.config import PretrainConfig, resolve, validate

    assert resolve(PretrainConfig(arch="mobilenet_v2")).width == 0.25  # the embedded recipe's
    assert resolve(PretrainConfig(arch="mobilenet_v2", dataset="cifar10")).width == 1.0
    resnet = resolve(PretrainConfig(width=16.0))
    assert resnet.width == 16 and isinstance(resnet.width, int) and "-w16-" in resnet.out
    assert any("not a channel count" in p for p in validate(resolve(PretrainConfig(width=8.5))))
    assert any("outside (0, 4]" in p for p in validate(resolve(PretrainConfig(arch="mobilenet_v3_small", width=8))))
    assert validate(resolve(PretrainConfig(arch="mobilenet_v3_small", width=0.75))) == []


# ------------------------------------------------------------------------------------------ the toolchain, end to end
TINY_MOBILENET = dict(arch="mobilenet_v3_small", width=0.25, proj_dim=64, epochs=1, batch_size=50, limit_per_class=10, device="cpu")


@pytest.fixture(scope="module")
def mobilenet_run(tmp_path_factory):
    from gatedssl.config import PretrainConfig
    from gatedssl.training import pretrain

    out = tmp_path_factory.mktemp("mobilenet") / "dual"
    summary = pretrain(PretrainConfig(out=str(out), **TINY_MOBILENET), progress=False, log=lambda m: None)
    return out, summary


def test_a_mobilenet_run_trains_calibrates_and_reports_like_a_resnet(mobilenet_run):
    _, summary = mobilenet_run
    assert summary["arch"] == "mobilenet_v3_small" and summary["width"] == 0.25
    assert abs(summary["gated"]["macs_ratio"] - summary["budget"]) <= 0.03  # calibrated to the budget
    assert all(0 <= summary[s]["knn_top1"] <= 100 for s in ("dense", "gated"))


def test_a_mobilenet_run_exports_in_every_format_and_loads_with_real_skipping(mobilenet_run, tmp_path):
    import gatedssl
    from gatedssl.cli import main
    from gatedssl.data.sources import load_dataset
    from gatedssl.export.formats import torchvision_model

    run, _ = mobilenet_run
    checkpoint = str(run / "checkpoints" / "last.pt")
    model = gatedssl.load(checkpoint)
    images = load_dataset("embedded", limit_per_class=1).test.images
    x = model.transform(images)
    masked = model.nets["backbone"](x, "gated")
    gated, masks = model.nets["gated"](x)
    assert all(torch.equal(a, b) for a, b in zip(masks, masked.masks))
    torch.testing.assert_close(gated, masked.features, rtol=1e-4, atol=1e-5)
    dense = model.embed(images)
    for fmt in ("pt", "torchscript", "onnx", "torchvision"):
        out = tmp_path / f"dense.{fmt}"
        assert main(["export", "--checkpoint", checkpoint, "--format", fmt, "--out", str(out), "--device", "cpu"]) == 0
        if fmt == "pt":
            got = gatedssl.load(out).embed(images)
        elif fmt == "torchscript":
            got = torch.jit.load(str(out))(x)
        elif fmt == "onnx":
            import onnxruntime

            session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
            got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
        else:  # torchvision's own mobilenet_v3_small, strides set for 32 px as the sidecar says
            got = torchvision_model(out)(x)
        assert (got - dense).norm() <= 1e-4 * dense.norm(), fmt  # relative: a short run's features are small
    static = tmp_path / "static.pt"
    assert main(["export", "--checkpoint", checkpoint, "--subnet", "static", "--out", str(static), "--device", "cpu"]) == 0
    loaded = gatedssl.load(static)
    summary = json.loads((run / "summary.json").read_text())["static"]
    assert loaded.nets["static"].mid_channels == summary["channels"] and summary["macs_ratio"] <= 0.5 + 1e-9


def test_post_hoc_gating_starts_from_torchvisions_own_mobilenet(tmp_path):
    import torchvision

    from gatedssl.config import PretrainConfig
    from gatedssl.training import pretrain

    torch.manual_seed(0)
    theirs = torchvision.models.mobilenet_v3_small(width_mult=0.25)
    theirs.classifier = torch.nn.Sequential(torch.nn.Linear(144, 10))  # a task head: ignored
    torch.save(theirs.state_dict(), tmp_path / "mobilenet.pth")
    cfg = PretrainConfig(mode="posthoc", init_from=str(tmp_path / "mobilenet.pth"), out=str(tmp_path / "run"), **TINY_MOBILENET)
    pretrain(cfg, progress=False, log=lambda m: None)
    ours = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["model"]
    names = create_backbone("mobilenet_v3_small", width=0.25).torchvision_names()
    state = theirs.state_dict()
    assert all(torch.equal(ours[f"backbone.{k}"], state[v]) for k, v in names.items())  # the dense network stayed theirs


def test_gates_on_torchvisions_mobilenet_start_with_the_gated_pass_equal_to_the_dense_one(tmp_path):
    """The gated BN set starts as a copy of torchvision's BN (it has no other), so with every gate open the
    gated pass is torchvision's network before post-hoc training moves anything."""
    import torchvision

    from gatedssl.config import PretrainConfig
    from gatedssl.training.init_from import load_pretrained

    torch.manual_seed(0)
    theirs = torchvision.models.mobilenet_v3_small(width_mult=0.25)
    with torch.no_grad():
        for m in theirs.modules():
            if isinstance(m, torch.nn.BatchNorm2d):  # statistics no fresh gated BN has
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 1.5)
    torch.save(theirs.state_dict(), tmp_path / "mobilenet.pth")
    cfg = PretrainConfig(mode="posthoc", init_from=str(tmp_path / "mobilenet.pth"), out=str(tmp_path / "run"), **TINY_MOBILENET)
    net = create_backbone("mobilenet_v3_small", width=0.25)
    load_pretrained(cfg, net)
    net.eval()
    x = torch.randn(2, 3, 32, 32)
    every = [torch.ones(2, c) for c in net.gated_channels]
    torch.testing.assert_close(net(x, "gated", masks=every).features, net(x, "dense").features)


@pytest.mark.parametrize("arch", ["mobilenet_v2", "mobilenet_v3_small"])
def test_a_slimmable_mobilenet_width_exports_as_a_plain_narrower_mobilenet(arch):
    from gatedssl.export.mobilenet import PlainMobileNet

    net = trained_looking(arch, widths=(0.5,))
    x = torch.randn(2, 3, 32, 32)
    plain = PlainMobileNet.from_gated(net, "width0.5")
    out = net(x, "width0.5")
    torch.testing.assert_close(plain(x), out.features, rtol=1e-4, atol=1e-5)
    assert plain.macs(32) == out.macs[0].item() == flops_per_sample_plain(plain, x)[0]


@pytest.mark.parametrize("subnet", ["gated", "static"])
def test_a_mobilenet_sub_network_fine_tunes_keeps_its_budget_and_predicts(mobilenet_run, tmp_path, subnet):
    import gatedssl
    from gatedssl.training import finetune as ft

    run, summary = mobilenet_run
    cfg = ft.FinetuneConfig(
        checkpoint=str(run / "checkpoints/last.pt"), out=str(tmp_path / subnet), subnet=subnet, epochs=1, batch_size=50, device="cpu"
    )
    result = ft.finetune(cfg, progress=False, log=lambda m: None)
    assert abs(result["macs_ratio"] - summary["budget"]) <= 0.05
    names, probabilities = gatedssl.load(tmp_path / subnet / "checkpoints/last.pt").predict(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    assert len(names) == 2 and probabilities.shape == (2, 10)


def test_a_mobilenet_takes_the_reference_recipe_but_refuses_a_resnet_stem_padding(tmp_path, capsys):
    from conftest import cli_error_lines

    from gatedssl.config import PretrainConfig, resolve, validate

    assert resolve(PretrainConfig(arch="mobilenet_v2", recipe="reference")).stem_padding == 1
    assert validate(resolve(PretrainConfig(arch="mobilenet_v2", recipe="reference"))) == []
    out = tmp_path / "run"
    argv = ["pretrain", "--arch", "mobilenet_v2", "--stem-padding", "2", "--out", str(out)]
    cli_error_lines(capsys, argv, "stem_padding", "drop --stem-padding")
    cli_error_lines(capsys, ["pretrain", "--arch", "mobilenet_v2", "--width", "0", "--out", str(out)], "width")
    assert not out.exists()


@pytest.mark.parametrize("method", ["vicreg", "barlow", "simclr", "simsiam", "byol"])
def test_every_method_trains_a_dual_mobilenet_step(method):
    from gatedssl.methods import JointObjective, get_method
    from gatedssl.training.optim import build_optimizer, warmup_cosine
    from gatedssl.training.trainer import train_step

    torch.manual_seed(0)
    objective = JointObjective(create_backbone("mobilenet_v3_small", width=0.25), get_method(method), 32, mode="dual")
    optimizer = build_optimizer(objective, "lars", 0.1, 1e-4, 0.9, 0.02, 1.0)
    before = objective.backbone.blocks[3].project.weight.detach().clone()
    x = torch.randn(2, 8, 3, 32, 32)
    terms = train_step(objective, optimizer, warmup_cosine(optimizer, 0, 10), x[0], x[1], progress=0.5, fast=False)
    assert torch.isfinite(terms["loss"]) and not torch.equal(before, objective.backbone.blocks[3].project.weight)


# ------------------------------------------------------------------------------------------ what a new user hit (issue 24's breaking session)
def test_a_pt_export_beside_a_torchvision_export_of_the_same_name_loads_as_itself(mobilenet_run, tmp_path, capsys):
    import gatedssl
    from gatedssl.cli import main

    run, _ = mobilenet_run
    checkpoint = str(run / "checkpoints" / "last.pt")
    for fmt, name in (("pt", "net.pt"), ("torchvision", "net.pth"), ("onnx", "net.onnx")):  # net.json is the .pth's sidecar
        assert main(["export", "--checkpoint", checkpoint, "--format", fmt, "--out", str(tmp_path / name), "--device", "cpu"]) == 0
    images = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    assert torch.allclose(gatedssl.load(tmp_path / "net.pt").embed(images), gatedssl.load(checkpoint).embed(images), atol=1e-5)
    onnx_model = gatedssl.load(tmp_path / "net.onnx")  # onnxruntime, the same interface
    assert torch.allclose(onnx_model.embed(images), gatedssl.load(checkpoint).embed(images), atol=1e-4)


def test_init_from_a_torchvision_mobilenet_of_another_width_names_the_flag(tmp_path, capsys):
    import torchvision
    from conftest import cli_error_lines

    torch.save(torchvision.models.mobilenet_v2(width_mult=0.5).state_dict(), tmp_path / "mbv2.pth")
    argv = ["pretrain", "--arch", "mobilenet_v2", "--width", "0.25", "--mode", "posthoc", "--init-from", str(tmp_path / "mbv2.pth")]
    cli_error_lines(capsys, [*argv, "--out", str(tmp_path / "run")], "of another width", "features.0.0.weight", "pass the width multiplier")
    assert not (tmp_path / "run").exists()


def test_resuming_a_mobilenet_run_as_a_resnet_names_the_setting_that_differs(mobilenet_run, capsys):
    from conftest import cli_error_lines

    run, _ = mobilenet_run
    before = (run / "checkpoints" / "last.pt").read_bytes()
    cli_error_lines(
        capsys, ["pretrain", "--resume", "--out", str(run), "--arch", "resnet18"], "--arch resnet18 (the run has mobilenet_v3_small)"
    )
    assert (run / "checkpoints" / "last.pt").read_bytes() == before


def test_a_slimmable_run_has_no_static_sub_network_to_export(tmp_path, capsys):
    from conftest import cli_error_lines

    from gatedssl.config import PretrainConfig
    from gatedssl.training import pretrain

    cfg = PretrainConfig(mode="slimmable", widths=[0.5], out=str(tmp_path / "slim"), **TINY_MOBILENET)
    pretrain(cfg, progress=False, log=lambda m: None)
    argv = ["export", "--checkpoint", str(tmp_path / "slim/checkpoints/last.pt"), "--subnet", "static", "--keep-rate", "0.3"]
    cli_error_lines(capsys, [*argv, "--out", str(tmp_path / "static.pt")], "slimmable run", "widthW")
    assert not (tmp_path / "static.pt").exists()


def toy_design(width: float):
    """A backbone no family had before (an MnasNet-like stack: 5x5 kernels, SE only late, ReLU then hardswish)."""
    from gatedssl.models.mobilenet import BlockSpec, MobileNetDesign, make_divisible

    c = [make_divisible(n * width) for n in (16, 24, 40)]
    blocks = [
        BlockSpec(c[0], 3, c[0], c[0], False, "relu", 1),
        BlockSpec(c[0], 5, 3 * c[0], c[1], False, "relu", 2),
        BlockSpec(c[1], 5, 3 * c[1], c[1], True, "hardswish", 1),
        BlockSpec(c[1], 3, 4 * c[1], c[2], True, "hardswish", 2),
    ]
    return MobileNetDesign(c[0], blocks, 96, act=("relu", "hardswish"))


def test_a_new_backbone_is_one_declaration_and_the_toolchain_follows(tmp_path):
    """A design function and one register_mobilenet call; MACs, static export, real skipping, TorchScript and
    the `.pt` spec then work with no other change (the torchvision format is refused: it has no twin there)."""
    from gatedssl.errors import UserError
    from gatedssl.export.deploy import plain_from_spec, plain_network
    from gatedssl.export.formats import torchvision_state_dict
    from gatedssl.models.backbone import ARCHS
    from gatedssl.models.mobilenet import register_mobilenet

    register_mobilenet("toy_net", toy_design)
    try:
        for stem, size, width in (("cifar", 32, 1.0), ("imagenet", 64, 0.5)):
            test_mobilenet_macs_equal_the_flop_counter_for_every_sub_network("toy_net", stem, size, width)
        test_a_static_mobilenet_equals_the_gated_pass_with_its_channels_and_costs_what_it_counted("toy_net")
        for strategy in ("union", "group"):
            test_real_skipping_in_a_mobilenet_equals_the_masked_pass("toy_net", strategy)
        net = trained_looking("toy_net")
        x = torch.randn(2, 3, 32, 32)
        static = plain_network(net, "gated", keep=[m[0].nonzero().flatten() for m in random_masks(net, 1)])
        again = plain_from_spec(json.loads(json.dumps(static.spec)))  # what a `.pt` export stores: no design needed
        again.load_state_dict(static.state_dict())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, still what mobile runtimes load
            scripted = torch.jit.script(again)
        torch.testing.assert_close(scripted(x), static(x))
        with pytest.raises(UserError, match="toy_net has no torchvision twin"):
            torchvision_state_dict(net)
    finally:
        ARCHS.pop("toy_net", None)
