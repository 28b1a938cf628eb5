"""`gatedssl finetune`: label subsets, the gated budget through fine-tuning, resume, bad input, and the classifier a user loads."""

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from conftest import cli_error_lines

import gatedssl
from gatedssl import losses
from gatedssl.cli import main
from gatedssl.config import PretrainConfig
from gatedssl.data.labels import balanced_subset, fraction_problems, read_label_list, write_label_list
from gatedssl.data.sources import load_dataset
from gatedssl.errors import EXIT_SIGNAL, RunStopped, UserError
from gatedssl.training import finetune as ft
from gatedssl.training import pretrain

TINY = dict(width=8, proj_dim=64, epochs=2, batch_size=50, limit_per_class=30, device="cpu")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrained")
    for mode in ("dual", "dense"):
        pretrain(PretrainConfig(mode=mode, out=str(root / mode), **TINY), progress=False, log=lambda m: None)
    return root


def config(runs, out, **kw) -> ft.FinetuneConfig:
    values = dict(checkpoint=str(runs / "dual" / "checkpoints" / "last.pt"), out=str(out), epochs=2, batch_size=50, device="cpu")
    return ft.FinetuneConfig(**{**values, **kw})


def quiet(cfg, **kw):
    return ft.finetune(cfg, progress=False, log=lambda m: None, **kw)


# ------------------------------------------------------------------------------------------ label subsets
def test_label_subsets_are_class_balanced_reproducible_and_round_trip(tmp_path):
    labels = torch.arange(10).repeat_interleave(torch.tensor([50, 40, 30, 20, 100, 50, 50, 50, 50, 60]))
    a, b, c = (balanced_subset(labels, 10, 0.1, seed) for seed in (0, 0, 1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.bincount(labels[a], minlength=10).tolist() == [5, 4, 3, 2, 10, 5, 5, 5, 5, 6]
    assert torch.equal(balanced_subset(labels, 10, 1.0, 3), torch.arange(len(labels)))
    names = [f"c{y}/{i}.jpg" for i, y in enumerate(labels.tolist())]
    write_label_list(tmp_path / "labels.txt", names, a)
    assert torch.equal(read_label_list(tmp_path / "labels.txt", names, [f"c{k}" for k in range(10)]), a)


def test_label_problems_name_the_cause(tmp_path):
    labels = torch.tensor([0] * 30 + [1] * 3)
    assert "no image of class b" in fraction_problems(0.1, labels, ["a", "b"])[0]
    assert fraction_problems(0.2, labels, ["a", "b"]) == []
    assert "(0, 1]" in fraction_problems(0.0, labels, ["a", "b"])[0]
    listed = tmp_path / "list.txt"
    listed.write_text("a/1.jpg\nz/2.jpg\n")
    with pytest.raises(UserError, match="not in the data: z"):
        read_label_list(listed, ["a/1.jpg"], ["a", "b"])
    listed.write_text("a/1.jpg\na/9.jpg\n")
    with pytest.raises(UserError, match="1 of 2 image"):
        read_label_list(listed, ["a/1.jpg"], ["a", "b"])


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--label-fraction", "0"], "(0, 1]"),
        (["--label-fraction", "1.5"], "(0, 1]"),
        (["--label-fraction", "0.001"], "leaves no image of class"),
        (["--freeze-gates"], "--freeze-gates"),
        (["--subnet", "width0.5"], "has no such width"),
        (["--subnet", "half"], "--subnet must be one of"),
        (["--keep-rate", "0.5"], "add --subnet static"),
    ],
)
def test_bad_requests_are_one_line_and_write_nothing(runs, tmp_path, capsys, extra, needle):
    out = tmp_path / "ft"
    cli_error_lines(capsys, ["finetune", "--checkpoint", str(runs / "dual/checkpoints/last.pt"), "--out", str(out), *extra], needle)
    assert not out.exists()


def test_gates_asked_of_a_dense_run_and_foreign_label_lists_are_refused(runs, tmp_path, capsys):
    out = tmp_path / "ft"
    dense = str(runs / "dense/checkpoints/last.pt")
    cli_error_lines(capsys, ["finetune", "--checkpoint", dense, "--out", str(out), "--subnet", "gated"], "it has no gates")
    listed = tmp_path / "list.txt"
    listed.write_text("airplane/00000\nairplane/99999\n")
    cli_error_lines(capsys, ["finetune", "--checkpoint", dense, "--out", str(out), "--label-list", str(listed)], "not in the labelled")
    cli_error_lines(capsys, ["finetune", "--checkpoint", str(tmp_path / "none.pt"), "--out", str(out)], "no such file")
    assert not out.exists()


def test_unlabeled_data_is_refused(runs, tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "photos" / "train"
    folder.mkdir(parents=True)
    for i in range(4):
        Image.new("RGB", (40, 40), (i * 60, 0, 0)).save(folder / f"{i}.png")
    out = tmp_path / "ft"
    argv = ["finetune", "--checkpoint", str(runs / "dual/checkpoints/last.pt"), "--out", str(out)]
    cli_error_lines(capsys, [*argv, "--dataset", "imagefolder", "--data-dir", str(tmp_path / "photos")], "fine-tuning needs labels")
    assert not out.exists()


def test_a_finished_fine_tune_is_kept_unless_overwrite(runs, tmp_path, capsys):
    out = tmp_path / "ft"
    summary = quiet(config(runs, out, epochs=1))
    before = (out / "summary.json").read_bytes()
    cli_error_lines(capsys, ["finetune", "--checkpoint", str(runs / "dual/checkpoints/last.pt"), "--out", str(out)], "finished run")
    assert (out / "summary.json").read_bytes() == before
    assert summary["labels_used"] == len((out / "labels.txt").read_text().splitlines()) == 300
    assert main(["finetune", "--checkpoint", str(runs / "dual/checkpoints/last.pt"), "--out", str(out), "--resume", "auto"]) == 0


def test_resume_auto_stops_a_fine_tune_that_failed_twice_the_same_way(runs, tmp_path, capsys, monkeypatch):
    def broken_step(*args, **kw):
        raise RuntimeError("CUDA error: an illegal memory access")

    monkeypatch.setattr(ft, "train_step", broken_step)
    out = tmp_path / "ft"
    argv = ["finetune", "--checkpoint", str(runs / "dual/checkpoints/last.pt"), "--out", str(out), "--resume", "auto"]
    for attempt in (1, 2):
        assert main(argv) == 1 and "illegal memory access" in capsys.readouterr().err
        assert len((out / "failures.jsonl").read_text().splitlines()) == attempt
    cli_error_lines(capsys, argv, "the last two attempts failed the same way", "illegal memory access")
    assert len((out / "failures.jsonl").read_text().splitlines()) == 2


# ------------------------------------------------------------------------------------------ what it learns and spends
def test_a_short_fine_tune_beats_the_network_it_started_from(runs, tmp_path):
    cfg = config(runs, tmp_path / "ft", epochs=12, label_smoothing=0.0)
    setup = ft.prepare(cfg, lambda m: None)
    start = ft.evaluate_classifier(setup.model, setup.splits, torch.device("cpu"))["top1"]
    summary = quiet(cfg)
    # 300 test images, 10 classes; init is chance (about 10). Measured gains: +15.3 (1 thread), +12.0 (2 threads):
    # 7 points leaves a margin beyond the spread rounding alone makes (BENCHMARKS.md, "Learning-test spread")
    assert summary["top1"] > start + 7, (start, summary["top1"])


def test_the_gated_budget_holds_through_fine_tuning(runs, tmp_path):
    summary = quiet(config(runs, tmp_path / "ft", subnet="gated", epochs=3))
    assert abs(summary["macs_ratio"] - 0.5) <= 0.02 and abs(summary["before_calibration"]["macs_ratio"] - 0.5) <= 0.1


def test_the_budget_loss_pulls_the_gates_back_and_a_mutant_without_it_does_not(runs, tmp_path):
    """Gates pushed off the budget (every logit raised by 1: about 0.7 of the MACs in training) come back toward it
    with the budget loss, and stay without it (the same run, the same random draws)."""
    state = torch.load(runs / "dual/checkpoints/last.pt", weights_only=True)
    for key in state["model"]:
        if key.endswith("gate.offset"):
            state["model"][key].fill_(-1.0)
    torch.save(state, tmp_path / "off.pt")
    settings = dict(checkpoint=str(tmp_path / "off.pt"), subnet="gated", epochs=8, lr=0.4, budget_weight=50.0, calibrate_gates=False)

    def train_ratios(out):
        quiet(config(runs, out, **settings))
        return [json.loads(line)["macs_ratio"] for line in (out / "metrics.jsonl").read_text().splitlines()]

    kept = train_ratios(tmp_path / "kept")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(losses, "budget_loss", lambda macs, *a, **k: macs.sum() * 0)
        free = train_ratios(tmp_path / "free")
    assert free[0] > 0.65 and kept[0] > 0.65, (kept, free)
    assert kept[-1] < kept[0] - 0.08 and abs(free[-1] - free[0]) < 0.03, (kept, free)


def test_frozen_gates_keep_every_gate_weight(runs, tmp_path):
    cfg = config(runs, tmp_path / "ft", subnet="gated", freeze_gates=True, epochs=1)
    quiet(cfg)
    pretrained = torch.load(cfg.checkpoint, weights_only=True)["model"]
    tuned = torch.load(tmp_path / "ft/checkpoints/last.pt", weights_only=True)["model"]
    gates = [k for k in tuned if ".gate." in k and "num_batches" not in k]
    assert gates and all(torch.equal(tuned[k], pretrained[k]) for k in gates)
    assert not torch.equal(tuned["backbone.stem_conv.weight"], pretrained["backbone.stem_conv.weight"])


# ------------------------------------------------------------------------------------------ resume and the shipped model
def test_a_stopped_fine_tune_resumes_to_the_uninterrupted_weights(runs, tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    quiet(config(runs, straight, epochs=3, subnet="gated"))
    real_append = ft.append_line

    def stop_after_first_epoch(path, record):
        real_append(path, record)
        if record.get("epoch") == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(ft, "append_line", stop_after_first_epoch)
    stopped = tmp_path / "stopped"
    with pytest.raises(RunStopped) as info:
        quiet(config(runs, stopped, epochs=3, subnet="gated"))
    assert info.value.exit_code == EXIT_SIGNAL
    monkeypatch.setattr(ft, "append_line", real_append)
    quiet(config(runs, stopped, epochs=3, subnet="gated"), resume=True)
    a = torch.load(straight / "checkpoints/last.pt", weights_only=True)["model"]
    b = torch.load(stopped / "checkpoints/last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [json.loads(line)["epoch"] for line in (stopped / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


@pytest.mark.parametrize("subnet", ["dense", "gated", "static"])
def test_the_loaded_classifier_predicts_as_the_fine_tune_measured(runs, tmp_path, subnet):
    out = tmp_path / subnet
    summary = quiet(config(runs, out, subnet=subnet, epochs=2))
    model = gatedssl.load(out / "checkpoints/last.pt")
    test = load_dataset("embedded", limit_per_class=30).test
    names, probabilities = model.predict(test.images)
    assert probabilities.shape == (len(test.labels), 10) and torch.allclose(probabilities.sum(1), torch.ones(len(test.labels)))
    top1 = 100 * sum(n == test.classes[y] for n, y in zip(names, test.labels.tolist())) / len(names)
    assert top1 == pytest.approx(summary["top1"], abs=1.0)  # BN folded and real skipping: a rounding may flip a tie
    assert model.embed(test.images[:4]).shape[0] == 4
    if subnet != "dense":
        assert abs(summary["macs_ratio"] - 0.5) < 0.1


# ------------------------------------------------------------------------------------------ exported classifiers
@pytest.mark.parametrize("subnet", ["dense", "static"])
def test_exported_classifiers_predict_as_the_loaded_fine_tune_and_carry_their_classes(runs, tmp_path, subnet, capsys):
    pytest.importorskip("onnxruntime")
    import onnx
    import onnxruntime

    out = tmp_path / "ft"
    quiet(config(runs, out, subnet=subnet, epochs=2))
    checkpoint = str(out / "checkpoints/last.pt")
    loaded = gatedssl.load(checkpoint)
    test = load_dataset("embedded", limit_per_class=30).test
    names, _ = loaded.predict(test.images)
    x = loaded.transform(test.images)
    for fmt in ("pt", "torchscript", "onnx"):
        assert main(["export", "--checkpoint", checkpoint, "--out", str(tmp_path / f"c.{fmt}"), "--format", fmt]) == 0
    assert "classifier (10 classes)" in capsys.readouterr().out
    assert gatedssl.load(tmp_path / "c.pt").predict(test.images)[0] == names
    scripted = torch.jit.load(tmp_path / "c.torchscript")
    assert [scripted.classes[i] for i in scripted(x).argmax(1).tolist()] == names
    session = onnxruntime.InferenceSession(str(tmp_path / "c.onnx"), providers=["CPUExecutionProvider"])
    classes = json.loads({p.key: p.value for p in onnx.load(tmp_path / "c.onnx").metadata_props}["classes"])
    assert [classes[i] for i in session.run(None, {"images": x.numpy()})[0].argmax(1).tolist()] == names
    onnx_model = gatedssl.load(tmp_path / "c.onnx")  # onnxruntime behind the checkpoint's interface: predict and embed
    assert onnx_model.predict(test.images)[0] == names and onnx_model.classes == loaded.classes
    torch.testing.assert_close(onnx_model.embed(test.images[:4]), loaded.embed(test.images[:4]), rtol=1e-4, atol=1e-4)


def test_a_fine_tuned_gated_network_is_not_flattened_into_a_static_file(runs, tmp_path, capsys):
    out = tmp_path / "ft"
    quiet(config(runs, out, subnet="gated", epochs=1))
    cli_error_lines(capsys, ["export", "--checkpoint", str(out / "checkpoints/last.pt"), "--out", str(tmp_path / "c.pt")], "gatedssl.load")
    assert not (tmp_path / "c.pt").exists()
    cli_error_lines(capsys, ["eval", "--checkpoint", str(out / "checkpoints/last.pt")], "fine-tune's checkpoint")


def test_a_fine_tuned_resnet18_exports_as_a_torchvision_classifier_with_fc_filled(tmp_path):
    import torchvision

    from gatedssl.export.formats import torchvision_model

    pretrain(
        PretrainConfig(mode="dense", out=str(tmp_path / "run"), width=64, epochs=1, batch_size=25, limit_per_class=5, device="cpu"),
        progress=False,
        log=lambda m: None,
    )
    quiet(ft.FinetuneConfig(checkpoint=str(tmp_path / "run/checkpoints/last.pt"), out=str(tmp_path / "ft"), epochs=1, batch_size=25))
    weights = tmp_path / "resnet18.pth"
    assert main(["export", "--checkpoint", str(tmp_path / "ft/checkpoints/last.pt"), "--out", str(weights), "--format", "torchvision"]) == 0
    model = torchvision.models.resnet18(num_classes=10)
    model.conv1 = torch.nn.Conv2d(3, 64, 3, padding=1, bias=False)
    model.maxpool = torch.nn.Identity()
    model.load_state_dict(torch.load(weights, weights_only=True), strict=True)
    loaded = gatedssl.load(tmp_path / "ft/checkpoints/last.pt")
    images = load_dataset("embedded", limit_per_class=5).test.images
    expected, _ = loaded.predict(images)
    assert [loaded.classes[i] for i in model.eval()(loaded.transform(images)).argmax(1).tolist()] == expected
    assert gatedssl.load(weights).predict(images)[0] == expected
    assert torchvision_model(weights).fc.out_features == 10


# ------------------------------------------------------------------------------------------ sweeps and reports
def test_a_sweep_plans_every_trained_sub_network_and_one_random_baseline_each(tmp_path):
    from gatedssl.training.sweep import sweep_finetunes

    runs = [(name, PretrainConfig(out=str(tmp_path / name), seed=3)) for name in ("dense", "b0.5", "gated-b0.5", "posthoc-b0.5")]
    summaries = {
        "dense": {"mode": "dense", "subnets": ["dense", "gated"]},
        "b0.5": {"mode": "dual", "subnets": ["dense", "gated"]},
        "gated-b0.5": {"mode": "gated", "subnets": ["dense", "gated"]},
        "posthoc-b0.5": {"mode": "posthoc", "subnets": ["dense", "gated"]},
    }
    jobs = sweep_finetunes(runs, summaries, [0.1, 1.0], tmp_path)
    planned = sorted((Path(j.out).relative_to(tmp_path).as_posix(), j.init, j.seed) for j in jobs)
    expected = [
        f"{run}/finetune/{sub}-f{f}"
        for run, subs in [("dense", ["dense"]), ("b0.5", ["dense", "gated"]), ("gated-b0.5", ["gated"]), ("posthoc-b0.5", ["gated"])]
        for sub in subs
        for f in ("0.1", "1")
    ]
    expected += [f"finetune-random/{sub}-f{f}" for sub in ("dense", "gated") for f in ("0.1", "1")]
    assert [p for p, _, _ in planned] == sorted(expected)
    assert all((init == "random") == p.startswith("finetune-random") and seed == 3 for p, init, seed in planned)
    baseline = {Path(j.out).name: j.checkpoint for j in jobs if j.init == "random"}
    assert baseline["gated-f0.1"].startswith(str(tmp_path / "b0.5")) and baseline["dense-f1"].startswith(str(tmp_path / "dense"))


def test_the_report_adds_the_fine_tunes_of_its_runs_and_refuses_a_fine_tune_as_a_run(runs, tmp_path, capsys):
    import shutil

    from gatedssl.reporting.report import write_report

    sweep = tmp_path / "sweep"
    shutil.copytree(runs / "dual", sweep / "b0.5")
    tuned = quiet(
        config(runs, sweep / "b0.5" / "finetune" / "gated-f1", checkpoint=str(sweep / "b0.5/checkpoints/last.pt"), subnet="gated", epochs=1)
    )
    write_report([sweep], tmp_path / "report")
    rows = json.loads((tmp_path / "report/table.json").read_text())["finetune"]
    assert [(r["run"], r["subnet"], r["training"], r["top1"]) for r in rows] == [("b0.5", "gated", "pretrained", tuned["top1"])]
    frozen = json.loads((sweep / "b0.5/summary.json").read_text())["gated"]
    assert rows[0]["run_knn"] == frozen["knn_top1"]  # beside the fine-tune: the frozen features it started from
    assert "## Fine-tuning" in (tmp_path / "report/report.md").read_text() and (tmp_path / "report/finetune.png").is_file()
    cli_error_lines(capsys, ["report", str(sweep / "b0.5/finetune/gated-f1"), "--out", str(tmp_path / "r2")], "fine-tune's summary")


def test_transfer_to_a_folder_of_other_classes_keeps_the_runs_normalisation(runs, tmp_path):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 12), ("test", 4)):
        for c, colour in enumerate(("red", "green", "blue")):
            folder = tmp_path / "shapes" / split / colour
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = torch.randint(0, 60, (40, 40, 3), generator=g, dtype=torch.uint8)
                pixels[..., c] += 150
                Image.fromarray(pixels.numpy()).save(folder / f"{i}.png")
    out = tmp_path / "ft"
    summary = quiet(config(runs, out, dataset="imagefolder", data_dir=str(tmp_path / "shapes"), epochs=3, batch_size=12))
    assert summary["classes"] == ["blue", "green", "red"] and summary["labels_used"] == 36 and summary["test_images"] == 12
    model = gatedssl.load(out / "checkpoints/last.pt")
    run_stats = load_dataset("embedded", limit_per_class=1)
    assert tuple(model.transform.mean) == tuple(run_stats.mean), (model.transform, run_stats.mean)
    assert model.transform.crop_size == 32
    image = Image.open(tmp_path / "shapes/test/red/0.png")
    names, probabilities = model.predict([image, image])
    assert names[0] in ("blue", "green", "red") and probabilities.shape == (2, 3)


def test_out_never_takes_the_pretraining_run_nor_a_users_files(runs, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(runs / "dual", run)
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    checkpoint = str(run / "checkpoints/last.pt")
    for out in (run, tmp_path, run / "checkpoints"):
        cli_error_lines(capsys, ["finetune", "--checkpoint", checkpoint, "--out", str(out), "--overwrite"], "pretraining run")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    cli_error_lines(capsys, ["finetune", "--checkpoint", checkpoint, "--out", str(mine), "--overwrite"], "did not write (notes.txt)")
    (tmp_path / "file").write_text("x")
    cli_error_lines(capsys, ["finetune", "--checkpoint", checkpoint, "--out", str(tmp_path / "file")], "is a file")
    cli_error_lines(capsys, ["finetune", "--checkpoint", checkpoint, "--out", ""], "give a folder")
    cli_error_lines(capsys, ["finetune", "--checkpoint", checkpoint, "--out", str(tmp_path / "x"), "--resume", "--overwrite"], "give one")
    cli_error_lines(capsys, ["finetune", "--checkpoint", checkpoint, "--out", str(tmp_path / "x"), "--device", "tpu"], "--device")
    assert {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    assert (mine / "notes.txt").read_text() == "keep me" and sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_fine_tunes_of_other_data_or_length_are_rows_of_their_own_not_seeds_of_one():
    from gatedssl.reporting.finetune import finetune_rows

    def summary(**kw):
        base = dict(checkpoint="/r/run/checkpoints/last.pt", subnet="dense", init="pretrained", label_fraction=1.0, labels_used=200)
        base.update(epochs=10, top1=12.0, macs_ratio=1.0, train_seconds=1.0, dataset="embedded", run_dataset="embedded", classes=["a"] * 10)
        return {**base, **kw}

    rows = finetune_rows(
        [
            summary(),
            summary(top1=14.0),
            summary(dataset="imagefolder", classes=["x", "y", "z"], top1=40.0),
            summary(epochs=30, top1=20.0),
        ]
    )
    assert sorted((r["training"], r["epochs"], r["seeds"], r["top1"]) for r in rows) == [
        ("pretrained", 10, 2, 13.0),
        ("pretrained", 30, 1, 20.0),
        ("pretrained, transfer to imagefolder (3 classes)", 10, 1, 40.0),
    ]


def test_an_int8_classifier_is_measured_on_the_fine_tunes_own_test_images_and_recorded(runs, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    import onnx

    out = tmp_path / "ft"
    quiet(config(runs, out, subnet="static", epochs=2))
    argv = ["export", "--checkpoint", str(out / "checkpoints/last.pt"), "--format", "onnx", "--quantize", "int8"]
    assert main([*argv, "--out", str(tmp_path / "c8.onnx")]) == 0
    printed = capsys.readouterr().out
    assert "top-1" in printed and "int8" in printed
    recorded = json.loads((out / "summary.json").read_text())["int8"]["static"]
    assert recorded["int8"]["metric"] == "top1" and recorded["int8"]["change"] == pytest.approx(recorded["int8"]["top1"] - recorded["top1"])
    assert recorded["top1"] == pytest.approx(json.loads((out / "summary.json").read_text())["top1"], abs=0.5)  # fp32 ONNX = the fine-tune
    assert (
        "static" not in json.loads((out / "summary.json").read_text())
        or "classes" not in json.loads((out / "summary.json").read_text())["static"]
    )
    assert sum(n.op_type == "QuantizeLinear" for n in onnx.load(tmp_path / "c8.onnx").graph.node) > 0
    test = load_dataset("embedded", limit_per_class=30).test
    names, _ = gatedssl.load(tmp_path / "c8.onnx").predict(test.images)
    correct = sum(test.classes[y] == n for y, n in zip(test.labels.tolist(), names))
    assert round(100 * correct / len(names), 2) == pytest.approx(recorded["int8"]["top1"], abs=0.01)  # what the export measured


def test_export_of_a_fine_tune_refuses_options_it_would_ignore_and_load_names_foreign_formats(runs, tmp_path, capsys):
    out = tmp_path / "ft"
    quiet(config(runs, out, epochs=1))
    argv = ["export", "--checkpoint", str(out / "checkpoints/last.pt"), "--out", str(tmp_path / "c.pt")]
    cli_error_lines(capsys, [*argv, "--subnet", "static"], "drop --subnet")
    assert not (tmp_path / "c.pt").exists()
    (tmp_path / "c.onnx").write_bytes(b"not really")
    with pytest.raises(UserError, match="onnxruntime"):
        gatedssl.load(tmp_path / "c.onnx")


def test_a_fine_tune_killed_with_sigkill_resumes_to_the_uninterrupted_weights(runs, tmp_path):
    import subprocess
    import sys
    import time

    settings = dict(epochs=3, subnet="gated", checkpoint_minutes=0.0005)  # a checkpoint after (nearly) every step
    straight = tmp_path / "straight"
    quiet(config(runs, straight, **settings))
    killed = tmp_path / "killed"
    argv = ["finetune", "--checkpoint", str(runs / "dual/checkpoints/last.pt"), "--out", str(killed), "--subnet", "gated"]
    argv += ["--epochs", "3", "--batch-size", "50", "--device", "cpu", "--checkpoint-minutes", "0.0005", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "gatedssl", *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:  # kill it once a mid-run checkpoint of epoch 2 is there
        if any(int(p.stem.split("_")[1]) >= 8 for p in (killed / "checkpoints").glob("step_*.pt")):
            proc.kill()
            break
        time.sleep(0.05)
    assert proc.wait() == -9, "the fine-tune ended before it could be killed"
    assert main([*argv, "--resume"]) == 0
    a = torch.load(straight / "checkpoints/last.pt", weights_only=True)["model"]
    b = torch.load(killed / "checkpoints/last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_slimmable_width_fine_tunes_as_the_plain_network_export_writes(tmp_path):
    run = tmp_path / "slim"
    pretrain(PretrainConfig(mode="slimmable", widths=[0.5], out=str(run), **{**TINY, "epochs": 1}), progress=False, log=lambda m: None)
    out = tmp_path / "ft"
    summary = quiet(
        ft.FinetuneConfig(checkpoint=str(run / "checkpoints/last.pt"), out=str(out), subnet="width0.5", epochs=2, batch_size=50)
    )
    assert 0.2 < summary["macs_ratio"] < 0.35  # half the channels of every conv: about a quarter of the MACs
    model = gatedssl.load(out / "checkpoints/last.pt")
    test = load_dataset("embedded", limit_per_class=30).test
    names, _ = model.predict(test.images)
    top1 = 100 * sum(n == test.classes[y] for n, y in zip(names, test.labels.tolist())) / len(names)
    assert top1 == pytest.approx(summary["top1"], abs=1.0) and model.subnets == ["width0.5"]
