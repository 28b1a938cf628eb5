"""Pretraining on a folder of unlabeled images: the run trains, says why it has no accuracy, and asks for none."""

import json

import numpy as np
from PIL import Image

from gatedssl.cli import main


def _unlabeled_folder(root, n=40):
    rng = np.random.default_rng(0)
    (root / "train").mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "train" / f"{i}.png")
    return root


def test_unlabeled_folder_pretrains_without_knn_and_a_probe_is_one_clear_line(tmp_path, capsys):
    data = _unlabeled_folder(tmp_path / "photos")
    out = tmp_path / "run"
    code = main(
        [
            "pretrain",
            "--dataset",
            "imagefolder",
            "--data-dir",
            str(data),
            "--crop-size",
            "32",
            "--width",
            "8",
            "--proj-dim",
            "64",
            "--epochs",
            "2",
            "--batch-size",
            "20",
            "--eval-every",
            "1",
            "--device",
            "cpu",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "kNN (--eval-every) and linear probe skipped" in captured.err and "directly inside" in captured.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"] == {"pretrain_images": 40, "train_images": 0, "test_images": 0, "labeled": False}
    assert summary["dense"]["knn_top1"] is None and 0 < summary["gated"]["macs_ratio"] < 1
    assert "-" in captured.out.splitlines()[2]  # the table shows no accuracy rather than failing
    assert all("knn_dense" not in json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines())

    code = main(["eval", "--checkpoint", str(out / "checkpoints/last.pt"), "--probe", "fast", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "unlabeled" in err and "Traceback" not in err
