"""Which labelled images a fine-tune sees: a class-balanced share drawn by seed, or a fixed list.

The semi-supervised protocol (SimCLR, DSPNet) fine-tunes on 1 % or 10 % of the labels; published splits
are lists of files. Either way the subset is written into the fine-tune's folder as such a list
(`labels.txt`, one image name per line, as `ImageSet.image_names` spells it), so the same split can be
passed back with `--label-list` and two fine-tunes compared on the same images.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..checkpoint import atomic_write
from ..errors import UserError


def per_class_counts(labels: torch.Tensor, num_classes: int, fraction: float) -> list[int]:
    """Images kept per class: the fraction of each class's images, rounded, so rare classes keep their share."""
    counts = torch.bincount(labels, minlength=num_classes).tolist()
    return [min(c, math.floor(fraction * c + 0.5)) for c in counts]


def fraction_problems(fraction: float, labels: torch.Tensor, classes: list[str]) -> list[str]:
    if not 0.0 < fraction <= 1.0:
        return [f"--label-fraction must be in (0, 1], got {fraction:g}"]
    kept = per_class_counts(labels, len(classes), fraction)
    empty = [classes[c] for c, n in enumerate(kept) if n == 0]
    if empty:
        smallest = min(int((labels == classes.index(name)).sum()) for name in empty)
        return [
            f"--label-fraction {fraction:g} leaves no image of class {empty[0]}"
            + (f" (and {len(empty) - 1} more)" if len(empty) > 1 else "")
            + f": it has {smallest} labelled image(s); use at least {0.5 / max(smallest, 1):.3g}"
        ]
    return []


def balanced_subset(labels: torch.Tensor, num_classes: int, fraction: float, seed: int) -> torch.Tensor:
    """Sorted indices of a class-balanced share of the images, the same for the same seed."""
    if fraction >= 1.0:
        return torch.arange(len(labels))
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for c, n in enumerate(per_class_counts(labels, num_classes, fraction)):
        members = torch.nonzero(labels == c).flatten()
        chosen.append(members[torch.randperm(len(members), generator=generator)[:n]])
    return torch.cat(chosen).sort().values


def read_label_list(path: str | Path, names: list[str], classes: list[str]) -> torch.Tensor:
    """Sorted indices of the images a list names (one per line; blank lines and # comments skipped)."""
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError as exc:
        raise UserError(f"--label-list {path}: cannot read it ({exc.strerror or exc})") from None
    wanted = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not wanted:
        raise UserError(f"--label-list {path} names no image; write one image path per line (as in labels.txt of a fine-tune)")
    where = {name: i for i, name in enumerate(names)}
    foreign = sorted({w.split("/")[0] for w in wanted if "/" in w and w.split("/")[0] not in classes})
    if foreign:
        raise UserError(
            f"--label-list {path} names class(es) not in the data: {', '.join(foreign[:5])}; the data has {', '.join(classes[:10])}"
        )
    missing = [w for w in wanted if w not in where]
    if missing:
        raise UserError(
            f"--label-list {path}: {len(missing)} of {len(wanted)} image(s) are not in the labelled training images, e.g. "
            f"{missing[0]!r}; names are paths under the train folder, as labels.txt of an earlier fine-tune writes them"
        )
    return torch.tensor(sorted({where[w] for w in wanted}), dtype=torch.long)


def write_label_list(path: Path, names: list[str], indices: torch.Tensor) -> None:
    atomic_write(path, lambda fh: fh.write("".join(names[i] + "\n" for i in indices.tolist()).encode()))
