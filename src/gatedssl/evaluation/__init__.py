"""Evaluation of frozen backbones: kNN on both passes and the MACs they spend."""

from .evaluate import Features, evaluate, extract
from .knn import knn_top1, nearest_neighbour_predict, weighted_knn_predict

__all__ = ["Features", "evaluate", "extract", "knn_top1", "nearest_neighbour_predict", "weighted_knn_predict"]
