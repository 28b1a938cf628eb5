import math

import pytest
import torch

from gatedssl.evaluation import knn_top1, nearest_neighbour_predict, weighted_knn_predict


def test_weighted_knn_votes_by_exp_similarity_over_temperature():
    # bank: two class-0 points near +x, one class-1 point exactly at the query's direction
    train = torch.tensor([[1.0, 0.2], [1.0, -0.2], [0.6, 0.8]])
    labels = torch.tensor([0, 0, 1])
    query = torch.tensor([[0.6, 0.8]])
    cos = [(0.6 + 0.16) / math.hypot(1, 0.2), (0.6 - 0.16) / math.hypot(1, 0.2), 1.0]
    for temperature in (0.07, 1.0):
        vote0 = math.exp(cos[0] / temperature) + math.exp(cos[1] / temperature)
        vote1 = math.exp(cos[2] / temperature)
        expected = 0 if vote0 > vote1 else 1
        pred = weighted_knn_predict(train, labels, query, num_classes=2, k=3, temperature=temperature)
        assert pred.tolist() == [expected]
    # at T = 0.07 the single close neighbour wins; at T = 1 the two farther ones outvote it
    assert weighted_knn_predict(train, labels, query, 2, k=3, temperature=0.07).item() == 1
    assert weighted_knn_predict(train, labels, query, 2, k=3, temperature=1.0).item() == 0
    # k = 1 keeps only the most similar
    assert weighted_knn_predict(train, labels, query, 2, k=1, temperature=1.0).item() == 1


def test_one_nn_uses_euclidean_distance_not_cosine():
    train = torch.tensor([[10.0, 0.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1])
    query = torch.tensor([[2.0, 0.0]])  # same direction as class 0, but closer to class 1 in distance
    assert nearest_neighbour_predict(train, labels, query).item() == 1
    assert weighted_knn_predict(train, labels, query, 2, k=1).item() == 0


def test_knn_top1_on_separable_clusters_and_chunking():
    torch.manual_seed(0)
    centres = torch.randn(4, 16) * 5
    train_y = torch.arange(4).repeat_interleave(50)
    test_y = torch.arange(4).repeat_interleave(25)
    train = centres[train_y] + torch.randn(200, 16)
    test = centres[test_y] + torch.randn(100, 16)
    assert knn_top1(train, train_y, test, test_y, 4, "weighted", k=20) == pytest.approx(100.0)
    assert knn_top1(train, train_y, test, test_y, 4, "1nn") == pytest.approx(100.0)
    shuffled = test_y[torch.randperm(100)]
    assert knn_top1(train, train_y, test, shuffled, 4, "weighted", k=20) < 60.0
    small_chunks = weighted_knn_predict(train, train_y, test, 4, k=20, chunk=7)
    assert torch.equal(small_chunks, weighted_knn_predict(train, train_y, test, 4, k=20))
