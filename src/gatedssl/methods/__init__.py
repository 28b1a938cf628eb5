"""SSL methods and training modes (two tables) and the joint objective built from them.

The modes' table loads without torch (the reports read its names and labels); the rest loads on first use."""

from importlib import import_module

from .modes import MODES, Mode, ModeOptions, get_mode

_LAZY = {
    "PAIRINGS": ".objective",
    "JointObjective": ".objective",
    "METHODS": ".registry",
    "Embeddings": ".registry",
    "Method": ".registry",
    "get_method": ".registry",
}

__all__ = ["MODES", "PAIRINGS", "METHODS", "Embeddings", "JointObjective", "Method", "Mode", "ModeOptions", "get_method", "get_mode"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
