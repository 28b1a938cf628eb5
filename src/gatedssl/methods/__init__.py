"""SSL methods (a table) and the joint dense + gated objective built from one of them."""

from .objective import MODES, PAIRINGS, JointObjective
from .registry import METHODS, Embeddings, Method, get_method

__all__ = ["MODES", "PAIRINGS", "METHODS", "Embeddings", "JointObjective", "Method", "get_method"]
