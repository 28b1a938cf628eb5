import statistics

import pytest
import torch

from gatedssl.data.sources import load_dataset
from gatedssl.evaluation import probe
from gatedssl.evaluation.evaluate import extract
from gatedssl.evaluation.probe import FAST, PROTOCOLS, ProbeResult, linear_probe, topk_accuracy, train_linear_head
from gatedssl.models import gated_resnet18

CPU = torch.device("cpu")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The heads are many tiny ops: a second intra-op thread gains nothing, and on cores shared
    with other jobs waiting for it made this file 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def splits50():
    return load_dataset("embedded", limit_per_class=50)


@pytest.fixture(scope="module")
def tiny_net():
    torch.manual_seed(0)
    return gated_resnet18(width=8)


def test_topk_accuracy_on_hand_made_logits():
    logits = torch.tensor(
        [
            [0.1, 0.9, 0.0, 0.5],  # ranking 1, 3, 0, 2
            [0.8, 0.1, 0.3, 0.2],  # ranking 0, 2, 3, 1
            [0.2, 0.3, 0.4, 0.1],  # ranking 2, 1, 0, 3
        ]
    )
    labels = torch.tensor([1, 2, 3])
    assert topk_accuracy(logits, labels, 1) == pytest.approx(100 / 3)  # only row 0
    assert topk_accuracy(logits, labels, 2) == pytest.approx(200 / 3)  # rows 0, 1
    assert topk_accuracy(logits, labels, 3) == pytest.approx(200 / 3)  # row 2's label is last
    # k above the class count means every class: all rows are hits
    assert topk_accuracy(logits, labels, 5) == 100.0


def test_linear_head_separates_gaussian_blobs():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(6, 16, generator=g) * 4
    train_y = torch.arange(6).repeat_interleave(40)
    test_y = torch.arange(6).repeat_interleave(20)
    train_x = centres[train_y] + torch.randn(len(train_y), 16, generator=g)
    test_x = centres[test_y] + torch.randn(len(test_y), 16, generator=g)
    top1, top5 = train_linear_head(train_x, train_y, test_x, test_y, 6, batch_size=64, seed=0, **FAST)
    assert top1 == 100.0 and top5 == 100.0
    # a head that learnt nothing would be at chance: shuffled train labels leave nothing to learn
    shuffled = train_y[torch.randperm(len(train_y), generator=g)]
    top1_shuffled, _ = train_linear_head(train_x, shuffled, test_x, test_y, 6, batch_size=64, seed=0, **FAST)
    assert top1_shuffled < 50.0


def test_linear_head_on_symmetric_1d_toy_matches_hand_computation():
    # class 0 at -2, -1 and class 1 at +1, +2: the data are mirror images with swapped labels, so
    # logistic regression from zero bias keeps equal biases and the boundary stays exactly at 0.
    train_x = torch.tensor([[-2.0], [-1.0], [1.0], [2.0]])
    train_y = torch.tensor([0, 0, 1, 1])
    # -0.5 -> 0 (right), 3 -> 1 (right), 0.7 -> 1 but labelled 0 (wrong): 2 of 3
    test_x = torch.tensor([[-0.5], [3.0], [0.7]])
    test_y = torch.tensor([0, 1, 0])
    for seed in range(3):
        top1, top5 = train_linear_head(train_x, train_y, test_x, test_y, 2, epochs=50, lr=0.1, weight_decay=0.0, batch_size=4, seed=seed)
        assert top1 == pytest.approx(200 / 3)
        assert top5 == 100.0  # top-5 of two classes is top-2


def test_linear_head_is_reproducible_per_seed():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(200, 8, generator=g), torch.randint(0, 5, (200,), generator=g)  # noise: the result depends on the run

    def run(seed):
        return train_linear_head(x[:150], y[:150], x[150:], y[150:], 5, epochs=5, lr=0.1, weight_decay=0.0, batch_size=32, seed=seed)

    assert run(3) == run(3)
    assert len({run(s) for s in range(4)}) > 1


def test_fast_probe_beats_chance_on_random_backbone_and_aggregates_seeds(splits50, tiny_net, monkeypatch):
    extracted = []  # the features linear_probe computes, reused below for the expected runs

    def spy(*args, **kwargs):
        extracted.append(extract(*args, **kwargs).features)
        return type("F", (), {"features": extracted[-1]})

    monkeypatch.setattr(probe, "extract", spy)
    was = [p.clone() for p in tiny_net.state_dict().values()]
    for gated in (False, True):
        extracted.clear()
        result = linear_probe(tiny_net, splits50, gated, CPU, seeds=3)
        assert isinstance(result, ProbeResult) and result.protocol == "fast" and result.seeds == 3
        assert result.top1 > 17.0  # chance is 10%; measured ~23% dense, ~22% gated
        assert result.top1 <= result.top5 <= 100.0
        # mean and sample std over the runs with seeds 0, 1, 2 on the same cached features
        test, train = extracted  # test split first
        assert train.shape == (len(splits50.train.labels), tiny_net.feature_dim) and test.shape[0] == len(splits50.test.labels)
        runs = [
            train_linear_head(train, splits50.train.labels, test, splits50.test.labels, 10, batch_size=256, seed=s, **FAST)
            for s in range(3)
        ]
        top1, top5 = zip(*runs)
        assert result.top1 == pytest.approx(statistics.fmean(top1)) and result.top5 == pytest.approx(statistics.fmean(top5))
        assert result.top1_std == pytest.approx(statistics.stdev(top1)) and result.top5_std == pytest.approx(statistics.stdev(top5))
        assert (result.top1_std > 0) == (len(set(top1)) > 1)
        assert result.to_dict() == {
            "top1": result.top1,
            "top1_std": result.top1_std,
            "top5": result.top5,
            "top5_std": result.top5_std,
            "seeds": 3,
            "protocol": "fast",
        }
    assert all(torch.equal(a, b) for a, b in zip(was, tiny_net.state_dict().values()))
    one = linear_probe(tiny_net, splits50, True, CPU, seeds=1, epochs=5)
    assert one.seeds == 1 and one.top1_std == 0.0 and one.top5_std == 0.0


def test_paper_protocol_runs_end_to_end_with_frozen_backbone(tiny_net):
    splits = load_dataset("embedded", limit_per_class=20)
    tiny_net.train()
    was = [p.clone() for p in tiny_net.state_dict().values()]
    for gated in (False, True):
        result = linear_probe(tiny_net, splits, gated, CPU, protocol="paper", seeds=2, epochs=1, batch_size=64, progress=False)
        assert result.protocol == "paper" and result.seeds == 2
        assert 0.0 <= result.top1 <= result.top5 <= 100.0
        assert result.top1_std >= 0.0 and result.top5_std >= 0.0
    # frozen: no weight or BN running statistic moved, and the caller's train mode is back
    assert all(torch.equal(a, b) for a, b in zip(was, tiny_net.state_dict().values()))
    assert tiny_net.training


def test_rejects_unknown_protocol_and_bad_counts(splits50, tiny_net):
    assert PROTOCOLS == ("fast", "paper")
    with pytest.raises(ValueError, match="protocol"):
        linear_probe(tiny_net, splits50, False, CPU, protocol="knn")
    with pytest.raises(ValueError):
        linear_probe(tiny_net, splits50, False, CPU, seeds=0)
