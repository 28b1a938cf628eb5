"""--eval-every: kNN of both passes during training, in metrics.jsonl and on the curves plot."""

import json

from PIL import Image

from gatedssl.config import PretrainConfig
from gatedssl.evaluation.evaluate import spread
from gatedssl.training import pretrain


def test_eval_every_logs_knn_of_both_passes_and_draws_them(tmp_path):
    cfg = PretrainConfig(
        width=8, proj_dim=64, epochs=4, batch_size=50, limit_per_class=20, eval_every=2, device="cpu", out=str(tmp_path / "run")
    )
    summary = pretrain(cfg, progress=False)
    records = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    evaluated = [r["epoch"] for r in records if "knn_dense" in r]
    assert evaluated == [2, 4]
    for r in records:
        if "knn_dense" in r:
            assert 0 <= r["knn_dense"] <= 100 and 0 <= r["knn_gated"] <= 100 and r["eval_seconds"] > 0
    # the subset is the whole (small) set here, so the last online value is the final evaluation's
    assert records[-1]["knn_dense"] == summary["dense"]["knn_top1"] and records[-1]["knn_gated"] == summary["gated"]["knn_top1"]
    with Image.open(tmp_path / "run/curves.png") as png:
        assert png.size[0] > 2000  # four panels: losses, MACs, density, kNN


def test_eval_every_does_not_change_training(tmp_path):
    base = dict(width=8, proj_dim=64, epochs=2, batch_size=50, limit_per_class=20, device="cpu")
    a = pretrain(PretrainConfig(out=str(tmp_path / "a"), **base), progress=False)
    b = pretrain(PretrainConfig(out=str(tmp_path / "b"), eval_every=1, **base), progress=False)
    assert (a["dense"], a["gated"]) == (b["dense"], b["gated"])


def test_online_subset_is_spread_over_the_set():
    assert spread(10, 20).tolist() == list(range(10))
    picked = spread(50_000, 5000)
    assert len(picked) == 5000 and picked[0] == 0 and picked[-1] == 49_999 and len(set(picked.tolist())) == 5000
