"""Post-hoc gating from other libraries' files: lightly models and solo-learn checkpoints load, and give their features.

Each source is built as that library builds it (lightly with its own classes), its state dict saved,
then read by load_pretrained into a gatedssl backbone of the matching stem and width; the dense
features must be the source encoder's. Momentum copies are perturbed so that loading one shows.
"""

import copy
import json

import pytest
import torch
import torchvision
from conftest import cli_error_lines
from torch import nn

from gatedssl.cli import main
from gatedssl.config import PretrainConfig, resolve
from gatedssl.errors import UserError
from gatedssl.models import create_backbone
from gatedssl.training.init_from import load_pretrained

lightly = pytest.importorskip("lightly", reason="lightly is a test extra (pip install 'gatedssl[test]'); these tests build its models")
from lightly.models import ResNetGenerator  # noqa: E402
from lightly.models.modules import heads  # noqa: E402


def _random_bn_statistics(net: nn.Module) -> nn.Module:
    """BN statistics that are not the defaults, so a BN loaded wrongly (or not at all) shows in the features."""
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    return net


def _perturbed(module: nn.Module) -> nn.Module:
    """A momentum copy that differs from the online network (as it does after training)."""
    other = copy.deepcopy(module)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.1)
    return other


class LightlyVICReg(nn.Module):
    """lightly's VICReg example: a torchvision ResNet's children but fc, then VICRegProjectionHead."""

    def __init__(self, cifar: bool):
        super().__init__()
        resnet = torchvision.models.resnet18()
        if cifar:  # lightly's CIFAR examples: a 3x3 stem and no max-pool (Identity stays a child: the numbering holds)
            resnet.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            resnet.maxpool = nn.Identity()
        self.backbone = nn.Sequential(*list(resnet.children())[:-1])
        self.projection_head = heads.VICRegProjectionHead(input_dim=512, hidden_dim=64, output_dim=64, num_layers=2)

    def features(self, x):
        return self.backbone(x).flatten(1)


class LightlyBYOL(nn.Module):
    """lightly's BYOL example: online backbone, projection and prediction heads, and momentum copies (backbone_momentum)."""

    def __init__(self):
        super().__init__()
        resnet = torchvision.models.resnet18()
        resnet.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        resnet.maxpool = nn.Identity()
        self.backbone = nn.Sequential(*list(resnet.children())[:-1])
        self.projection_head = heads.BYOLProjectionHead(512, 64, 32)
        self.prediction_head = heads.BYOLPredictionHead(32, 64, 32)
        self.backbone_momentum = _perturbed(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)

    def features(self, x):
        return self.backbone(x).flatten(1)


class LightlyCifarResNet(nn.Module):
    """lightly's CIFAR benchmarks: its own ResNetGenerator (3x3 stem, `shortcut` blocks) as a Sequential, SimCLR head."""

    def __init__(self):
        super().__init__()
        resnet = ResNetGenerator("resnet-18")
        self.backbone = nn.Sequential(*list(resnet.children())[:-1], nn.AdaptiveAvgPool2d(1))
        self.projection_head = heads.SimCLRProjectionHead(512, 64, 32)


def solo_learn_checkpoint(path, padding: int = 2, wrapper: str = "") -> nn.Module:
    """A solo-learn checkpoint as its Lightning trainer writes it; returns the encoder it holds.

    solo-learn's CIFAR backbones: torchvision's ResNet with a 3x3 conv1 padded by 2, no max-pool, fc=Identity.
    """
    resnet = torchvision.models.resnet18()
    resnet.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=padding, bias=False)
    resnet.maxpool = nn.Identity()
    resnet.fc = nn.Identity()
    _random_bn_statistics(resnet)
    projector = nn.Sequential(nn.Linear(512, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 32))
    state = {  # the momentum copy first, so that taking the first ResNet found would take it
        **{f"momentum_backbone.{k}": v for k, v in _perturbed(resnet).state_dict().items()},
        **{f"backbone.{k}": v for k, v in resnet.state_dict().items()},
        **{f"projector.{k}": v for k, v in projector.state_dict().items()},
        **{f"classifier.{k}": v for k, v in nn.Linear(512, 10).state_dict().items()},
        **{f"momentum_projector.{k}": v for k, v in projector.state_dict().items()},
    }
    state = {wrapper + k: v for k, v in state.items()}
    torch.save({"state_dict": state, "epoch": 3, "global_step": 120, "hyper_parameters": {"method": "byol", "cifar": True}}, path)
    return resnet


def _posthoc(path, stem="cifar", stem_padding=1, width=64, dataset="cifar10"):
    cfg = resolve(
        PretrainConfig(
            dataset=dataset, data_dir=".", mode="posthoc", init_from=str(path), width=width, stem=stem, stem_padding=stem_padding
        )
    )
    backbone = create_backbone("resnet18", width=width, stem=stem, stem_padding=stem_padding)
    assert load_pretrained(cfg, backbone, log=lambda message: None) is None, "another library's file has no recorded pretraining cost"
    return backbone.eval()


def _same_features(backbone, reference, size=32):
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
    with torch.no_grad():
        torch.testing.assert_close(backbone(x).features, reference(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "model,stem,padding,size", [(LightlyVICReg, "cifar", 1, 32), (LightlyBYOL, "cifar", 1, 32), (LightlyVICReg, "imagenet", 1, 64)]
)
def test_a_lightly_model_loads_and_gives_its_features(tmp_path, model, stem, padding, size):
    torch.manual_seed(0)
    source = model(cifar=stem == "cifar") if model is LightlyVICReg else model()
    _random_bn_statistics(source.backbone).eval()
    torch.save(source.state_dict(), tmp_path / "lightly.pt")
    assert "backbone.4.0.conv1.weight" in source.state_dict() and "backbone.0.weight" in source.state_dict()
    _same_features(_posthoc(tmp_path / "lightly.pt", stem, padding), source.features, size)


def test_lightlys_own_cifar_resnet_is_refused_as_a_sequential_and_loads_as_itself(tmp_path):
    """lightly's ResNetGenerator applies the stem's ReLU in its forward: nn.Sequential(*children) drops it, gatedssl's stem has it."""
    torch.manual_seed(1)
    source = LightlyCifarResNet()
    _random_bn_statistics(source.backbone).eval()
    torch.save(source.state_dict(), tmp_path / "lightly.pt")
    with pytest.raises(UserError, match=r"layer1 right after bn1 \(children 1 and 2\), so no ReLU after the stem"):
        _posthoc(tmp_path / "lightly.pt")
    resnet = ResNetGenerator("resnet-18")  # the network itself (conv1, bn1, layerS.B.shortcut, linear): trained with its ReLU
    _random_bn_statistics(resnet).eval()
    torch.save(resnet.state_dict(), tmp_path / "resnet.pt")
    assert "layer2.0.shortcut.0.weight" in resnet.state_dict(), "lightly's name for torchvision's downsample"
    resnet.linear = nn.Identity()
    _same_features(_posthoc(tmp_path / "resnet.pt"), resnet)


@pytest.mark.parametrize("wrapper", ["", "module."])  # as saved, or from a DataParallel/DDP wrapper
def test_a_solo_learn_checkpoint_loads_its_backbone_not_the_momentum_one(tmp_path, wrapper):
    torch.manual_seed(2)
    encoder = solo_learn_checkpoint(tmp_path / "solo.ckpt", wrapper=wrapper).eval()
    _same_features(_posthoc(tmp_path / "solo.ckpt", stem_padding=2), encoder)


def test_a_stem_mismatch_is_one_line(tmp_path, capsys):
    torch.manual_seed(3)
    cifar, imagenet = tmp_path / "cifar.pt", tmp_path / "imagenet.pt"
    torch.save(LightlyVICReg(cifar=True).state_dict(), cifar)
    torch.save(LightlyVICReg(cifar=False).state_dict(), imagenet)
    run = ["pretrain", "--mode", "posthoc", "--width", "64", "--device", "cpu", "--out", str(tmp_path / "r")]
    cli_error_lines(capsys, [*run, "--init-from", str(imagenet)], "with the imagenet stem", "asks for stem cifar", "pass --stem imagenet")
    cli_error_lines(capsys, [*run, "--init-from", str(cifar), "--width", "8"], "with the cifar stem", "asks for width 8", "pass --width 64")
    assert not (tmp_path / "r" / "checkpoints").exists()
    with pytest.raises(UserError, match="resnet18 of width 64 with the cifar stem and this run asks for stem imagenet; pass --stem cifar"):
        _posthoc(cifar, stem="imagenet", dataset="imagefolder")


def test_files_that_hold_no_single_resnet_are_one_line(tmp_path, capsys):
    heads_only = tmp_path / "heads.pt"
    torch.save({"state_dict": {f"projector.{k}": v for k, v in nn.Linear(4, 4).state_dict().items()}, "epoch": 1}, heads_only)
    two = tmp_path / "dino.pt"
    student = nn.Sequential(*list(torchvision.models.resnet18().children())[:-1])
    torch.save(
        {
            **{f"student_backbone.{k}": v for k, v in student.state_dict().items()},
            **{f"teacher_backbone.{k}": v for k, v in student.state_dict().items()},
        },
        two,
    )
    run = ["pretrain", "--mode", "posthoc", "--width", "64", "--device", "cpu", "--out", str(tmp_path / "r")]
    lines = cli_error_lines(
        capsys,
        [*run, "--init-from", str(heads_only)],
        "holds no ResNet encoder",
        "found projector (2 tensors: weight, bias)",
        "solo-learn",
        "lightly",
    )
    assert str(heads_only) in lines[-1]
    cli_error_lines(capsys, [*run, "--init-from", str(two)], "several ResNets (student_backbone, teacher_backbone)")


def test_the_stem_padding_of_an_export_is_checked(tmp_path):
    """Our own torchvision export records its padding beside the weights: a post-hoc run with another padding is refused."""
    from gatedssl.export import EvalTransform
    from gatedssl.export.formats import write_torchvision

    write_torchvision(create_backbone("resnet18", width=64, stem_padding=2), EvalTransform.for_dataset("cifar10"), tmp_path / "r18.pth")
    with pytest.raises(UserError, match="stem padding 2 .* pass --stem-padding 2"):
        _posthoc(tmp_path / "r18.pth", stem_padding=1)
    _posthoc(tmp_path / "r18.pth", stem_padding=2)
    assert json.loads((tmp_path / "r18.json").read_text())["conv1"]["padding"] == 2


class LightlyNarrow(nn.Module):
    """A lightly model around its own ResNetGenerator at width 8 (the embedded dataset's network), kept whole as the backbone."""

    def __init__(self):
        super().__init__()
        self.backbone = ResNetGenerator("resnet-18", width=0.125)
        self.projection_head = heads.VICRegProjectionHead(input_dim=64, hidden_dim=32, output_dim=32, num_layers=2)


def test_posthoc_from_a_lightly_file_end_to_end(tmp_path, capsys):
    """`gatedssl pretrain --mode posthoc --init-from lightly.pt`: the run starts from the lightly encoder and keeps it."""
    torch.manual_seed(4)
    source = LightlyNarrow()
    torch.save(source.state_dict(), tmp_path / "lightly.pt")
    out = tmp_path / "ph"
    argv = ["pretrain", "--mode", "posthoc", "--init-from", str(tmp_path / "lightly.pt"), "--epochs", "1", "--out", str(out)]
    assert main([*argv, "--limit-per-class", "4", "--batch-size", "20", "--proj-dim", "64", "--device", "cpu"]) == 0
    assert "does not record the 3x3 stem's padding" in capsys.readouterr().err
    model = torch.load(out / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert torch.equal(model["backbone.stem_conv.weight"], source.backbone.conv1.weight)
    assert torch.equal(model["backbone.blocks.7.conv2.weight"], source.backbone.layer4[1].conv2.weight)
    assert torch.equal(model["backbone.blocks.2.shortcut.1.running_var"], source.backbone.layer2[0].shortcut[1].running_var)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["init_from"] == str(tmp_path / "lightly.pt") and summary["subnets"] == ["dense", "gated"]
