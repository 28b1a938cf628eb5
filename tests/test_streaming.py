"""Streaming folder datasets: the same pixels, order and training as holding them, and the faults users meet."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from PIL import Image

from gatedssl.config import PretrainConfig
from gatedssl.data import ImageFiles, load_dataset, read_batches, sources
from gatedssl.errors import RunStopped, UserError
from gatedssl.evaluation.evaluate import extract
from gatedssl.models import gated_resnet18
from gatedssl.training import pretrain


@pytest.fixture(scope="module")
def photo_folders(tmp_path_factory):
    """Real CIFAR-10 photos from the embedded set as class folders: JPEGs at several sizes, some PNGs, one grayscale."""
    root = tmp_path_factory.mktemp("photos")
    embedded = load_dataset("embedded", limit_per_class=12)
    sizes = [(32, 32), (40, 32), (32, 48), (64, 64)]
    for split, images in (("train", embedded.train), ("val", embedded.test)):
        for i, (image, label) in enumerate(zip(images.images, images.labels.tolist())):
            folder = root / split / images.classes[label]
            folder.mkdir(parents=True, exist_ok=True)
            pil = Image.fromarray(image.permute(1, 2, 0).numpy()).resize(sizes[i % len(sizes)])
            if i % 7 == 0:
                pil.save(folder / f"{i:04d}.png")
            elif i % 11 == 0:
                pil.convert("L").save(folder / f"{i:04d}.jpg", quality=90)
            else:
                pil.save(folder / f"{i:04d}.jpg", quality=90)
    return root


def _all(images, device="cpu", batch_size=7, order=None, **kwargs):
    order = torch.arange(len(images)) if order is None else order
    if kwargs:
        return torch.cat(list(images.read(order, batch_size, torch.device(device), **kwargs)))
    return torch.cat(list(read_batches(images, order, batch_size, torch.device(device))))


@pytest.mark.parametrize("decode_on", ["workers", "device"])
def test_streamed_split_reads_the_pixels_memory_holds(photo_folders, decode_on):
    held = load_dataset("cifar10", str(photo_folders), storage="memory")
    streamed = load_dataset("cifar10", str(photo_folders), storage="stream", workers=2)
    for split in ("train", "test"):
        files = getattr(streamed, split).images
        assert isinstance(files, ImageFiles) and files.shape == getattr(held, split).images.shape
        assert torch.equal(getattr(streamed, split).labels, getattr(held, split).labels)
        assert torch.equal(_all(files, decode_on=decode_on), getattr(held, split).images), split
    order = torch.randperm(len(held.train.labels), generator=torch.Generator().manual_seed(1))
    assert torch.equal(_all(streamed.train.images, order=order), held.train.images[order])
    assert torch.equal(_all(held.train.images, order=order), held.train.images[order])  # tensors read the same way


def test_features_of_a_streamed_split_equal_held_ones(photo_folders):
    held = load_dataset("cifar10", str(photo_folders), storage="memory")
    streamed = load_dataset("cifar10", str(photo_folders), storage="stream", workers=1)
    torch.manual_seed(0)
    net = gated_resnet18(width=8)
    a = extract(net, held.test, held, True, torch.device("cpu"), batch_size=16)
    b = extract(net, streamed.test, streamed, True, torch.device("cpu"), batch_size=16)
    assert torch.allclose(a.features, b.features) and torch.equal(a.macs, b.macs)


def _config(folders, out, storage):
    return PretrainConfig(
        dataset="cifar10",
        data_dir=str(folders),
        storage=storage,
        data_workers=1,
        out=str(out),
        width=8,
        proj_dim=64,
        epochs=2,
        batch_size=32,
        device="cpu",
    )


def _weights(run):
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for name, tensor in a.items():
        assert torch.equal(tensor, b[name]), name


def test_training_on_streamed_files_matches_training_on_held_images(photo_folders, tmp_path):
    """Same seed: the stream feeds the same batches to the same augmentation, so the runs end identical."""
    summaries = {storage: pretrain(_config(photo_folders, tmp_path / storage, storage), progress=False) for storage in ("memory", "stream")}
    _assert_same(_weights(tmp_path / "memory"), _weights(tmp_path / "stream"))
    assert summaries["memory"]["gated"]["knn_top1"] == summaries["stream"]["gated"]["knn_top1"]


def test_streamed_run_stopped_mid_epoch_resumes_exactly_even_from_memory(photo_folders, tmp_path):
    pretrain(_config(photo_folders, tmp_path / "reference", "memory"), progress=False)

    def term(epoch, step):
        if (epoch, step) == (0, 1):  # 120 images, 3 steps per epoch
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(RunStopped, match="epoch 1, step 2"):
        pretrain(_config(photo_folders, tmp_path / "run", "stream"), on_step_end=term, progress=False)
    pretrain(_config(photo_folders, tmp_path / "run", "memory"), resume=True, progress=False)  # how images are read may change
    _assert_same(_weights(tmp_path / "reference"), _weights(tmp_path / "run"))


def test_unreadable_file_met_while_streaming_is_named_once_and_left_black(photo_folders, tmp_path):
    paths = sorted(str(p) for p in (photo_folders / "val").rglob("*.jpg"))[:6]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    messages = []
    files = ImageFiles(paths[:3] + [str(broken)] + paths[3:], 32, warn=messages.append, workers=0)
    for decode_on in ("workers", "device", "workers"):
        images = _all(files, batch_size=4, decode_on=decode_on)
        assert images[3].sum() == 0 and (images.flatten(1).sum(1) > 0).sum() == 6
    assert len(messages) == 1 and str(broken) in messages[0] and "--strict" in messages[0]
    strict = ImageFiles(paths[:3] + [str(broken)], 32, strict=True, workers=0)
    with pytest.raises(UserError, match="broken.jpg") as info:
        _all(strict)
    assert "\n" not in str(info.value)


def test_auto_storage_streams_only_what_does_not_fit(photo_folders, monkeypatch):
    notes = []
    monkeypatch.setattr(sources, "_free_bytes", lambda device: (10**12, None))
    assert isinstance(load_dataset("cifar10", str(photo_folders), storage="auto", warn=notes.append).train.images, torch.Tensor)
    assert notes == []
    monkeypatch.setattr(sources, "_free_bytes", lambda device: (100_000, None))  # the set takes 3 * 32 * 32 * 240 bytes
    assert isinstance(load_dataset("cifar10", str(photo_folders), storage="auto", warn=notes.append).train.images, ImageFiles)
    assert len(notes) == 1 and "streaming" in notes[0] and "--storage memory" in notes[0]


def test_streaming_needs_an_image_folder():
    with pytest.raises(UserError, match="image folders"):
        load_dataset("cifar10", "/nonexistent", storage="stream")
    with pytest.raises(UserError, match="unknown storage"):
        load_dataset("embedded", storage="disk")


def test_a_decompression_bomb_and_an_animated_gif_met_while_streaming(photo_folders, tmp_path):
    """The bomb is named once and left black (its header alone would crash the decoder); the GIF is its first frame."""
    from test_sources import animated_gif, bomb_png

    paths = sorted(str(p) for p in (photo_folders / "val").rglob("*.jpg"))[:4]
    bomb, gif = tmp_path / "bomb.png", tmp_path / "anim.gif"
    bomb_png(bomb)
    animated_gif(gif, first=(0, 255, 0))
    messages = []
    files = ImageFiles([*paths[:2], str(bomb), str(gif), *paths[2:]], 32, warn=messages.append, workers=1)
    for decode_on in ("workers", "device"):
        images = _all(files, batch_size=3, decode_on=decode_on)
        assert images[2].sum() == 0
        assert images[3][1].min() == 255 and images[3][0].max() == 0 and images[3][2].max() == 0, "the first frame: green"
    assert len(messages) == 1 and str(bomb) in messages[0] and "decompression-bomb limit" in messages[0]
    with pytest.raises(UserError, match="bomb.png.*decompression-bomb") as info:
        _all(ImageFiles([str(bomb)], 32, strict=True, workers=1))
    assert "\n" not in str(info.value)
