import pytest
import torch

from gatedssl.config import PretrainConfig
from gatedssl.data.augment import recipe
from gatedssl.data.pipelines import DeviceViews, LoaderViews, make_views, torchvision_transform
from gatedssl.data.sources import load_dataset
from gatedssl.training import pretrain


@pytest.fixture(scope="module")
def splits():
    return load_dataset("embedded", limit_per_class=20)


@pytest.mark.parametrize("pipeline", ["device", "loader"])
def test_views_have_training_shapes_and_differ(splits, pipeline):
    cfg = recipe(splits.crop_size, splits.mean, splits.std)
    views = make_views(pipeline, splits.pretrain.images, cfg, 64, torch.device("cpu"))
    assert len(views) == 200 // 64  # drop_last
    batches = list(views)
    assert len(batches) == 3
    x1, x2 = batches[0]
    assert x1.shape == x2.shape == (64, 3, 32, 32) and x1.dtype == torch.float32
    assert not torch.equal(x1, x2), "two views must be drawn independently"
    assert -3.0 < x1.mean().item() < 3.0  # normalised, not [0, 255]
    assert isinstance(views, DeviceViews if pipeline == "device" else LoaderViews)


def test_torchvision_baseline_runs_the_same_recipe(splits):
    transform = torchvision_transform(recipe(splits.crop_size, splits.mean, splits.std))
    names = [type(t).__name__ for t in transform.transforms]
    assert names[:2] == ["RandomResizedCrop", "RandomHorizontalFlip"]
    assert "RandomGrayscale" in names and "RandomSolarize" in names and names[-1] == "Normalize"
    out = transform(splits.pretrain.images[0])
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32


def test_fast_and_baseline_paths_learn_alike(tmp_path, learning_signals):
    """Same seed, same epochs: the device path and the torchvision-workers path both learn, and alike.

    Their random streams differ, so they are compared on what barely moves with rounding: at the same
    seed, threads and oneDNN ISAs moved the SSL-loss drop between 4.2 and 6.4 % and the mean kNN gain
    between 3.2 and 6.2 (BENCHMARKS.md, 'Learning-test spread'); without optimizer steps they are -0.2 %
    and -1.15 (scripts/mutants.py), so the thresholds sit in between.
    """
    signals = {}
    for pipeline in ("device", "loader"):
        cfg = PretrainConfig(
            out=str(tmp_path / pipeline),
            data_pipeline=pipeline,
            proj_dim=256,
            epochs=6,
            limit_per_class=200,
            checkpoint_every=100,
            device="cpu",
            warmup_epochs=0.12,
        )  # the schedule the thresholds were measured with (0.1.0's 2 %)
        signals[pipeline] = learning_signals(tmp_path / pipeline, pretrain(cfg, progress=False))
    for pipeline, s in signals.items():
        assert s["ssl_drop"] > 0.02 and s["mean_knn_gain"] > 1.0, (pipeline, s)
    fast, base = signals["device"], signals["loader"]
    assert abs(fast["ssl_drop"] - base["ssl_drop"]) < 0.03, signals
    assert abs(fast["mean_knn_gain"] - base["mean_knn_gain"]) < 4.0, signals
