"""Metrics (docs/METHODS.md#metrics) against scikit-learn and hand-built cases; batched equals one-shot."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, balanced_accuracy_score

from shiftkit import metrics


@pytest.mark.filterwarnings("ignore:A single label was found")
@given(st.data())
def test_accuracy_and_balanced_accuracy_match_sklearn(data):
    n = data.draw(st.integers(1, 60))
    k = data.draw(st.integers(2, 5))
    y = data.draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n))
    preds = data.draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n))
    m = metrics.evaluate(torch.tensor(preds), torch.tensor(y), num_classes=k)
    assert m["acc"] == pytest.approx(accuracy_score(y, preds))
    present = sorted(set(y))
    per_class = [sum(p == c for p, t in zip(preds, y) if t == c) / y.count(c) for c in present]
    assert m["balanced_acc"] == pytest.approx(sum(per_class) / len(per_class))
    if set(preds) <= set(y):  # sklearn's definition is the same when no unseen class is predicted
        assert m["balanced_acc"] == pytest.approx(balanced_accuracy_score(y, preds))
    assert m["worst_class_acc"] == pytest.approx(min(per_class))


@given(st.data())
def test_batched_evaluation_equals_one_shot(data):
    n = data.draw(st.integers(1, 80))
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 10**6)))
    logits = torch.randn(n, 3, generator=gen)
    y = torch.randint(0, 3, (n,), generator=gen)
    g = torch.randint(0, 5, (n,), generator=gen)
    whole = metrics.evaluate(logits, y, g, num_groups=5)
    acc = metrics.Accumulator(3, 5)
    for idx in torch.randperm(n, generator=gen).split(data.draw(st.integers(1, 9))):
        acc.update(logits[idx], y[idx], g[idx])
    assert acc.compute() == whole


def test_empty_and_singleton_groups():
    y = torch.tensor([0, 0, 0, 1, 1])
    g = torch.tensor([0, 0, 0, 3, 3])  # groups 1 and 2 are empty
    preds = torch.tensor([0, 1, 0, 1, 0])
    m = metrics.evaluate(preds, y, g, num_groups=4)
    assert m["per_group_acc"] == [pytest.approx(2 / 3), None, None, 0.5]
    assert m["group_balanced_acc"] == pytest.approx((2 / 3 + 0.5) / 2)
    assert m["worst_group_acc"] == 0.5
    assert m["deo"] is None  # needs every (class, attribute) cell
    single = metrics.evaluate(torch.tensor([1]), torch.tensor([1]), torch.tensor([2]), num_classes=2, num_groups=4)
    assert single["per_group_acc"] == [None, None, 1.0, None]
    assert single["acc"] == single["worst_group_acc"] == single["balanced_acc"] == 1.0


def test_deo_is_symmetric_over_the_two_classes():  # docs/METHODS.md#metric-deo, g = 2y + a
    y = torch.tensor([0] * 4 + [1] * 4)
    a = torch.tensor([0, 0, 1, 1] * 2)
    preds = torch.tensor([0, 0, 0, 1, 1, 0, 1, 1])  # acc: g0 1.0, g1 0.5, g2 0.5, g3 1.0
    m = metrics.evaluate(preds, y, 2 * y + a)
    assert m["per_group_acc"] == [1.0, 0.5, 0.5, 1.0]
    assert m["deo"] == pytest.approx(1.0)
    assert m["group_balanced_acc"] == pytest.approx(0.75) and m["worst_group_acc"] == 0.5


def test_train_weighted_accuracy_uses_training_frequencies():  # docs/METHODS.md#metric-train_weighted_acc
    y = torch.tensor([0, 0, 1, 1])
    preds = torch.tensor([0, 0, 0, 0])
    m = metrics.evaluate(preds, y, train_group_counts=[90, 10])
    assert m["train_weighted_acc"] == pytest.approx(0.9)


def test_logits_and_predictions_agree():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    y = torch.tensor([0, 0, 1])
    from_logits, from_preds = metrics.evaluate(logits, y), metrics.evaluate(logits.argmax(1), y, num_classes=2)
    # the score-based metrics need the logits; from predictions they are None
    assert all(from_preds[k] is None and from_logits[k] is not None for k in metrics.SCORE_METRICS)
    assert {k: v for k, v in from_logits.items() if k not in metrics.SCORE_METRICS} == {
        k: v for k, v in from_preds.items() if k not in metrics.SCORE_METRICS}
