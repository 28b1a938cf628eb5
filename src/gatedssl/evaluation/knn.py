"""k-nearest-neighbour classification of frozen features, chunked so that memory stays flat."""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def weighted_knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> torch.Tensor:
    """Cosine-similarity kNN with exp(sim / T) weighted votes (Wu et al. 2018; solo-learn, lightly)."""
    train = F.normalize(train_features.float(), dim=1)
    test = F.normalize(test_features.float(), dim=1)
    k = min(k, train.shape[0])
    preds = []
    for start in range(0, test.shape[0], chunk):
        sim, idx = (test[start : start + chunk] @ train.T).topk(k, dim=1)
        votes = torch.zeros(sim.shape[0], num_classes, device=sim.device)
        votes.scatter_add_(1, train_labels[idx], (sim / temperature).exp())
        preds.append(votes.argmax(1))
    return torch.cat(preds)


@torch.no_grad()
def nearest_neighbour_predict(
    train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor, chunk: int = 1024
) -> torch.Tensor:
    """1-NN with Euclidean distance on raw features (the reference repository's protocol)."""
    train = train_features.float()
    preds = []
    for start in range(0, test_features.shape[0], chunk):
        dist = torch.cdist(test_features[start : start + chunk].float(), train)
        preds.append(train_labels[dist.argmin(1)])
    return torch.cat(preds)


def knn_top1(
    train_features,
    train_labels,
    test_features,
    test_labels,
    num_classes: int,
    protocol: str = "weighted",
    k: int = 200,
    temperature: float = 0.07,
) -> float:
    """Top-1 accuracy in percent."""
    if protocol == "weighted":
        pred = weighted_knn_predict(train_features, train_labels, test_features, num_classes, k, temperature)
    elif protocol == "1nn":
        pred = nearest_neighbour_predict(train_features, train_labels, test_features)
    else:
        raise ValueError(f"unknown kNN protocol {protocol!r}")
    return 100.0 * (pred == test_labels.to(pred.device)).float().mean().item()
