"""Dataset loading: the shipped subset, class folders, torchvision's files, and the errors users see."""

from __future__ import annotations

import io
import pickle
import warnings

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from gatedssl.data import DATASETS, load_dataset, sources
from gatedssl.errors import UserError

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def _user_error(*args, **kwargs) -> str:
    with pytest.raises(UserError) as info:
        load_dataset(*args, **kwargs)
    message = str(info.value)
    assert message and "\n" not in message
    return message


def _save(path, image: Image.Image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def _stripes(width: int, height: int) -> Image.Image:
    """Red top third, green middle, blue bottom: a center crop is all green, a squash is not."""
    image = Image.new("RGB", (width, height), RED)
    image.paste(GREEN, (0, height // 3, width, 2 * height // 3))
    image.paste(BLUE, (0, 2 * height // 3, width, height))
    return image


@pytest.fixture
def folders(tmp_path):
    """cat: RGB jpg, grayscale png, BMP (PIL fallback), tall striped png; dog: RGBA png, wide jpg."""
    root = tmp_path / "imgs"
    _save(root / "train/cat/a.jpg", Image.new("RGB", (50, 40), RED))
    _save(root / "train/cat/b.png", Image.new("L", (30, 30), 128))
    _save(root / "train/cat/c.bmp", Image.new("RGB", (20, 20), GREEN))
    _save(root / "train/cat/d.png", _stripes(40, 120))
    _save(root / "train/dog/a.png", Image.new("RGBA", (64, 48), BLUE + (255,)))
    _save(root / "train/dog/b.JPG", Image.new("RGB", (90, 30), BLUE))
    (root / "train/dog/notes.txt").write_text("not an image")
    _save(root / "val/cat/x.png", Image.new("RGB", (33, 70), RED))
    _save(root / "val/dog/y.png", Image.new("RGB", (70, 33), BLUE))
    return root


def test_embedded_is_real_balanced_cifar10_subset():
    splits = load_dataset("embedded", "/ignored")
    assert splits.crop_size == 32 and splits.mean == (0.4914, 0.4822, 0.4465)
    assert splits.train.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    for split, n in ((splits.train, 500), (splits.test, 100)):
        assert split.images.shape == (10 * n, 3, 32, 32) and split.images.dtype == torch.uint8
        assert split.images.is_contiguous() and split.labels.dtype == torch.int64
        assert split.labels.bincount().tolist() == [n] * 10
        assert len(torch.unique(split.images[:50].flatten(1), dim=0)) == 50
        assert 80 < split.images.float().mean() < 160 and split.images.float().std() > 40
    assert splits.pretrain.images is splits.train.images
    # image 0 is the first JPEG in the file, decoded independently with PIL
    with np.load(sources.EMBEDDED_PATH) as z:
        first = bytes(z["train_jpeg"][z["train_offsets"][0] : z["train_offsets"][1]])
    pil = torch.from_numpy(np.array(Image.open(io.BytesIO(first)).convert("RGB"))).permute(2, 0, 1)
    assert (pil.int() - splits.train.images[0].int()).abs().max() <= 2


def test_embedded_limit_keeps_first_per_class():
    full, small = load_dataset("embedded"), load_dataset("embedded", limit_per_class=3)
    assert small.train.labels.tolist() == [c for c in range(10) for _ in range(3)]
    assert torch.equal(small.train.images[3:6], full.train.images[500:503])
    assert len(small.test.labels) == 30


def test_image_folder(folders):
    splits = load_dataset("imagefolder", str(folders), image_size=32)
    stored = round(32 * 256 / 224)
    assert (splits.crop_size, splits.mean, splits.std) == (32, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert splits.train.classes == splits.test.classes == ["cat", "dog"]
    assert splits.train.images.shape == (6, 3, stored, stored) and splits.train.images.dtype == torch.uint8
    assert splits.train.labels.tolist() == [0, 0, 0, 0, 1, 1]
    assert splits.test.images.shape == (2, 3, stored, stored) and splits.test.labels.tolist() == [0, 1]
    colors = splits.train.images.float().mean((2, 3))
    expected = [RED, (128, 128, 128), GREEN, GREEN, BLUE, BLUE]  # index 3: only the green middle survives
    assert torch.allclose(colors, torch.tensor(expected, dtype=torch.float), atol=3)  # JPEG: off by a little
    center = splits.train.images[3, :, 2:-2].float().mean((1, 2))  # edge rows blend with red/blue
    assert torch.allclose(center, torch.tensor(GREEN, dtype=torch.float), atol=1)  # center-cropped, not squashed
    assert load_dataset("imagefolder", str(folders)).train.images.shape[-1] == 256


def test_image_folder_parallel_decode_keeps_order(folders, monkeypatch):
    serial = load_dataset("imagefolder", str(folders), image_size=32)
    monkeypatch.setattr(sources, "_DECODE_BATCH", 2)  # 3 batches -> worker processes
    parallel = load_dataset("imagefolder", str(folders), image_size=32)
    assert torch.equal(serial.train.images, parallel.train.images)


def test_image_folder_limit_and_test_instead_of_val(folders):
    (folders / "val").rename(folders / "test")
    splits = load_dataset("imagefolder", str(folders), image_size=32, limit_per_class=1)
    assert splits.train.labels.tolist() == [0, 1] and splits.test.labels.tolist() == [0, 1]
    colors = splits.train.images.float().mean((2, 3))
    assert torch.allclose(colors, torch.tensor([RED, BLUE], dtype=torch.float), atol=3)


def test_cifar_name_reads_class_folders(tmp_path, monkeypatch):
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "__init__", None)  # must not be used
    for split, n in (("train", 3), ("test", 2)):
        for c, name in enumerate(["plane", "ship"]):
            for i in range(n):
                _save(tmp_path / split / name / f"{i:04d}.png", Image.new("RGB", (32, 32), (c * 200, i * 50, 7)))
    splits = load_dataset("cifar10", str(tmp_path))
    assert splits.crop_size == 32 and splits.mean == (0.4914, 0.4822, 0.4465)
    assert splits.train.images.shape == (6, 3, 32, 32) and splits.test.images.shape == (4, 3, 32, 32)
    assert splits.train.labels.tolist() == [0, 0, 0, 1, 1, 1] and splits.train.classes == ["plane", "ship"]
    assert splits.train.images[4, :, 5, 5].tolist() == [200, 50, 7]  # PNG: exact pixels
    assert load_dataset("cifar100", str(tmp_path)).mean == (0.5071, 0.4865, 0.4409)


def _pattern(n: int) -> np.ndarray:
    """(n, 3, 32, 32): channel 0 = row index, 1 = column index, 2 = image index."""
    h, w = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    return np.stack([np.stack([h, w, np.full((32, 32), i)]) for i in range(n)]).astype(np.uint8)


def _check_pattern(images: torch.Tensor, index: list[int]) -> None:
    assert images.is_contiguous() and images.dtype == torch.uint8
    assert torch.equal(images[:, 0, :, 0], torch.arange(32).expand(len(index), 32).to(torch.uint8))
    assert torch.equal(images[:, 1, 0, :], torch.arange(32).expand(len(index), 32).to(torch.uint8))
    assert images[:, 2, 0, 0].tolist() == index


def test_cifar10_from_torchvision_files(tmp_path, monkeypatch):
    """Fake cifar-10-batches-py (checksums bypassed): layout NHWC -> NCHW, labels, limit."""
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    labels = [2, 0, 1, 0]
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]:
        batch = {"data": _pattern(4).reshape(4, -1), "labels": labels}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": ["a", "b", "c"]}))
    splits = load_dataset("cifar10", str(tmp_path))
    assert splits.train.images.shape == (20, 3, 32, 32) and splits.test.images.shape == (4, 3, 32, 32)
    _check_pattern(splits.test.images, [0, 1, 2, 3])
    assert splits.train.labels.tolist() == labels * 5 and splits.train.classes == ["a", "b", "c"]
    small = load_dataset("cifar10", str(tmp_path), limit_per_class=1)
    assert small.test.labels.tolist() == [2, 0, 1]  # original order kept
    _check_pattern(small.test.images, [0, 1, 2])


def test_stl10_pretrain_adds_unlabeled(tmp_path, monkeypatch):
    """Fake stl10_binary (column-major images, 1-based labels), checksums bypassed."""
    monkeypatch.setattr(torchvision.datasets.stl10, "check_integrity", lambda *a, **k: True)
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    pattern = np.pad(_pattern(5), ((0, 0), (0, 0), (0, 64), (0, 64)))  # 96x96
    for split, n in (("train", 3), ("unlabeled", 5), ("test", 2)):
        (folder / f"{split}_X.bin").write_bytes(pattern[:n].transpose(0, 1, 3, 2).tobytes())
        if split != "unlabeled":
            (folder / f"{split}_y.bin").write_bytes(np.array([1, 2, 1][:n], dtype=np.uint8).tobytes())
    (folder / "class_names.txt").write_text("airplane\nbird\n")
    splits = load_dataset("stl10", str(tmp_path))
    assert splits.crop_size == 96 and splits.mean == (0.485, 0.456, 0.406)
    assert splits.train.images.shape == (3, 3, 96, 96) and splits.train.labels.tolist() == [0, 1, 0]
    assert splits.pretrain.images.shape == (8, 3, 96, 96) and splits.pretrain.labels.tolist() == [0, 1, 0] + [-1] * 5
    _check_pattern(splits.pretrain.images[:, :, :32, :32].contiguous(), [0, 1, 2, 0, 1, 2, 3, 4])
    assert splits.test.labels.tolist() == [0, 1] and splits.train.classes == ["airplane", "bird"]
    small = load_dataset("stl10", str(tmp_path), limit_per_class=1)
    assert small.pretrain.labels.tolist() == [0, 1, -1]


def test_cifar10_missing_files_is_one_line_error(tmp_path, monkeypatch):
    attempts = []

    def offline(self):
        attempts.append(self.root)
        raise OSError("no network")

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", offline)
    message = _user_error("cifar10", str(tmp_path))
    assert str(tmp_path) in message and "cifar-10-python.tar.gz" in message and attempts
    monkeypatch.setattr(torchvision.datasets.STL10, "download", offline)
    assert "stl10_binary" in _user_error("stl10", str(tmp_path))


def test_folder_errors(tmp_path, folders):
    assert all(name in _user_error("nope") for name in DATASETS)
    assert "data" in _user_error("imagefolder")
    assert str(tmp_path / "missing") in _user_error("imagefolder", str(tmp_path / "missing"))
    assert "image_size" in _user_error("cifar10", str(folders), image_size=64)

    (tmp_path / "no_val" / "train" / "cat").mkdir(parents=True)
    assert "val" in _user_error("imagefolder", str(tmp_path / "no_val"))
    (tmp_path / "no_classes" / "train").mkdir(parents=True)
    (tmp_path / "no_classes" / "val").mkdir()
    assert "class folder" in _user_error("imagefolder", str(tmp_path / "no_classes"))
    (folders / "train" / "bird").mkdir()  # a class without images
    (folders / "train" / "bird" / "readme.txt").write_text("x")
    assert "bird" in _user_error("imagefolder", str(folders))


def test_mismatched_classes_and_unreadable_image(folders):
    (folders / "val" / "dog").rename(folders / "val" / "horse")
    assert "class folders" in _user_error("imagefolder", str(folders))
    (folders / "val" / "horse").rename(folders / "val" / "dog")
    (folders / "train" / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    assert "broken.jpg" in _user_error("imagefolder", str(folders), strict=True)


def test_unreadable_and_truncated_images_are_skipped_and_counted(folders):
    (folders / "train" / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    whole = (folders / "train" / "cat" / "a.jpg").read_bytes()
    (folders / "train" / "dog" / "cut.jpg").write_bytes(whole[: len(whole) // 3])  # truncated mid-stream
    messages = []
    splits = load_dataset("imagefolder", str(folders), image_size=32, warn=messages.append)
    assert splits.train.labels.tolist() == [0, 0, 0, 0, 1, 1], "the readable images all stay, in order"
    assert len(messages) == 1 and "skipped 2 unreadable image(s) of 8" in messages[0]
    assert "broken.jpg" in messages[0] and "cut.jpg" in messages[0] and "--strict" in messages[0]
    message = _user_error("imagefolder", str(folders), image_size=32, strict=True)
    assert "2 unreadable image(s)" in message


def test_a_class_with_no_readable_image_is_an_error(folders):
    for path in (folders / "val" / "dog").iterdir():
        path.write_bytes(b"garbage")
    assert "no readable image left in class folder(s) dog" in _user_error("imagefolder", str(folders), warn=lambda m: None)


def test_a_symlink_loop_is_walked_once_and_each_file_counted_once(folders, tmp_path):
    plain = load_dataset("imagefolder", str(folders), storage="memory", warn=lambda m: None)
    (folders / "train" / "cat" / "loop").symlink_to("..", target_is_directory=True)  # train/cat/loop -> train/
    (folders / "train" / "dog" / "again").symlink_to(folders / "train" / "dog", target_is_directory=True)
    said = []
    looped = load_dataset("imagefolder", str(folders), storage="memory", warn=said.append)
    assert len(looped.train.labels) == len(plain.train.labels)
    assert torch.equal(looped.train.images, plain.train.images) and torch.equal(looped.train.labels, plain.train.labels)
    assert any("symlinks" in m for m in said)


def test_small_pictures_warn_before_upsampling_and_train_at_crop_size(tmp_path, capsys):
    from gatedssl.cli import main

    root = tmp_path / "small"
    for split, n in (("train", 6), ("val", 2)):
        for cls, colour in (("cat", RED), ("dog", BLUE)):
            for i in range(n):
                _save(root / f"{split}/{cls}/{i}.png", Image.new("RGB", (32, 32), colour))
    said = []
    load_dataset("imagefolder", str(root), warn=said.append)  # the default 224 px crop
    assert any("upsamples" in m and "--crop-size 32" in m for m in said), said
    said.clear()
    load_dataset("imagefolder", str(root), image_size=40, warn=said.append)  # a crop just larger than the images: still said
    assert len(said) == 1 and "upsamples them 1.2x" in said[0], said
    said.clear()
    splits = load_dataset("imagefolder", str(root), image_size=32, warn=said.append)
    assert not said and splits.crop_size == 32 and splits.train.images.shape[-1] == 37  # stored at round(32 x 256 / 224)
    out = tmp_path / "run"
    args = [
        "pretrain",
        "--dataset",
        "imagefolder",
        "--data-dir",
        str(root),
        "--crop-size",
        "32",
        "--width",
        "8",
        "--proj-dim",
        "16",
        "--epochs",
        "1",
        "--batch-size",
        "6",
        "--device",
        "cpu",
        "--quiet",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    config = (out / "config.yaml").read_text()
    assert "crop_size: 32" in config and "stem: cifar" in config
    capsys.readouterr()
    for bad, needle in ((["--crop-size", "0"], "crop_size"), (["--dataset", "cifar10", "--crop-size", "32"], "imagefolder")):
        code = main(["pretrain", "--data-dir", str(root), "--out", str(tmp_path / "bad"), "--device", "cpu", *bad])
        err = capsys.readouterr().err
        assert code == 2 and needle in err and "Traceback" not in err, err


@pytest.fixture
def flat(tmp_path):
    """An unlabeled folder: train/ holds 5 images directly (plus a text file), no val/."""
    root = tmp_path / "flat"
    for i, colour in enumerate((RED, GREEN, BLUE, RED, GREEN)):
        _save(root / f"train/{i}.png", Image.new("RGB", (40, 40), colour))
    (root / "train/notes.txt").write_text("not an image")
    return root


@pytest.mark.parametrize("storage", ["memory", "stream"])
def test_images_directly_in_train_load_as_unlabeled(flat, storage):
    splits = load_dataset("imagefolder", str(flat), image_size=32, storage=storage, warn=lambda m: None)
    assert not splits.labeled and splits.train is None and splits.test is None
    assert splits.pretrain.classes == [] and splits.pretrain.labels.tolist() == [-1] * 5
    assert splits.pretrain.images.shape == (5, 3, 37, 37)
    assert str(flat / "train") in splits.unlabeled_reason and "directly" in splits.unlabeled_reason
    assert "\n" not in splits.unlabeled_reason
    if storage == "stream":
        assert isinstance(splits.pretrain.images, sources.ImageFiles)
        assert splits.pretrain.images.paths == [str(flat / f"train/{i}.png") for i in range(5)]
    colors = torch.stack([splits.pretrain.images[i] for i in range(5)]).float().mean((2, 3))
    assert torch.allclose(colors, torch.tensor([RED, GREEN, BLUE, RED, GREEN], dtype=torch.float), atol=1)


def test_labelled_splits_say_so(folders):
    splits = load_dataset("imagefolder", str(folders), image_size=32)
    assert splits.labeled and splits.unlabeled_reason is None


def test_images_directly_in_train_win_over_val(flat):
    """Top-level images in train/ make the data unlabeled even next to a val/ folder, which is then not read."""
    _save(flat / "train/sub/deeper/x.png", Image.new("RGB", (40, 40), BLUE))
    _save(flat / "val/cat/y.png", Image.new("RGB", (40, 40), BLUE))
    splits = load_dataset("imagefolder", str(flat), image_size=32)
    assert not splits.labeled and len(splits.pretrain.labels) == 6  # sub/deeper/x.png counted too
    assert str(flat / "val") in splits.unlabeled_reason


def test_subfolders_without_val_are_unlabeled_and_each_image_counted_once(tmp_path):
    root = tmp_path / "nested"
    for path in ("train/2023/a.jpg", "train/2023/b.png", "train/2024/march/c.png", "train/2024/d.png", "train/z/e.png"):
        _save(root / path, Image.new("RGB", (40, 40), GREEN))
    (root / "train/z/loop").symlink_to("..", target_is_directory=True)  # train/z/loop -> train/
    (root / "train/again").symlink_to(root / "train/2024", target_is_directory=True)
    said = []
    splits = load_dataset("imagefolder", str(root), image_size=32, storage="stream", warn=said.append)
    assert not splits.labeled and splits.train is None and splits.test is None
    assert splits.unlabeled_reason == f"{root} has no val/ or test/ folder"
    relative = [str(sources.Path(p).relative_to(root / "train")) for p in splits.pretrain.images.paths]
    assert relative == ["2023/a.jpg", "2023/b.png", "2024/d.png", "2024/march/c.png", "z/e.png"]
    assert splits.pretrain.labels.tolist() == [-1] * 5
    assert any("symlinks" in m for m in said)


def test_unlabeled_limit_keeps_the_first_n(flat):
    splits = load_dataset("imagefolder", str(flat), image_size=32, limit_per_class=2)
    assert splits.pretrain.labels.tolist() == [-1, -1]
    colors = splits.pretrain.images.float().mean((2, 3))
    assert torch.allclose(colors, torch.tensor([RED, GREEN], dtype=torch.float), atol=1)
    stream = load_dataset("imagefolder", str(flat), image_size=32, limit_per_class=3, storage="stream")
    assert stream.pretrain.images.paths == [str(flat / f"train/{i}.png") for i in range(3)]


def test_unlabeled_auto_storage_and_upsampling_warning(flat, monkeypatch):
    said = []
    splits = load_dataset("imagefolder", str(flat), storage="auto", warn=said.append)  # 40 px images, 224 px crop
    assert isinstance(splits.pretrain.images, torch.Tensor) and not splits.labeled
    assert any("upsamples" in m and "--crop-size 40" in m for m in said), said
    monkeypatch.setattr(sources, "_free_bytes", lambda device: (1000, None))
    said.clear()
    splits = load_dataset("imagefolder", str(flat), image_size=32, storage="auto", warn=said.append)
    assert isinstance(splits.pretrain.images, sources.ImageFiles) and any("streaming" in m for m in said)


def test_unlabeled_unreadable_images_are_skipped_or_strict(flat):
    (flat / "train/broken.jpg").write_bytes(b"not a jpeg")
    said = []
    splits = load_dataset("imagefolder", str(flat), image_size=32, warn=said.append)
    assert splits.pretrain.labels.tolist() == [-1] * 5
    assert len(said) == 1 and "skipped 1 unreadable image(s) of 6" in said[0] and "broken.jpg" in said[0]
    assert "broken.jpg" in _user_error("imagefolder", str(flat), image_size=32, strict=True)
    for path in (flat / "train").glob("*.png"):
        path.write_bytes(b"garbage")
    assert "no readable image left in" in _user_error("imagefolder", str(flat), image_size=32, warn=lambda m: None)


def test_empty_or_imageless_train_is_one_line_error(tmp_path):
    (tmp_path / "empty" / "train").mkdir(parents=True)
    message = _user_error("imagefolder", str(tmp_path / "empty"))
    assert "no image file under" in message and str(tmp_path / "empty" / "train") in message and "val/" in message
    (tmp_path / "texts" / "train" / "sub").mkdir(parents=True)
    (tmp_path / "texts" / "train" / "sub" / "a.txt").write_text("x")
    assert "no image file under" in _user_error("imagefolder", str(tmp_path / "texts"))
    _save(tmp_path / "no_train" / "a.png", Image.new("RGB", (8, 8), RED))  # images in DIR itself: not read
    message = _user_error("imagefolder", str(tmp_path / "no_train"))
    assert "no train/ folder" in message and "DIR" not in message


def bomb_png(path, side: int = 20_000) -> None:
    """A 1-bit 8x8 PNG whose header says side x side: a few bytes announcing a decompression bomb."""
    import struct
    import zlib

    buffer = io.BytesIO()
    Image.new("1", (8, 8)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", side, side)  # IHDR's width and height, then its CRC
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))


def animated_gif(path, first=BLUE, fmt: str = "GIF") -> None:
    frames = [Image.new("RGB", (40, 40), colour) for colour in (first, RED, GREEN)]
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, format=fmt, save_all=True, append_images=frames[1:], duration=50, loop=0)


@pytest.mark.parametrize("side", [20_000, 12_000])  # beyond twice PIL's limit (an error there), and within (a warning)
def test_a_decompression_bomb_is_named_and_skipped(folders, side):
    """torchvision's PNG decoder dies (segmentation fault) on such a header: it must be refused before decoding.
    First in its folder, it is also the picture the upsampling check looks at."""
    bomb_png(folders / "train/cat/0bomb.png", side)
    messages = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # nor a warning printed per file
        splits = load_dataset("imagefolder", str(folders), image_size=32, warn=messages.append)
    assert splits.train.labels.tolist() == [0, 0, 0, 0, 1, 1]
    assert len(messages) == 1 and "skipped 1 unreadable image(s) of 7" in messages[0] and "0bomb.png" in messages[0]
    message = _user_error("imagefolder", str(folders), image_size=32, strict=True)
    assert "0bomb.png" in message and "decompression-bomb limit" in message


@pytest.mark.parametrize("name,fmt", [("anim.gif", "GIF"), ("anim_gif_named.png", "GIF")])
def test_an_animated_gif_is_read_as_its_first_frame(folders, name, fmt):
    animated_gif(folders / "train/dog" / name, first=GREEN, fmt=fmt)
    messages = []
    splits = load_dataset("imagefolder", str(folders), image_size=32, warn=messages.append)
    assert not messages
    assert splits.train.labels.tolist() == [0, 0, 0, 0, 1, 1, 1]
    first = splits.train.images[5]  # cat has 4 images; dog in name order: a.png, anim..., b.JPG
    assert first[1].min() == 255 and first[0].max() == 0 and first[2].max() == 0, "all green: the first frame"
