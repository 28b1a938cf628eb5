"""Published numbers to compare against: the paper's Table 1 and the reference repository's 1-NN results.

Source: T. Krishna, A. K. Rai, A. Drimbarean, E. Arazo, P. Albert, A. F. Smeaton, K. McGuinness,
N. E. O'Connor, "Unifying Synergies between Self-supervised Learning and Dynamic Computation",
BMVC 2023 (arXiv:2301.09164), Table 1: linear-probe top-1 (%) on the test set, mean of 5 runs,
VICReg (ResNet-18, 500 epochs on CIFAR, as in the shipped configs, gatedssl/configs/).
B1 = dense VICReg alone; B2 = gated-only VICReg (both views gated); Dual = the paper's method
(gated view 1, dense view 2). "MACs red." = 1 - gated MACs / dense MACs, in percent.

The reference repository's numbers are 1-NN (Euclidean) top-1 on CIFAR-10 after 500 epochs, as
reported for the authors' code; they are a different protocol from the paper's linear probe.
"""

from __future__ import annotations

from dataclasses import dataclass

SOURCE = (
    'Krishna et al., "Unifying Synergies between Self-supervised Learning and Dynamic Computation", '
    "BMVC 2023 (arXiv:2301.09164), Table 1: linear-probe top-1, mean of 5 runs"
)
REFERENCE_SOURCE = "the paper's reference repository: 1-NN (Euclidean) top-1 on CIFAR-10 after 500 epochs"

# gatedssl dataset name -> the paper's dataset. 'imagefolder' is whatever folder the user points at;
# the paper's ImageNet-100 was such a folder, but nothing in a run says which, so it is never overlaid.
PAPER_DATASET = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "stl10": "STL-10", "imagefolder": "ImageNet-100"}
OVERLAY_DATASETS = ("cifar10", "cifar100", "stl10")


@dataclass(frozen=True)
class PaperRow:
    """One budget of one dataset in Table 1 (accuracies and MACs reductions in percent)."""

    dataset: str  # the paper's name, e.g. "CIFAR-10"
    budget: float  # t_d
    b2_gated: float
    b2_macs_reduction: float
    dual_dense: float
    dual_gated: float
    dual_macs_reduction: float


# B1: dense VICReg alone, linear top-1 (%)
B1_DENSE = {"CIFAR-10": 91.11, "STL-10": 86.15, "CIFAR-100": 65.86, "ImageNet-100": 77.74}

TABLE1 = (
    PaperRow("CIFAR-10", 0.1, 87.75, 85.92, 88.99, 88.94, 81.49),
    PaperRow("CIFAR-10", 0.3, 89.49, 69.27, 90.38, 90.27, 66.43),
    PaperRow("CIFAR-10", 0.5, 90.70, 51.62, 90.20, 90.40, 49.02),
    PaperRow("STL-10", 0.1, 82.48, 82.85, 84.29, 83.29, 78.34),
    PaperRow("STL-10", 0.3, 84.16, 68.38, 84.90, 84.85, 65.24),
    PaperRow("STL-10", 0.5, 85.40, 49.93, 85.75, 85.72, 48.41),
    PaperRow("CIFAR-100", 0.1, 63.12, 84.82, 65.21, 64.31, 81.71),
    PaperRow("CIFAR-100", 0.3, 65.41, 68.68, 65.90, 65.64, 66.83),
    PaperRow("CIFAR-100", 0.5, 65.75, 50.04, 66.41, 66.40, 49.06),
    PaperRow("ImageNet-100", 0.3, 74.04, 67.95, 75.12, 75.04, 64.98),
    PaperRow("ImageNet-100", 0.5, 75.83, 50.11, 76.42, 76.24, 47.69),
)


@dataclass(frozen=True)
class ReferenceRow:
    """The reference repository's 1-NN top-1 (%) at one budget."""

    dataset: str
    budget: float
    gated: float
    dense: float


REFERENCE_1NN_EPOCHS = 500
REFERENCE_1NN = (
    ReferenceRow("CIFAR-10", 0.1, gated=84.99, dense=84.67),
    ReferenceRow("CIFAR-10", 0.3, gated=85.65, dense=85.29),
    ReferenceRow("CIFAR-10", 0.5, gated=85.49, dense=85.44),
)


def paper_rows(dataset: str) -> list[PaperRow]:
    """Table 1's rows for a gatedssl dataset name; empty unless the dataset can be overlaid."""
    if dataset not in OVERLAY_DATASETS:
        return []
    name = PAPER_DATASET[dataset]
    return [row for row in TABLE1 if row.dataset == name]


def paper_b1(dataset: str) -> float | None:
    """Table 1's B1 dense top-1 for a gatedssl dataset name, or None."""
    return B1_DENSE[PAPER_DATASET[dataset]] if dataset in OVERLAY_DATASETS else None


def reference_rows(dataset: str) -> list[ReferenceRow]:
    """The reference repository's 1-NN rows for a gatedssl dataset name (CIFAR-10 only)."""
    if dataset not in OVERLAY_DATASETS:
        return []
    name = PAPER_DATASET[dataset]
    return [row for row in REFERENCE_1NN if row.dataset == name]
