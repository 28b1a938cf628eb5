"""Systems compared: all five systems in one report, numbers equal to the summaries, old summaries still reported.

Hand-written summaries in the shape summary.json has (no torch, no training): fast, and every number is known.
"""

import base64
import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from gatedssl.errors import UserError
from gatedssl.reporting.report import write_report
from gatedssl.reporting.runs import SYSTEM_LABEL, find_runs

DENSE_MACS = 5.0e8
WIDTHS = [1.0, 0.75, 0.5, 0.25]
CLASSES = {"airplane": 0.28, "cat": 0.35}


def _net(top1: float, ratio: float, **extra) -> dict:
    return {"knn_top1": top1, "macs": ratio * DENSE_MACS, "macs_ratio": ratio, "density": [ratio], "macs_ratio_per_class": {}, **extra}


def _cost(pflop: float, mask: float, seconds: float, device: str = "cuda") -> dict:
    return {"executed_flops": pflop * 1e15, "mask_flops": mask * 1e15, "seconds": seconds, "device": device}


def _summary(mode: str, seed: int = 0, budget: float = 0.3, old: bool = False, **extra) -> dict:
    s = {
        "dataset": "cifar10",
        "recipe": "reference",
        "method": "vicreg",
        "mode": mode,
        "pairing": "reference",
        "arch": "resnet18",
        "width": 64,
        "stem": "cifar",
        "stem_padding": 1,
        "budget": budget,
        "epochs": 5 if mode == "posthoc" else 100,
        "batch_size": 256,
        "seed": seed,
        "knn": {"protocol": "weighted", "k": 200, "temperature": 0.1},
        "data": {"pretrain_images": 50000, "train_images": 50000, "test_images": 10000, "labeled": True},
        "device": "cuda",
        "dense": _net(80.0 + seed, 1.0),
        "gated": _net(70.0 + seed, 0.35, channel_frequency=[[1.0, 0.5, 0.0]]),
    }
    if not old:
        s["subnets"] = {"dense": ["dense"], "slimmable": ["dense", "width0.75", "width0.5", "width0.25"]}.get(mode, ["dense", "gated"])
    s.update(extra)
    return s


def _write(folder: Path, summary: dict) -> dict:
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps(summary))
    return summary


@pytest.fixture(scope="module")
def five(tmp_path_factory):
    """One sweep with every system: B1 (two seeds), Dual, B2, post-hoc (pretraining known), slimmable; plus an old B1."""
    root = tmp_path_factory.mktemp("five")
    sweep = root / "sweep"
    runs = {}
    for seed in (0, 1):
        runs[f"dense{seed}"] = _write(
            sweep / f"dense-s{seed}", _summary("dense", seed, training_compute=_cost(2.0 + seed, 2.0 + seed, 3600.0))
        )
    runs["dual"] = _write(sweep / "b0.3", _summary("dual", training_compute=_cost(4.0, 2.7, 7300.0)))
    runs["gated"] = _write(sweep / "gated-b0.3", _summary("gated", training_compute=_cost(2.0, 0.7, 3650.0)))
    posthoc_cost = {**_cost(0.25, 0.1, 300.0), "pretraining": _cost(2.0, 2.0, 3600.0, device="cpu")}
    posthoc_cost["total"] = {k: posthoc_cost[k] + posthoc_cost["pretraining"][k] for k in ("executed_flops", "mask_flops", "seconds")}
    posthoc = _summary("posthoc", training_compute=posthoc_cost, init_from=str(sweep / "dense-s0"))
    posthoc["gated"] = _net(72.5, 0.31, channel_frequency=[[1.0, 0.5, 0.0]], macs_ratio_per_class=CLASSES)
    runs["posthoc"] = _write(sweep / "posthoc-b0.3", posthoc)
    slim = _summary("slimmable", widths=WIDTHS, training_compute=_cost(6.0, 6.0, 9000.0))
    del slim["gated"]
    for w, top1 in zip(WIDTHS[1:], (77.0, 74.0, 66.0)):
        slim[f"width{w:g}"] = _net(top1, w * w)
    runs["slimmable"] = _write(sweep / "slimmable", slim)
    runs["old"] = _write(root / "old" / "dense-old", _summary("dense", seed=7, old=True, epochs=50))  # 0.2.0: no subnets, no costs
    out = root / "report"
    write_report([sweep, root / "old" / "dense-old"], out)
    return {"root": root, "sweep": sweep, "out": out, "runs": runs, "table": json.loads((out / "table.json").read_text())}


def _systems(five) -> dict:
    [group] = five["table"]["compare"]
    return {(s["mode"], s["epochs"]): s for s in group["systems"]}


def test_every_system_is_compared_with_the_summaries_numbers(five):
    runs, systems = five["runs"], _systems(five)
    assert set(systems) == {("dense", 100), ("dense", 50), ("dual", 100), ("gated", 100), ("posthoc", 5), ("slimmable", 100)}
    b1 = systems["dense", 100]
    assert b1["seeds"] == [0, 1] and [s["name"] for s in b1["subnets"]] == ["dense"]
    assert b1["subnets"][0]["top1"]["mean"] == pytest.approx(80.5) and b1["subnets"][0]["top1"]["std"] == pytest.approx(0.5**0.5)
    assert b1["training_compute"]["executed_flops"]["mean"] == pytest.approx(2.5e15)
    dual = systems["dual", 100]
    assert [(s["name"], s["top1"]["mean"], s["macs_ratio"]["mean"]) for s in dual["subnets"]] == [
        ("dense", 80.0, 1.0),
        ("gated", 70.0, 0.35),
    ]
    assert dual["subnets"][1]["macs"]["mean"] == runs["dual"]["gated"]["macs"]
    assert dual["training_compute"]["executed_flops"]["mean"] == 4.0e15 and dual["training_compute"]["mask_flops"]["mean"] == 2.7e15
    assert dual["training_compute"]["seconds"]["mean"] == 7300.0 and dual["training_compute"]["devices"] == ["cuda"]
    assert [s["name"] for s in systems["gated", 100]["subnets"]] == ["gated"], "B2 has no trained dense network"
    post = systems["posthoc", 5]
    assert post["subnets"][1]["top1"]["mean"] == 72.5 and post["subnets"][1]["macs_ratio"]["mean"] == 0.31
    own, pre, total = post["training_compute"], post["pretraining"], post["total"]
    assert own["executed_flops"]["mean"] == pytest.approx(0.25e15) and pre["executed_flops"]["mean"] == pytest.approx(2.0e15)
    for key in ("executed_flops", "mask_flops", "seconds"):
        assert total[key]["mean"] == pytest.approx(own[key]["mean"] + pre[key]["mean"])
    assert post["init_from"] == [str(five["sweep"] / "dense-s0")]
    slim = systems["slimmable", 100]
    assert slim["widths"] == WIDTHS and slim["budget"] is None
    assert [(s["name"], s["top1"]["mean"], s["macs_ratio"]["mean"]) for s in slim["subnets"]] == [
        ("dense", 80.0, 1.0),
        ("width0.75", 77.0, 0.5625),
        ("width0.5", 74.0, 0.25),
        ("width0.25", 66.0, 0.0625),
    ]
    assert systems["dense", 50]["training_compute"] is None


def test_the_report_shows_the_comparison(five):
    out = five["out"]
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    assert "## Systems compared" in md and "two networks for the price of one" in md
    for label in SYSTEM_LABEL.values():
        assert label in md
    # the displayed table: the summaries' numbers, rounded; post-hoc with its own cost and the total with pretraining
    assert (
        "| Dual: dense + gated in one run (Krishna et al., BMVC 2023) | 0.3 | vicreg, 100 epochs, recipe reference | dense | 80.00 |" in md
    )
    assert "| gated | 70.00 | 175.00 | 0.350 |" in md
    assert "| 4 | 2.7 | 2.0 h | cuda | 0 |" in md
    assert (
        "| 0.25 own; 2.25 with pretraining | 0.1 own; 2.1 with pretraining | 5.0 min own; 65.0 min with pretraining | cuda (pretraining: cpu) |"
        in md
    )
    assert "| 80.50 ± 0.71 | 500.00 | 1.000 | 2.5 ± 0.707 |" in md, "B1's two seeds: mean ± std"
    for name, top1 in (("width0.75", "77.00"), ("width0.5", "74.00"), ("width0.25", "66.00")):
        assert f"| {name} | {top1} |" in md, "one row per width of the slimmable run"
    assert "| Slimmable SSL (DSPNet) | widths 1, 0.75, 0.5, 0.25 |" in md
    old_row = "| B1: vanilla SSL (dense) | – | vicreg, 50 epochs, recipe reference | dense | 87.00 | 500.00 | 1.000 | – | – | – | – | 7 |"
    assert old_row in md, "an old summary (no subnets, no training_compute) still reports, its costs '–'"
    assert "B1 + post-hoc (t_d=0.3, 5 epochs): 2.25 executed PFLOP (2.1 mask-implied) in 65.0 min for 2 networks" in md
    assert "Dual (t_d=0.3, 100 epochs): 4 executed PFLOP (2.7 mask-implied) in 2.0 h for 2 networks" in md
    with Image.open(out / "compare.png") as im:
        im.verify()
    with Image.open(out / "compare.png") as im:
        assert im.format == "PNG" and im.size[0] > 600 and im.size[1] > 400
    assert base64.b64encode((out / "compare.png").read_bytes()).decode() in page and "](compare.png)" in md
    assert 'id="systems-compared"' in page and "Slimmable SSL (DSPNet)" in page


def test_compare_csv_holds_one_row_per_subnetwork(five):
    with open(five["out"] / "compare.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1 + 1 + 2 + 1 + 2 + 4  # B1 (two seeds: one row), old B1, Dual, B2, post-hoc, slimmable
    [post] = [r for r in rows if r["system"] == "posthoc" and r["subnet"] == "gated"]
    assert float(post["total_executed_flops_mean"]) == pytest.approx(2.25e15) and float(post["top1_mean"]) == 72.5
    assert [r["subnet"] for r in rows if r["system"] == "slimmable"] == ["dense", "width0.75", "width0.5", "width0.25"]


def test_table1_ignores_slimmable_and_posthoc_and_details_follow_the_gates(five):
    out, table = five["out"], five["table"]
    [section] = [t for t in table["sections"] if t["setting"]["epochs"] == 100]  # the old B1 (50 epochs) has a table of its own
    assert section["B1"]["seeds"] == [0, 1] and [r["budget"] for r in section["rows"]] == [0.3]
    assert section["rows"][0]["Dual"]["names"] == ["b0.3"] and section["rows"][0]["B2"]["names"] == ["gated-b0.3"]
    pngs = {p.name for p in out.glob("*.png")}
    assert {"channels_posthoc-b0.3.png", "per_class_posthoc-b0.3.png", "channels_b0.3.png", "channels_gated-b0.3.png"} <= pngs
    assert not any(n.startswith(("channels_slimmable", "per_class_slimmable", "channels_dense")) for n in pngs)
    md = (out / "report.md").read_text()
    assert "#### slimmable: Slimmable (DSPNet), seed 0" in md and "#### posthoc-b0.3: Post-hoc gating of B1, t_d=0.3, seed 0" in md
    assert "| slimmable | Slimmable (DSPNet) | cifar10 | – |" in md


def test_posthoc_with_unknown_pretraining_and_no_table1_runs(five, tmp_path):
    s = _summary("posthoc", training_compute={**_cost(0.5, 0.2, 60.0), "pretraining": None})
    _write(tmp_path / "runs" / "posthoc", s)
    slim = _summary("slimmable", widths=[1.0, 0.5], subnets=["dense", "width0.5"])
    slim["width0.5"] = _net(60.0, 0.25)
    _write(tmp_path / "runs" / "slimmable", slim)
    write_report([tmp_path / "runs"], tmp_path / "out")
    table = json.loads((tmp_path / "out" / "table.json").read_text())
    assert table["sections"] == [] and not (tmp_path / "out" / "tradeoff.png").exists()
    [group] = table["compare"]
    post = [s for s in group["systems"] if s["mode"] == "posthoc"][0]
    assert post["pretraining"] is None and post["total"] is None
    md = (tmp_path / "out" / "report.md").read_text()
    assert "0.5 own; pretraining unknown" in md and "B1 + post-hoc (t_d=0.3, 5 epochs): training compute unknown" in md


def test_no_comparison_for_a_single_system_and_stale_files_go(five, tmp_path):
    out = tmp_path / "out"
    write_report([five["sweep"]], out)
    assert (out / "compare.csv").is_file() and (out / "compare.png").is_file()
    write_report([five["sweep"] / "b0.3"], out)
    assert json.loads((out / "table.json").read_text())["compare"] == []
    assert not (out / "compare.csv").exists() and not (out / "compare.png").exists()
    assert "Systems compared" not in (out / "report.md").read_text()


def test_every_subnetwork_must_carry_its_numbers(tmp_path):
    slim = _summary("slimmable", widths=[1.0, 0.5], subnets=["dense", "width0.5"])
    slim["width0.5"] = {"knn_top1": 60.0, "macs": 1.0}
    _write(tmp_path / "slim", slim)
    with pytest.raises(UserError, match=r"width0\.5\.macs_ratio"):
        find_runs([tmp_path / "slim"])
    s = _summary("dual", subnets="dense")
    (tmp_path / "slim" / "summary.json").write_text(json.dumps(s))
    with pytest.raises(UserError, match="subnets"):
        find_runs([tmp_path / "slim"])


def test_old_summaries_derive_their_subnetworks(tmp_path):
    _write(tmp_path / "d", _summary("dense", old=True))
    gated = _summary("gated", old=True)
    del gated["gated"]["macs"]
    _write(tmp_path / "g", gated)
    assert [r.subnets for r in find_runs([tmp_path / "d"]).runs] == [["dense"]]
    with pytest.raises(UserError, match=r"gated\.macs"):
        find_runs([tmp_path / "g"])
