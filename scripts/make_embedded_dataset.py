"""Build the small CIFAR-10 subset shipped inside the package (dataset name ``embedded``).

Why: tests, demos and smoke runs need real images that work offline and without
any download, so a slice of CIFAR-10 is embedded in the wheel.

Source: the JPEG copy of CIFAR-10 (``cifar10-jpg.tar.gz``, layout
``cifar10-jpg/{train,test}/<class>/NNNN.jpg``, NNNN = order within the class in
the official batches). The JPEG encoding is lossy (mean absolute pixel error about
5.8/255 against the official pixels), so numbers on this subset are "CIFAR-10 (JPEG
copy)" numbers. We take the first 500 train and the first 100 test images of each
class by NNNN and keep the original JPEG bytes (no re-encoding, no further loss).

Output: one ``.npz`` with ``train_jpeg`` (uint8, all files concatenated),
``train_offsets`` (int64, N+1; image i is ``jpeg[offsets[i]:offsets[i+1]]``),
``train_labels`` (int64), the same three for ``test_``, and ``classes`` (str).
Final size: 1.85 MB (5,000 train + 1,000 test images; zip-compressed because the
JPEG headers repeat, which shrinks 5.6 MB of raw JPEG bytes).

Usage: python scripts/make_embedded_dataset.py [--tar PATH] [--out PATH]
"""

from __future__ import annotations

import argparse
import tarfile
from pathlib import Path

import numpy as np

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
PER_CLASS = {"train": 500, "test": 100}
DEFAULT_TAR = "/work/shared/datasets/cifar10-jpg.tar.gz"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src/gatedssl/data/assets/cifar10_embedded.npz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tar", default=DEFAULT_TAR)
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args()

    wanted = {
        f"cifar10-jpg/{split}/{cls}/{i:04d}.jpg": (split, label, i)
        for split, n in PER_CLASS.items()
        for label, cls in enumerate(CLASSES)
        for i in range(n)
    }
    found: dict[tuple[str, int, int], bytes] = {}
    with tarfile.open(args.tar, "r:gz") as tar:
        for member in tar:
            key = wanted.get(member.name)
            if key is not None:
                found[key] = tar.extractfile(member).read()
    missing = len(wanted) - len(found)
    if missing:
        raise SystemExit(f"{missing} expected files not found in {args.tar}")

    arrays: dict[str, np.ndarray] = {"classes": np.array(CLASSES)}
    for split in PER_CLASS:
        keys = sorted(k for k in found if k[0] == split)  # by class, then NNNN
        blobs = [found[k] for k in keys]
        arrays[f"{split}_jpeg"] = np.frombuffer(b"".join(blobs), dtype=np.uint8)
        arrays[f"{split}_offsets"] = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
        arrays[f"{split}_labels"] = np.array([k[1] for k in keys], dtype=np.int64)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)  # JPEG headers (quant/Huffman tables) repeat, so zip helps
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
