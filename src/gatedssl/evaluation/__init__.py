"""Evaluation of frozen backbones: kNN and linear probes on both passes, and the MACs they spend."""

from .evaluate import Features, evaluate, extract
from .knn import knn_top1, nearest_neighbour_predict, weighted_knn_predict
from .probe import PROTOCOLS, ProbeResult, linear_probe, train_linear_head

__all__ = [
    "PROTOCOLS",
    "Features",
    "ProbeResult",
    "evaluate",
    "extract",
    "knn_top1",
    "linear_probe",
    "nearest_neighbour_predict",
    "train_linear_head",
    "weighted_knn_predict",
]
