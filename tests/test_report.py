"""The trade-off report: files, pictures, numbers equal to the runs' summaries, finding runs, user errors.

One real tiny run (Dual, embedded data, CPU) gives summary/metrics files in the shape pretrain
writes; synthetic copies of it with hand-set numbers give B1, several seeds and a B2 run.
"""

import base64
import copy
import json
import shutil
import statistics
from pathlib import Path

import pytest
from PIL import Image

from gatedssl.cli import main
from gatedssl.config import PretrainConfig
from gatedssl.errors import UserError
from gatedssl.reporting import paper
from gatedssl.reporting.plots import channel_shares
from gatedssl.reporting.report import write_report
from gatedssl.reporting.runs import find_runs
from gatedssl.reporting.table import build_sections, section_table
from gatedssl.training import pretrain

TINY = dict(width=8, proj_dim=64, epochs=1, batch_size=50, limit_per_class=20, device="cpu")

# hand-set numbers of the synthetic runs: (seed, dense knn, gated knn, gated macs_ratio)
DUAL_03 = [(0, 41.25, 38.5, 0.3125), (1, 43.75, 37.0, 0.3375)]
DENSE = [(0, 45.5, None, None), (1, 44.0, None, None)]
B2_03 = [(0, None, 36.25, 0.29)]


def _synthetic(
    template: dict,
    folder: Path,
    mode: str,
    budget: float,
    seed: int,
    dense: float | None,
    gated: float | None,
    ratio: float | None,
    **extra,
) -> dict:
    s = copy.deepcopy(template)
    s.update(mode=mode, budget=budget, seed=seed, **extra)
    if dense is not None:
        s["dense"]["knn_top1"] = dense
    if gated is not None:
        s["gated"]["knn_top1"] = gated
        s["gated"]["macs_ratio"] = ratio
        s["gated"]["macs"] = ratio * s["dense"]["macs"]
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps(s))
    (folder / "config.yaml").write_text(f"mode: {mode}\n")
    return s


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    real_dual = pretrain(PretrainConfig(out=str(root / "real-dual"), budget=0.5, mode="dual", **TINY), progress=False)
    # B1 of the real run's table: a synthetic dense-mode run of the same setting, with its training curves
    real_dense = _synthetic(real_dual, root / "real-dense", "dense", 0.5, 0, 20.5, None, None)
    (root / "real-dense" / "metrics.jsonl").write_text((root / "real-dual" / "metrics.jsonl").read_text())
    # the synthetic seeds use another width, so they form a table of their own
    synth = root / "synth"
    for seed, d, g, r in DUAL_03:
        _synthetic(real_dual, synth / f"dual-b0.3-s{seed}", "dual", 0.3, seed, d, g, r, width=16)
    for seed, d, g, r in DENSE:
        _synthetic(real_dense, synth / f"dense-s{seed}", "dense", 0.5, seed, d, g, r, width=16)
    for seed, d, g, r in B2_03:
        _synthetic(real_dual, synth / f"b2-b0.3-s{seed}", "gated", 0.3, seed, d, g, r, width=16)
    (synth / "unfinished").mkdir()
    (synth / "unfinished" / "config.yaml").write_text("mode: dual\n")
    (synth / "unfinished" / "metrics.jsonl").write_text("")
    (synth / "not-a-run").mkdir()  # no run files: neither a run nor an unfinished one
    return {"root": root, "synth": synth, "real_dual": real_dual, "real_dense": real_dense}


@pytest.fixture(scope="module")
def report(sweep, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    html_path = write_report([sweep["root"] / "real-dual", sweep["root"] / "real-dense", sweep["synth"]], out)
    return out, html_path


def _section(table_json: dict, width: int) -> dict:
    [section] = [s for s in table_json["sections"] if s["setting"]["width"] == width]
    return section


def test_report_files_exist_and_pictures_are_valid_and_embedded(report):
    out, html_path = report
    assert html_path == out / "report.html"
    for name in ("report.md", "report.html", "table.json", "table.csv", "tradeoff.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    expected = {
        "tradeoff.png",
        "curves_real-dual.png",
        "curves_real-dense.png",
        "channels_real-dual.png",
        "per_class_real-dual.png",
        "channels_dual-b0.3-s0.png",
        "channels_dual-b0.3-s1.png",
        "channels_b2-b0.3-s0.png",
        "per_class_b2-b0.3-s0.png",
    }
    pngs = {p.name for p in out.glob("*.png")}
    assert expected <= pngs
    assert not any(name.startswith(("channels_dense", "channels_real-dense", "per_class_real-dense")) for name in pngs), (
        "dense-mode runs have no trained gates: no gate pictures"
    )
    page = html_path.read_text()
    md = (out / "report.md").read_text()
    for name in pngs:
        with Image.open(out / name) as im:
            im.verify()
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 200
        assert base64.b64encode((out / name).read_bytes()).decode() in page, f"{name} not embedded in report.html"
        assert f"]({name})" in md
    assert page.count("data:image/png;base64,") == len(pngs)
    assert 'src="' + "tradeoff.png" not in page, "the HTML must not depend on files next to it"


def test_report_states_its_protocol(report, sweep):
    out, _ = report
    md = (out / "report.md").read_text()
    knn = sweep["real_dual"]["knn"]
    assert f"k={knn['k']}, temperature {knn['temperature']}" in md
    data = sweep["real_dual"]["data"]
    assert f"{data['pretrain_images']} pretraining images, {data['train_images']} labelled train images" in md
    assert "pairing reference" in md and "vicreg" in md and "1 epoch," in md
    assert "Skipped 1 unfinished run folder(s)" in md and "unfinished" in md


def test_table_numbers_equal_the_summaries(report, sweep):
    out, _ = report
    tables = json.loads((out / "table.json").read_text())
    # synthetic table: two seeds each, means and sample stds by hand
    t = _section(tables, 16)
    b1 = t["B1"]
    assert b1["seeds"] == [0, 1]
    assert b1["dense_top1"]["mean"] == pytest.approx((45.5 + 44.0) / 2, abs=1e-12)
    assert b1["dense_top1"]["std"] == pytest.approx(((45.5 - 44.75) ** 2 * 2 / 1) ** 0.5, abs=1e-12)
    [row] = t["rows"]
    assert row["budget"] == 0.3
    dual, b2 = row["Dual"], row["B2"]
    assert dual["dense_top1"]["mean"] == pytest.approx((41.25 + 43.75) / 2, abs=1e-12)
    assert dual["dense_top1"]["std"] == pytest.approx(statistics.stdev([41.25, 43.75]), abs=1e-12)
    assert dual["gated_top1"]["mean"] == pytest.approx(37.75, abs=1e-12)
    assert dual["gated_top1"]["std"] == pytest.approx(((38.5 - 37.75) ** 2 + (37.0 - 37.75) ** 2) ** 0.5, abs=1e-12)
    assert dual["gated_macs_reduction_pct"]["mean"] == pytest.approx(100 * (1 - (0.3125 + 0.3375) / 2), abs=1e-9)
    assert dual["dense_top1_delta_b1"] == pytest.approx(42.5 - 44.75, abs=1e-12)
    assert dual["gated_top1_delta_b1"] == pytest.approx(37.75 - 44.75, abs=1e-12)
    assert b2["gated_top1"]["mean"] == 36.25 and b2["gated_top1"]["std"] is None
    assert b2["gated_macs_reduction_pct"]["mean"] == pytest.approx(71.0, abs=1e-9)
    assert b2["gated_top1_delta_b1"] == pytest.approx(36.25 - 44.75, abs=1e-12)
    assert "dense_top1" not in b2, "B2 has no meaningful dense network"

    # the real run's table: single runs, numbers exactly those of summary.json
    real = _section(tables, 8)
    dual_s, dense_s = sweep["real_dual"], sweep["real_dense"]
    assert real["B1"]["dense_top1"]["mean"] == dense_s["dense"]["knn_top1"]
    assert real["B1"]["dense_macs"]["mean"] == dense_s["dense"]["macs"]
    [row] = real["rows"]
    assert row["B2"] is None and row["budget"] == 0.5
    assert row["Dual"]["dense_top1"]["mean"] == dual_s["dense"]["knn_top1"]
    assert row["Dual"]["gated_top1"]["mean"] == dual_s["gated"]["knn_top1"]
    assert row["Dual"]["gated_macs_reduction_pct"]["mean"] == pytest.approx(100 * (1 - dual_s["gated"]["macs_ratio"]), abs=1e-12)
    assert row["Dual"]["gated_top1_delta_b1"] == pytest.approx(dual_s["gated"]["knn_top1"] - dense_s["dense"]["knn_top1"], abs=1e-12)

    # the displayed table shows the same numbers, rounded to 2 decimals
    md = (out / "report.md").read_text()
    std = statistics.stdev([41.25, 43.75])
    expected_row = (
        f"| 0.3 | 36.25 | -8.50 | 71.00 | 0 | {42.5:.2f} ± {std:.2f} | -2.25 | 37.75 ± "
        f"{statistics.stdev([38.5, 37.0]):.2f} | -7.00 | {100 * (1 - 0.325):.2f} ± {100 * statistics.stdev([0.3125, 0.3375]):.2f} | 0, 1 |"
    )
    assert expected_row in md
    assert f"| {dense_s['dense']['knn_top1']:.2f} | {dense_s['dense']['macs'] / 1e6:.2f} | 0 | 0.5 |" in md
    assert f"{dual_s['gated']['knn_top1']:.2f}" in md

    csv_text = (out / "table.csv").read_text()
    assert repr(dual_s["gated"]["knn_top1"]) in csv_text


def test_find_runs_accepts_runs_and_sweeps_and_skips_unfinished(sweep):
    found = find_runs([sweep["synth"]])
    assert sorted(r.name for r in found.runs) == ["b2-b0.3-s0", "dense-s0", "dense-s1", "dual-b0.3-s0", "dual-b0.3-s1"]
    assert [p.name for p in found.skipped] == ["unfinished"]
    # a run folder, its summary.json, and the same run twice: one run
    run = sweep["root"] / "real-dual"
    found = find_runs([run, run / "summary.json", str(run)])
    assert [r.name for r in found.runs] == ["real-dual"] and found.skipped == []
    # the sweep root holds the real runs one level down; synth/ is not a run, so it is not descended into
    assert sorted(r.name for r in find_runs([sweep["root"]]).runs) == ["real-dense", "real-dual"]


def test_user_errors(sweep, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        write_report([tmp_path / "nope"], tmp_path / "out")
    with pytest.raises(UserError, match="no finished runs"):
        find_runs([tmp_path])
    with pytest.raises(UserError, match="1 unfinished"):
        find_runs([sweep["synth"] / "unfinished"])
    with pytest.raises(UserError, match="no run or sweep folder"):
        find_runs([])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "summary.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot be read as JSON"):
        find_runs([bad])
    (bad / "summary.json").write_text(json.dumps({"dataset": "cifar10"}))
    with pytest.raises(UserError, match="lacks"):
        find_runs([bad])
    target = tmp_path / "a-file"
    target.write_text("")
    with pytest.raises(UserError, match="is a file"):
        write_report([sweep["root"] / "real-dense"], target)


def test_probe_is_preferred_when_every_run_has_it(sweep, tmp_path):
    template = sweep["real_dual"]
    probe = {"top1": 61.5, "top1_std": 0.2, "top5": 95.0, "top5_std": 0.1, "seeds": 3, "protocol": "linear, 100 epochs"}
    for seed in (0, 1):
        s = _synthetic(template, tmp_path / f"p{seed}", "dual", 0.5, seed, 50.0, 49.0, 0.5)
        for which, top1 in (("dense", 61.5 + seed), ("gated", 60.0 - seed)):
            s[which]["probe"] = {**probe, "top1": top1}
        (tmp_path / f"p{seed}" / "summary.json").write_text(json.dumps(s))
    [section] = build_sections(find_runs([tmp_path]).runs)
    assert section.accuracy.kind == "probe" and "linear, 100 epochs" in section.accuracy.description
    dual = section_table(section)["rows"][0]["Dual"]
    assert dual["dense_top1"]["mean"] == pytest.approx(62.0) and dual["gated_top1"]["mean"] == pytest.approx(59.5)
    # one run without a probe: kNN for all, with a note
    s = json.loads((tmp_path / "p1" / "summary.json").read_text())
    del s["gated"]["probe"]
    (tmp_path / "p1" / "summary.json").write_text(json.dumps(s))
    [section] = build_sections(find_runs([tmp_path]).runs)
    assert section.accuracy.kind == "knn" and any("1 of 2 runs carry linear-probe" in n for n in section.notes)
    assert section_table(section)["rows"][0]["Dual"]["dense_top1"]["mean"] == 50.0


def test_datasets_get_their_own_tables_and_the_paper_overlay(sweep, tmp_path):
    _synthetic(sweep["real_dual"], tmp_path / "runs" / "c10", "dual", 0.3, 0, 80.0, 79.0, 0.33, dataset="cifar10")
    _synthetic(sweep["real_dense"], tmp_path / "runs" / "emb", "dense", 0.5, 0, 30.0, None, None)
    out = tmp_path / "report"
    write_report([tmp_path / "runs"], out, paper_overlay=True)
    tables = json.loads((out / "table.json").read_text())["sections"]
    assert sorted(t["setting"]["dataset"] for t in tables) == ["cifar10", "embedded"]
    md = (out / "report.md").read_text()
    assert "The paper's numbers" in md and "| CIFAR-10 | 91.11 | 0.1 | 87.75 | 85.92 | 88.99 | 88.94 | 81.49 |" in md
    assert "CIFAR-100" not in md, "only the datasets of the runs are listed"
    assert "no mode=dense run (baseline B1)" in md  # the cifar10 table has no B1
    with Image.open(out / "tradeoff.png") as im:
        assert im.size[1] > 900, "two sections: two rows of panels"


def test_paper_data():
    assert [r.budget for r in paper.paper_rows("cifar10")] == [0.1, 0.3, 0.5]
    assert paper.paper_rows("imagefolder") == [] and paper.paper_rows("embedded") == []
    assert paper.paper_b1("stl10") == 86.15 and paper.paper_b1("imagefolder") is None
    r = [r for r in paper.TABLE1 if r.dataset == "ImageNet-100" and r.budget == 0.5][0]
    assert (r.b2_gated, r.b2_macs_reduction, r.dual_dense, r.dual_gated, r.dual_macs_reduction) == (75.83, 50.11, 76.42, 76.24, 47.69)
    assert [(x.gated, x.dense) for x in paper.reference_rows("cifar10")] == [(84.99, 84.67), (85.65, 85.29), (85.49, 85.44)]
    assert len(paper.TABLE1) == 11


def test_channel_shares():
    import numpy as np

    shares = channel_shares([np.array([1.0, 0.995, 0.5, 0.0, 0.005]), np.array([0.99, 0.01, 0.2, 0.8])])
    assert shares.ravel().tolist() == pytest.approx([0.4, 0.2, 0.4, 0.25, 0.5, 0.25])


def test_a_static_export_is_shown_beside_its_run(sweep, tmp_path):
    static = {"subnet": "static", "keep_rate": 0.3, "macs_ratio": 0.4125, "knn_top1": 39.75, "channels": [1] * 8}
    _synthetic(sweep["real_dual"], tmp_path / "runs" / "dual-static", "dual", 0.3, 0, 41.0, 38.0, 0.31, width=24, static=static)
    write_report([tmp_path / "runs"], tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    assert "static top-1 (MACs / dense, Q)" in md and "39.75 (0.412, Q=0.3)" in md


def test_a_report_written_again_removes_the_pictures_it_no_longer_draws(sweep, tmp_path):
    out = tmp_path / "out"
    write_report([sweep["root"] / "real-dual", sweep["synth"]], out)
    first = {p.name for p in out.glob("*.png")}
    (out / "notes.png").write_bytes(b"a user's file")  # not a report picture: kept
    write_report([sweep["root"] / "real-dual"], out)
    second = {p.name for p in out.glob("*.png")}
    assert second - {"notes.png"} < first and "notes.png" in second
    drawn = (out / "report.md").read_text()
    assert all(name in drawn for name in second - {"notes.png"})


def test_the_comparison_of_systems_reads_the_real_summaries(report, sweep):
    out, _ = report
    [group] = [g for g in json.loads((out / "table.json").read_text())["compare"] if g["setting"]["width"] == 8]
    systems = {s["mode"]: s for s in group["systems"]}
    assert set(systems) == {"dense", "dual"}
    dual_s = sweep["real_dual"]
    dual = {sub["name"]: sub for sub in systems["dual"]["subnets"]}
    for name in ("dense", "gated"):
        assert dual[name]["top1"]["mean"] == dual_s[name]["knn_top1"]
        assert dual[name]["macs_ratio"]["mean"] == dual_s[name]["macs_ratio"]
    cost = dual_s.get("training_compute")  # summaries of this version may predate training-compute accounting
    if cost is None:
        assert systems["dual"]["training_compute"] is None
    else:
        assert systems["dual"]["training_compute"]["executed_flops"]["mean"] == cost["executed_flops"]
    assert "## Systems compared" in (out / "report.md").read_text()


def test_names_from_user_data_are_drawn_as_written(sweep, tmp_path):
    """Class, run and folder names reach titles, ticks and legends: matplotlib must not read `$...$` in them as
    mathtext (`$\\bad$` is an unknown symbol: the report failed), nor choke on _ % ^ { } or a lone $."""
    odd = ["$\\bad$", "a_b", "50%", "x^2", "{c}", "lone $ sign"]
    run = tmp_path / "runs" / "run $\\bad$ 1_%^"
    shutil.copytree(sweep["root"] / "real-dual", run)
    summary = json.loads((run / "summary.json").read_text())
    per_class = summary["gated"]["macs_ratio_per_class"]
    summary["gated"]["macs_ratio_per_class"] = {name: value for name, value in zip(odd, per_class.values())}
    (run / "summary.json").write_text(json.dumps(summary))
    out = tmp_path / "report"
    write_report([run, sweep["root"] / "real-dense"], out)
    pngs = [p.name for p in out.glob("*.png")]
    for kind in ("per_class_", "channels_", "curves_", "tradeoff"):
        assert any(name.startswith(kind) and (kind == "tradeoff" or "bad" in name) for name in pngs), (kind, pngs)
    assert "run $\\bad$ 1_%^" in (out / "report.md").read_text()


def test_a_report_removes_only_the_pictures_it_drew_itself(sweep, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    mine = {"mine.png": b"a user's picture", "curves_mine.png": b"a user's picture with a report-like name"}
    for name, data in mine.items():
        (out / name).write_bytes(data)
    write_report([sweep["root"] / "real-dual", sweep["synth"]], out)
    first = {p.name for p in out.glob("*.png")} - set(mine)
    write_report([sweep["root"] / "real-dual"], out)  # draws fewer pictures: the first report's others go, the user's stay
    assert all((out / name).read_bytes() == data for name, data in mine.items())
    second = {p.name for p in out.glob("*.png")} - set(mine)
    assert second < first and second == set(json.loads((out / "table.json").read_text())["pictures"])


def test_a_damaged_metrics_line_is_skipped(sweep, tmp_path):
    run = tmp_path / "runs" / "real-dual"
    _synthetic(sweep["real_dual"], run, "dual", 0.5, 0, None, None, None)
    whole = (sweep["root"] / "real-dual" / "metrics.jsonl").read_text()
    (run / "metrics.jsonl").write_text(whole + '"a string"\n[1, 2]\n{"epoch": "one"}\n{"epoch": 3, "lo')
    write_report([run], tmp_path / "out")
    assert (tmp_path / "out" / "curves_real-dual.png").is_file()
    (run / "metrics.jsonl").write_text('[1, 2]\n{"epoch": 3, "lo')  # no whole line: no curves, no crash
    write_report([run], tmp_path / "out2")
    assert "no training curves" in (tmp_path / "out2" / "report.md").read_text()


@pytest.mark.parametrize("content", ['["a", "list"]', '"a string"', "3"])
def test_a_summary_that_is_not_a_mapping_is_a_user_error(sweep, tmp_path, content):
    run = tmp_path / "runs" / "bad"
    _synthetic(sweep["real_dual"], run, "dual", 0.5, 0, None, None, None)
    (run / "summary.json").write_text(content)
    with pytest.raises(UserError, match=r"summary\.json holds a JSON .*gatedssl eval"):
        write_report([run], tmp_path / "out")


def test_gatedssl_report_into_a_run_folder_is_refused(sweep, tmp_path, capsys):
    run = tmp_path / "real-dual"
    shutil.copytree(sweep["root"] / "real-dual", run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    for out in (run, run / "checkpoints", run / "report"):
        code = main(["report", str(run), "--out", str(out)])
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "inside the run folder" in lines[0], err
        assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
        assert not (run / "report").exists()
