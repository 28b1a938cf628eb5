"""ONNX exports that describe themselves, load behind gatedssl.load's interface, and quantize to INT8."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("onnxruntime")

import onnx  # noqa: E402

import gatedssl  # noqa: E402
from gatedssl.cli import main  # noqa: E402
from gatedssl.data.sources import load_dataset  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "checkpoint_v0.1.0.pt"  # gatedssl 0.1.0: ResNet-18 width 8, embedded data, 1 epoch


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    (root / "checkpoints").mkdir()
    shutil.copy(FIXTURE, root / "checkpoints" / "last.pt")
    (root / "config.yaml").write_text(yaml.safe_dump(torch.load(FIXTURE, weights_only=True)["config"]))
    assert main(["eval", "--checkpoint", str(root / "checkpoints" / "last.pt"), "--device", "cpu"]) == 0
    return root


@pytest.fixture(scope="module")
def int8(run, tmp_path_factory):
    """The static sub-network exported in fp32 and in INT8 (calibrated on all 20 training images the run has)."""
    out = tmp_path_factory.mktemp("int8")
    argv = ["export", "--checkpoint", str(run / "checkpoints" / "last.pt"), "--subnet", "static", "--format", "onnx", "--no-probe"]
    assert main([*argv, "--out", str(out / "fp32.onnx")]) == 0
    assert main([*argv, "--out", str(out / "int8.onnx"), "--quantize", "int8"]) == 0
    return out


def metadata(path) -> dict:
    """gatedssl's metadata (onnxruntime's quantization adds keys of its own, onnx.*)."""
    return {p.key: json.loads(p.value) for p in onnx.load(path).metadata_props if not p.key.startswith("onnx.")}


def test_an_onnx_export_says_what_it_takes_and_what_it_is(run, tmp_path):
    assert (
        main(["export", "--checkpoint", str(run / "checkpoints" / "last.pt"), "--format", "onnx", "--out", str(tmp_path / "d.onnx")]) == 0
    )
    meta = metadata(tmp_path / "d.onnx")
    assert meta["format"] == "gatedssl-onnx/1" and meta["gatedssl_version"] == gatedssl.__version__
    assert meta["input_shape"] == ["N", 3, 32, 32] and meta["channel_order"] == "RGB" and meta["layout"] == "NCHW"
    assert meta["mean"] == pytest.approx([0.4914, 0.4822, 0.4465], abs=1e-3) and len(meta["std"]) == 3
    assert meta["subnet"] == "dense" and meta["macs_ratio"] == 1.0 and meta["macs"] > 0 and meta["arch"] == "resnet18"
    images = load_dataset("embedded", limit_per_class=2).test.images
    from_onnx = gatedssl.load(tmp_path / "d.onnx")
    assert from_onnx.subnets == ["dense"] and from_onnx.transform == gatedssl.load(run / "checkpoints" / "last.pt").transform
    torch.testing.assert_close(from_onnx.embed(images), gatedssl.load(run / "checkpoints" / "last.pt").embed(images), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="without a classifier head"):
        from_onnx.predict(images)


def test_an_int8_export_holds_quantized_convolutions_and_agrees_with_fp32(int8, run):
    graph = onnx.load(int8 / "int8.onnx").graph
    ops = [n.op_type for n in graph.node]
    convs = ops.count("Conv")
    assert convs > 0 and ops.count("QuantizeLinear") >= convs and ops.count("DequantizeLinear") >= 2 * convs  # inputs and weights
    assert not any(n.op_type == "QuantizeLinear" for n in onnx.load(int8 / "fp32.onnx").graph.node)
    meta = metadata(int8 / "int8.onnx")
    assert meta["quantized"] == "int8" and meta == {**metadata(int8 / "fp32.onnx"), "quantized": "int8"}
    images = load_dataset("embedded", limit_per_class=5).test.images
    a, b = gatedssl.load(int8 / "fp32.onnx").embed(images), gatedssl.load(int8 / "int8.onnx").embed(images)
    assert not torch.equal(a, b)  # it is another network
    cosine = torch.nn.functional.cosine_similarity(a, b).min().item()
    assert cosine > 0.97, cosine  # measured 2026-12-06: about 0.99
    summary = json.loads((run / "summary.json").read_text())
    recorded = summary["int8"]["static"]["int8"]
    assert recorded["calibration_images"] == 20 and recorded["latency_ms"]["int8"] > 0 and recorded["ops"]["QuantizeLinear"] >= convs
    assert Path(summary["int8"]["static"]["file"]).is_absolute()  # the summary is read from any folder
    assert recorded["metric"] == "knn_top1" and recorded["knn_top1"] is not None
    assert recorded["change"] == pytest.approx(recorded["knn_top1"] - summary["int8"]["static"]["knn_top1"])


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--quantize", "int8"], "add --format onnx"),
        (["--format", "onnx", "--quantize", "int4"], "--quantize must be one of int8"),
        (["--format", "onnx", "--quantize", "int8", "--calibration-images", "0"], "at least 1"),
        (["--format", "onnx", "--quantize", "int8", "--calibration-images", "100000"], "give at most that many"),
        (["--format", "onnx", "--calibration-images", "10"], "add --quantize int8"),
    ],
)
def test_bad_quantization_requests_are_one_line_and_write_nothing(run, tmp_path, capsys, extra, needle):
    from conftest import cli_error_lines

    before = (run / "summary.json").read_text()
    out = tmp_path / "x.onnx"
    cli_error_lines(capsys, ["export", "--checkpoint", str(run / "checkpoints" / "last.pt"), "--out", str(out), *extra], needle)
    assert not out.exists() and (run / "summary.json").read_text() == before


def test_a_torn_or_foreign_onnx_file_is_one_line(tmp_path, run):
    from gatedssl.errors import UserError

    assert (
        main(["export", "--checkpoint", str(run / "checkpoints" / "last.pt"), "--format", "onnx", "--out", str(tmp_path / "d.onnx")]) == 0
    )
    data = (tmp_path / "d.onnx").read_bytes()
    (tmp_path / "torn.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="onnxruntime cannot read it"):
        gatedssl.load(tmp_path / "torn.onnx")
    model = onnx.load(tmp_path / "d.onnx")
    del model.metadata_props[:]
    onnx.save(model, tmp_path / "foreign.onnx")
    with pytest.raises(UserError, match="no gatedssl metadata"):
        gatedssl.load(tmp_path / "foreign.onnx")
    with pytest.raises(UserError, match="no such file"):
        gatedssl.load(tmp_path / "absent.onnx")


def test_a_pt_export_says_of_itself_what_its_onnx_twin_says(run, tmp_path):
    checkpoint = str(run / "checkpoints" / "last.pt")
    for fmt in ("pt", "onnx"):
        argv = ["export", "--checkpoint", checkpoint, "--subnet", "static", "--format", fmt, "--no-probe"]
        assert main([*argv, "--out", str(tmp_path / f"s.{fmt}")]) == 0
    pt = gatedssl.load(tmp_path / "s.pt")
    assert pt.metadata == metadata(tmp_path / "s.onnx") == gatedssl.load(tmp_path / "s.onnx").metadata
    assert pt.metadata["subnet"] == "static" and 0 < pt.metadata["macs_ratio"] < 1
    assert pt.metadata["macs"] == pt.nets["static"].macs(32)
    from_run = gatedssl.load(checkpoint).metadata  # a checkpoint says the same of its dense network, and names its sub-networks
    assert from_run["subnet"] == "dense" and from_run["macs"] == round(pt.metadata["macs"] / pt.metadata["macs_ratio"])
    assert from_run["subnets"] == ["dense", "gated", "gated-masked"] and from_run["mean"] == pt.metadata["mean"]


def test_export_overwrites_only_its_own_kind_of_file_and_an_interrupt_says_nothing_was_half_written(run, tmp_path, capsys, monkeypatch):
    from conftest import cli_error_lines

    import gatedssl.export.run as export_run

    mine = tmp_path / "mine.txt"
    mine.write_text("a user's notes")
    argv = ["export", "--checkpoint", str(run / "checkpoints" / "last.pt"), "--format", "onnx"]
    cli_error_lines(capsys, [*argv, "--out", str(mine)], "is not a onnx file")
    assert mine.read_text() == "a user's notes"
    for name, fmt in (("notes.onnx", "onnx"), ("notes.pt", "pt"), ("notes.ts", "torchscript")):  # named as a model, but not one
        (tmp_path / name).write_text("a user's notes")
        cli_error_lines(capsys, [*argv[:3], "--format", fmt, "--out", str(tmp_path / name)], "is not a model file")
        assert (tmp_path / name).read_text() == "a user's notes"
    for fmt, out in (("onnx", "again.onnx"), ("pt", "again.pt")):  # an export of its own kind is overwritten, as before
        assert main([*argv[:3], "--format", fmt, "--no-probe", "--out", str(tmp_path / out)]) == 0
        assert main([*argv[:3], "--format", fmt, "--no-probe", "--out", str(tmp_path / out)]) == 0

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export_run, "onnx_bytes", interrupted)
    assert main([*argv, "--out", str(tmp_path / "x.onnx")]) == 130
    err = capsys.readouterr().err
    assert "nothing half-written" in err and "--resume" not in err and not (tmp_path / "x.onnx").exists()


def test_a_run_whose_data_folder_moved_is_told_to_give_data_dir(tmp_path, capsys):
    from conftest import cli_error_lines

    state = torch.load(FIXTURE, weights_only=True)
    state["config"].update(dataset="imagefolder", data_dir=str(tmp_path / "images-that-moved"))
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "run" / "checkpoints" / "last.pt")
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(state["config"]))
    argv = ["export", "--checkpoint", str(tmp_path / "run" / "checkpoints" / "last.pt"), "--format", "onnx", "--quantize", "int8"]
    cli_error_lines(capsys, [*argv, "--out", str(tmp_path / "d.onnx")], "is gone", "--data-dir")
    cli_error_lines(capsys, [*argv, "--out", str(tmp_path / "d.onnx"), "--data-dir", str(tmp_path / "nowhere")], "no such folder")
    assert not (tmp_path / "d.onnx").exists()


def test_an_onnx_static_export_rounds_channel_counts_to_16_where_it_can_meet_the_macs(run, tmp_path):
    """The default --channel-multiple: 16 for ONNX where rounding meets the MACs asked for (said in one line), the
    gates' exact counts where it cannot (said in one line), for a --keep-rate (which names the channels itself) and
    for torch formats; an explicit --channel-multiple always wins."""
    from gatedssl.export import run as export_run

    checkpoint = str(run / "checkpoints" / "last.pt")
    said = []

    def exported(name: str, fmt: str = "onnx", **kw) -> dict:
        said.clear()
        return export_run.export(checkpoint, str(tmp_path / name), subnet="static", fmt=fmt, probe=False, log=said.append, **kw)

    def rounding_lines() -> list[str]:
        return [m for m in said if "multiples of 16" in m]

    rounded = exported("rounded.onnx", macs_ratio=0.9)
    assert rounded["channel_multiple"] == 16 and len(rounding_lines()) == 1 and "rounded up" in rounding_lines()[0]
    exact = exported("exact.onnx", macs_ratio=0.9, channel_multiple=1)
    assert exact["channel_multiple"] == 1 and not rounding_lines() and rounded["channels"] != exact["channels"]
    widths = [8, 8, 16, 16, 32, 32, 64, 64]  # ResNet-18 width 8: each block's middle channels
    assert all(k % 16 == 0 or k == c for k, c in zip(rounded["channels"], widths)), rounded["channels"]
    assert not all(k % 16 == 0 or k == c for k, c in zip(exact["channels"], widths)), exact["channels"]
    assert rounded["macs_ratio"] <= 0.9 and exact["macs_ratio"] <= 0.9
    assert exported("torch.pt", fmt="pt", macs_ratio=0.9)["channels"] == exact["channels"]  # torch measured no steady gain
    kept = exported("kept.onnx", keep_rate=0.3)  # the keep rate names the channels: rounding would add MACs
    assert kept["channel_multiple"] == 1 and not rounding_lines()
    assert kept["channels"] == exported("kept.pt", fmt="pt", keep_rate=0.3)["channels"]
    budget = exported("budget.onnx")  # the run's budget, 0.5: out of reach in multiples of 16 at this width
    assert budget["channel_multiple"] == 1 and budget["macs_ratio"] <= 0.5
    assert len(rounding_lines()) == 1 and rounding_lines()[0].endswith(
        "cannot reach 0.5 of the MACs (the target): keeping the gates' exact counts"
    )
    with pytest.raises(export_run.UserError, match="cannot be reached"):
        exported("asked16.onnx", channel_multiple=16)  # asked for, so not overridden
    with pytest.raises(export_run.UserError, match="cannot be reached"):
        exported("never.onnx", macs_ratio=0.01)  # exact counts cannot either: the search's own error, nothing before it
    assert not rounding_lines()
    searched = exported("fast.onnx", latency_ms=1e6)  # a latency search starts with rounded candidates
    assert searched["channel_multiple"] == 16 and len(rounding_lines()) == 1


def test_a_latency_target_no_rounded_candidate_meets_is_searched_again_in_exact_counts(run, tmp_path, monkeypatch):
    """Rounded candidates first (faster per MAC); where none meets the target (16s reach no small network of this
    width-8 run), the exact counts' smaller candidates, said in one line; where neither meets it, one error."""
    from gatedssl.export import run as export_run

    dense_macs = 8_871_936  # ResNet-18 width 8 at 32 px: a fake runtime of 10 ms per dense network
    monkeypatch.setattr(export_run, "timer", lambda *args, **kw: lambda net: 10.0 * net.macs(32) / dense_macs)
    said = []
    argv = dict(subnet="static", fmt="onnx", probe=False, log=said.append)
    found = export_run.export(str(run / "checkpoints" / "last.pt"), str(tmp_path / "t.onnx"), latency_ms=6.0, **argv)
    assert found["channel_multiple"] == 1 and found["macs_ratio"] <= 0.6
    assert sum("trying the gates' exact counts" in m for m in said) == 1
    with pytest.raises(export_run.UserError, match="no static network meets it"):
        export_run.export(str(run / "checkpoints" / "last.pt"), str(tmp_path / "never.onnx"), latency_ms=0.01, **argv)
    assert sum("trying the gates' exact counts" in m for m in said) == 2 and not (tmp_path / "never.onnx").exists()


def test_the_summary_names_the_export_by_its_absolute_path(run, tmp_path, monkeypatch):
    """An --out relative to where the command ran is recorded absolute: the summary is read from the run's folder."""
    monkeypatch.chdir(tmp_path)
    argv = ["export", "--checkpoint", str(run / "checkpoints" / "last.pt"), "--subnet", "static", "--no-probe", "--out", "rel.pt"]
    assert main(argv) == 0
    assert json.loads((run / "summary.json").read_text())["static"]["file"] == str(tmp_path / "rel.pt")


def test_every_kind_of_model_file_takes_the_same_inputs_the_same_way(run, tmp_path):
    """A checkpoint, a .pt and an ONNX export: float64 is run as float32 by all three, a malformed tensor is one
    TypeError, and a float image at a size the ONNX file was not exported for is a ValueError naming its size (not
    onnxruntime's own message)."""
    checkpoint = str(run / "checkpoints" / "last.pt")
    for fmt in ("pt", "onnx"):
        assert main(["export", "--checkpoint", checkpoint, "--format", fmt, "--no-probe", "--out", str(tmp_path / f"d.{fmt}")]) == 0
    models = {"checkpoint": gatedssl.load(checkpoint), "pt": gatedssl.load(tmp_path / "d.pt"), "onnx": gatedssl.load(tmp_path / "d.onnx")}
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for kind, model in models.items():
        torch.testing.assert_close(model.embed(x.double()), model.embed(x), msg=kind)
        assert model.embed(x[0]).shape == model.embed(x[:1]).shape  # one image without its batch axis
        with pytest.raises(TypeError, match=r"\(N, 3, H, W\)"):
            model.embed(torch.randn(2, 1, 32, 32))
        assert "backbone" not in model.subnets
        assert model.embed([]).shape == model.embed(x[:0]).shape == (0, model.embed(x).shape[1])  # no images, no features
        with pytest.raises(TypeError, match=r"got torch.uint8 \(32, 32, 3\)"):  # the shape given, channels last
            model.embed(torch.zeros(32, 32, 3, dtype=torch.uint8))
    odd = torch.randn(1, 3, 33, 40)
    assert models["checkpoint"].embed(odd).shape == models["pt"].embed(odd).shape == (1, models["pt"].nets["dense"].feature_dim)
    with pytest.raises(ValueError, match=r"takes images of shape Nx3x32x32"):
        models["onnx"].embed(odd)
    assert not hasattr(models["checkpoint"], "names")
