"""SSL methods and training modes (two tables) and the joint objective built from them."""

from .modes import MODES, Mode, ModeOptions, get_mode
from .objective import PAIRINGS, JointObjective
from .registry import METHODS, Embeddings, Method, get_method

__all__ = ["MODES", "PAIRINGS", "METHODS", "Embeddings", "JointObjective", "Method", "Mode", "ModeOptions", "get_method", "get_mode"]
