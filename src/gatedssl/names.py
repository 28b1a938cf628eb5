"""The names the registries hold, without importing them: config.py and `--help` stay torch-free.

`tests/test_layering.py` checks that each list names exactly what its registry holds.
Sub-network names are parsed here too, so a bad `--widths` or `--subnet` is caught before torch loads.
"""

from __future__ import annotations

# models.backbone.ARCHS; the second group's --width is torchvision's width multiplier, the first's the first stage's channels
WIDTH_MULTIPLIER_ARCHS = ("mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small")
ARCH_NAMES = ("resnet18", "resnet34", "resnet50", *WIDTH_MULTIPLIER_ARCHS)
METHOD_NAMES = ("vicreg", "barlow", "simclr", "simsiam", "byol")  # methods.registry.METHODS
MODE_NAMES = ("dual", "dense", "gated", "slimmable", "posthoc")  # methods.modes.MODES
DATASET_NAMES = ("embedded", "cifar10", "cifar100", "stl10", "imagefolder")  # data.sources.DATASETS
# methods.modes: reference (gated view 1, dense view 2); symmetric adds the swap; plus-dense adds B1's (dense view 1, dense view 2)
PAIRINGS = ("reference", "symmetric", "plus-dense")
PIPELINES = ("device", "loader")  # data.pipelines.make_views
STORAGES = ("auto", "memory", "stream")  # data.sources.load_dataset
KNN_PROTOCOLS = ("weighted", "1nn")  # evaluation.knn.knn_top1
VICREG_WEIGHTS = (25.0, 25.0, 1.0)  # VICReg's invariance, variance and covariance weights (Bardes et al.), in the mean form

WIDTH_PREFIX = "width"


def width_name(width: float) -> str:
    """A slimmable width's sub-network name; the full width is the dense network itself."""
    return "dense" if width == 1 else f"{WIDTH_PREFIX}{width:g}"


def parse_subnet(name: str) -> tuple[str, float]:
    """(kind, width) of a sub-network name: dense -> ("dense", 1), gated -> ("gated", 1), width0.5 -> ("width", 0.5);
    width1 is the dense network.

    Raises ValueError with the line to show the user."""
    if name in ("dense", "gated"):
        return name, 1.0
    if name.startswith(WIDTH_PREFIX):
        try:
            width = float(name[len(WIDTH_PREFIX) :])
        except ValueError:
            width = float("nan")
        if 0 < width <= 1:
            return ("dense", 1.0) if width == 1 else ("width", width)
        raise ValueError(f"sub-network {name!r}: a width must be a number in (0, 1], e.g. width0.5")
    raise ValueError(f"unknown sub-network {name!r}; give dense, gated or widthW (W in (0, 1], e.g. width0.5)")
