"""gatedssl.load, `gatedssl export` (dense, static; pt, torchscript, onnx, torchvision) and their errors."""

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
import torchvision
import yaml
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

import gatedssl
from gatedssl.checkpoint import load_checkpoint
from gatedssl.cli import main
from gatedssl.data.sources import load_dataset
from gatedssl.errors import UserError
from gatedssl.evaluation.evaluate import extract
from gatedssl.export import EvalTransform, PlainResNet
from gatedssl.export.formats import torchvision_model, torchvision_state_dict, write_pt, write_torchvision
from gatedssl.export.static import keep_rate_for, static_macs_ratio
from gatedssl.models import create_backbone
from gatedssl.models.resnet import GatedBasicBlock, GatedResNet

FIXTURE = Path(__file__).parent / "fixtures" / "checkpoint_v0.1.0.pt"  # written by gatedssl 0.1.0 (width 8, 1 epoch)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder holding the 0.1.0 checkpoint and the summary `gatedssl eval` writes for it."""
    root = tmp_path_factory.mktemp("run")
    (root / "checkpoints").mkdir()
    shutil.copy(FIXTURE, root / "checkpoints" / "last.pt")
    (root / "config.yaml").write_text(yaml.safe_dump(torch.load(FIXTURE, weights_only=True)["config"]))  # what makes it a run folder
    assert main(["eval", "--checkpoint", str(root / "checkpoints" / "last.pt"), "--device", "cpu"]) == 0
    return root


@pytest.fixture(scope="module")
def splits():
    return load_dataset("embedded", limit_per_class=2)


def one_line_error(capsys, code):
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_load_gives_the_features_eval_extracts(run, splits):
    model = gatedssl.load(run / "checkpoints" / "last.pt")
    assert not model.training and model.subnets == ["dense", "gated", "gated-masked"] and model.device == CPU
    backbone = model.nets["backbone"]
    images = splits.test.images
    dense = extract(backbone, splits.test, splits, False, CPU).features
    assert torch.allclose(model.embed(images), dense, rtol=1e-4, atol=1e-5)
    masked = backbone(model.transform(images), gated=True)
    gated, masks = model.nets["gated"](model.transform(images))
    same = torch.stack([(a == b).all(1) for a, b in zip(masks, masked.masks)]).all(0)
    assert same.float().mean() >= 0.999
    assert torch.allclose(model.embed(images, "gated")[same], masked.features[same], rtol=1e-4, atol=1e-5)
    assert torch.allclose(model.embed(images, "gated-masked"), masked.features)
    # PIL images of any size are resized and centre-cropped as evaluation does; at 32 px they are the tensor itself
    pictures = [Image.fromarray(i.permute(1, 2, 0).numpy()) for i in images[:4]]
    assert torch.equal(model.transform(pictures), model.transform(images[:4]))
    assert model.embed([p.resize((96, 64)) for p in pictures]).shape == (4, backbone.feature_dim)
    with pytest.raises(ValueError, match="subnet"):
        model.embed(images, "static")


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, capsys):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (shutil.copy, (str(FIXTURE), str(marker)))

    evil = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "config": {}, "model": Payload()}, evil)
    for argv in (["eval", "--checkpoint", str(evil)], ["export", "--checkpoint", str(evil), "--out", str(tmp_path / "x.pt")]):
        line = one_line_error(capsys, main(argv))
        assert "refused" in line and "run code" in line
    with pytest.raises(Exception, match="refused"):
        gatedssl.load(evil)
    assert not marker.exists() and not (tmp_path / "x.pt").exists()
    assert load_checkpoint(FIXTURE)["gatedssl_version"] == "0.1.0"  # plain data: still loads with weights_only


def test_dense_export_round_trips_in_every_format(run, tmp_path, splits):
    checkpoint = str(run / "checkpoints" / "last.pt")
    model = gatedssl.load(checkpoint)
    x = model.transform(splits.test.images[:3])
    expected = model(x)
    for fmt in ("pt", "torchscript", "onnx"):
        out = tmp_path / f"dense.{fmt}"
        assert main(["export", "--checkpoint", checkpoint, "--format", fmt, "--out", str(out), "--device", "cpu"]) == 0
        if fmt == "pt":
            loaded = gatedssl.load(out)
            assert loaded.subnets == ["dense"] and loaded.transform == model.transform
            assert torch.allclose(loaded.embed(splits.test.images[:3]), expected, atol=1e-6)
        elif fmt == "torchscript":
            assert torch.allclose(torch.jit.load(str(out))(x), expected, atol=1e-6)
        else:
            import onnxruntime

            session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
            for rows in (slice(0, 1), slice(0, 3)):  # batch 1 and the dynamic batch axis
                got = torch.from_numpy(session.run(None, {"images": x[rows].numpy()})[0])
                assert torch.allclose(got, expected[rows], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch,stem", [("resnet18", "imagenet"), ("resnet34", "cifar"), ("resnet50", "cifar")])
def test_torchvision_state_dict_loads_strictly_and_gives_the_same_features(arch, stem):
    torch.manual_seed(0)
    net = create_backbone(arch, stem=stem, width=64).eval()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    model = getattr(torchvision.models, arch)()
    model.fc = torch.nn.Identity()
    if stem == "cifar":  # the README's lines for the CIFAR stem
        model.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        model.maxpool = torch.nn.Identity()
    model.load_state_dict(torchvision_state_dict(net), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), net(x).features, rtol=1e-4, atol=1e-5)


def _random_bn_statistics(net):
    """BN statistics that are not the defaults, so a BN loaded wrongly shows in the features."""
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return net


def _readme_snippet() -> str:
    """The README's code block after "Loading the torchvision weights:", as a user copies it."""
    text = (Path(__file__).parents[1] / "README.md").read_text()
    return text.split("Loading the torchvision weights:", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]


def _torchvision_features(model, images, transform: dict) -> torch.Tensor:
    """The torchvision model's features on uint8 images at the crop size, normalised as the sidecar says."""
    mean, std = (torch.tensor(transform[k])[:, None, None] for k in ("mean", "std"))
    with torch.no_grad():
        return model.eval()((images.float() / 255 - mean) / std)


@pytest.mark.parametrize("stem,padding", [("cifar", 1), ("cifar", 2), ("imagenet", 3)])
def test_the_readme_snippet_and_the_printed_lines_build_the_model_the_export_fits(tmp_path, monkeypatch, stem, padding):
    """A torchvision model built with another stem padding loads strictly and gives other features (23% at padding 1 vs 2):
    the README's lines, the export's printed lines and torchvision_model must all build the run's stem."""
    torch.manual_seed(padding)
    net = _random_bn_statistics(create_backbone("resnet18", stem=stem, width=64, stem_padding=padding).eval())
    transform = EvalTransform.for_dataset("cifar10") if stem == "cifar" else EvalTransform.for_dataset("imagefolder", 64)
    written = write_torchvision(net, transform, tmp_path / "resnet18.pth")
    assert written["sidecar"] == str(tmp_path / "resnet18.json") and written["construction"]["maxpool"] == (stem == "imagenet")
    write_pt(PlainResNet.from_gated(net, "dense"), "dense", transform, {}, tmp_path / "dense.pt")
    images = torch.randint(0, 256, (3, 3, transform.crop_size, transform.crop_size), dtype=torch.uint8)
    expected = gatedssl.load(tmp_path / "dense.pt").embed(images)

    monkeypatch.chdir(tmp_path)  # the snippet names resnet18.pth and resnet18.json in the working folder
    readme: dict = {}
    exec(_readme_snippet(), readme)
    printed: dict = {}
    exec(written["torchvision_code"], printed)
    assert f"padding={padding}" in written["torchvision_code"] or stem == "imagenet"
    for model in (readme["model"], printed["model"], torchvision_model(tmp_path / "resnet18.pth")):
        got = _torchvision_features(model, images, readme["spec"]["transform"])
        assert ((got - expected).norm() / expected.norm()).item() <= 1e-4
    again = gatedssl.load(tmp_path / "resnet18.pth")  # the sidecar makes the torchvision file an Encoder too
    assert again.transform == transform and again.subnets == ["dense"]
    assert ((again.embed(images) - expected).norm() / expected.norm()).item() <= 1e-4


def test_torchvision_model_without_its_sidecar_is_one_line(tmp_path):
    net = create_backbone("resnet18", width=64)
    write_torchvision(net, EvalTransform.for_dataset("cifar10"), tmp_path / "r.pth")
    (tmp_path / "r.json").unlink()
    with pytest.raises(UserError, match="r.json is missing"):
        torchvision_model(tmp_path / "r.pth")
    (tmp_path / "summary.json").write_text("{}")
    with pytest.raises(UserError, match="would replace a file an earlier export did not write"):
        write_torchvision(net, EvalTransform.for_dataset("cifar10"), tmp_path / "summary.pth")
    assert (tmp_path / "summary.json").read_text() == "{}" and not (tmp_path / "summary.pth").exists()
    with pytest.raises(UserError, match="ends in .json"):
        write_torchvision(net, EvalTransform.for_dataset("cifar10"), tmp_path / "r.json")


def test_torchvision_refuses_what_its_constructors_cannot_build():
    odd = GatedResNet(GatedBasicBlock, (1, 1, 1, 1), width=64)  # torchvision has no ResNet-10
    with pytest.raises(UserError, match="no ResNet with these blocks"):
        torchvision_state_dict(odd)
    with pytest.raises(UserError, match="width 32"):
        torchvision_state_dict(create_backbone("resnet18", width=32))


@pytest.fixture(scope="module")
def wide_checkpoint(tmp_path_factory):
    """The 0.1.0 checkpoint grown to width 64 with the reference recipe's stem padding 2 (the cifar10 default)."""
    from gatedssl.config import PretrainConfig, upgrade_stored
    from gatedssl.factory import build_objective

    state = torch.load(FIXTURE, weights_only=True)
    state["config"].update(width=64, stem_padding=2)
    torch.manual_seed(0)
    objective = build_objective(PretrainConfig(**upgrade_stored(state["config"])))
    _random_bn_statistics(objective)
    state["model"] = objective.state_dict()
    path = tmp_path_factory.mktemp("wide") / "last.pt"
    torch.save(state, path)
    return path


def test_the_torchvision_export_writes_and_prints_its_construction(wide_checkpoint, tmp_path, capsys, monkeypatch):
    out = tmp_path / "resnet18.pth"
    assert main(["export", "--checkpoint", str(wide_checkpoint), "--format", "torchvision", "--out", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "padding=2" in printed and (tmp_path / "resnet18.json").is_file()
    code = printed[printed.index("import torch, torchvision") :]
    scope: dict = {}
    exec(code, scope)
    encoder = gatedssl.load(wide_checkpoint)
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    got = _torchvision_features(scope["model"], images, json.loads((tmp_path / "resnet18.json").read_text())["transform"])
    expected = encoder.embed(images)
    assert ((got - expected).norm() / expected.norm()).item() <= 1e-4


def test_static_export_is_measured_recorded_and_kept_by_eval(run, tmp_path, capsys):
    checkpoint = str(run / "checkpoints" / "last.pt")
    out = tmp_path / "static.pt"
    assert (
        main(["export", "--checkpoint", checkpoint, "--subnet", "static", "--keep-rate", "0.5", "--out", str(out), "--device", "cpu"]) == 0
    )
    printed = capsys.readouterr().out
    assert "kNN top-1" in printed and "linear probe" in printed and "MACs" in printed
    static = json.loads((run / "summary.json").read_text())["static"]
    assert static["keep_rate"] == 0.5 and static["subnet"] == "static" and 0 <= static["knn_top1"] <= 100
    assert 0 <= static["probe"]["top1"] <= 100 and 0 < static["macs_ratio"] < 1
    loaded = gatedssl.load(out)
    assert loaded.subnets == ["static"] and loaded.nets["static"].mid_channels == static["channels"]
    with FlopCounterMode(display=False) as counter:
        loaded.embed(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))  # an export's own sub-network is the default
    assert counter.get_total_flops() // 2 == static["macs"]
    assert main(["eval", "--checkpoint", checkpoint, "--device", "cpu"]) == 0
    assert json.loads((run / "summary.json").read_text())["static"] == static


def test_macs_ratio_picks_the_smallest_keep_rate_that_meets_it():
    net = create_backbone("resnet18", width=8)
    frequency = [torch.rand(c, generator=torch.Generator().manual_seed(c + i)) for i, c in enumerate(net.gated_channels)]
    candidates = sorted({0.0, 1.0, *torch.cat(frequency).tolist()})
    for target in (0.9, 0.6, 0.3):
        q = keep_rate_for(net, frequency, target, 32)
        assert static_macs_ratio(net, frequency, q, 32) <= target
        below = [c for c in candidates if c < q]
        assert not below or static_macs_ratio(net, frequency, below[-1], 32) > target
    assert keep_rate_for(net, frequency, 1.0, 32) == 0.0


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "corrupt",
        "keep_rate",
        "unreachable",
        "both",
        "torchvision_static",
        "torchvision_width",
        "onnx_missing",
        "out_unwritable",
        "out_folder",
        "bad_format",
        "static_of_dense_run",
        "multiple_of_dense",
        "name_of_other_format",
    ],
)
def test_bad_export_requests_are_one_line(run, tmp_path, capsys, monkeypatch, case):
    checkpoint = str(run / "checkpoints" / "last.pt")
    out = tmp_path / ("out.onnx" if case == "onnx_missing" else "out.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(FIXTURE.read_bytes()[:5000])
    (tmp_path / "file").write_text("x")
    state = torch.load(FIXTURE, weights_only=True)
    state["config"]["mode"] = "dense"  # a B1 run: its gates never trained
    torch.save(state, tmp_path / "dense_run.pt")
    args = {
        "missing": ["--checkpoint", str(tmp_path / "nope.pt")],
        "corrupt": ["--checkpoint", str(corrupt)],
        "keep_rate": ["--subnet", "static", "--keep-rate", "1.5"],
        "unreachable": ["--subnet", "static", "--macs-ratio", "0.01"],
        "both": ["--subnet", "static", "--keep-rate", "0.5", "--macs-ratio", "0.5"],
        "torchvision_static": ["--subnet", "static", "--format", "torchvision"],
        "torchvision_width": ["--format", "torchvision"],
        "onnx_missing": ["--format", "onnx"],
        "out_unwritable": ["--out", str(tmp_path / "file" / "x.pt")],
        "out_folder": ["--out", str(tmp_path)],
        "bad_format": ["--format", "keras"],
        "static_of_dense_run": ["--checkpoint", str(tmp_path / "dense_run.pt"), "--subnet", "static"],
        "multiple_of_dense": ["--channel-multiple", "16"],
        "name_of_other_format": ["--out", str(tmp_path / "x.onnx")],
    }[case]
    if case == "onnx_missing":
        monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if the extra were not installed
    argv = ["export", "--checkpoint", checkpoint, "--out", str(out), "--device", "cpu"]
    line = one_line_error(capsys, main(argv + args))
    expected = {
        "missing": "not found",
        "corrupt": "cannot be read",
        "keep_rate": "[0, 1]",
        "unreachable": "cannot be reached",
        "both": "not both",
        "torchvision_static": "dense",
        "torchvision_width": "width 8",
        "onnx_missing": "gatedssl[export]",
        "out_unwritable": "cannot write",
        "out_folder": "is a folder",
        "bad_format": "--format",
        "static_of_dense_run": "dense-only run",
        "multiple_of_dense": "add --subnet static",
        "name_of_other_format": "but --format is pt",
    }[case]
    assert expected in line, line
    assert not out.exists() and not (tmp_path / "x.onnx").exists()
