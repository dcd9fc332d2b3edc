"""The reported metrics (docs/METHODS.md#metrics): ece, macro_f1, per-class precision and recall, auroc,
dp_gap and eo_gap against scikit-learn, fairlearn and hand-computed cases; batched equals one-shot, the
member axis equals one accumulator per member, the ranks' merge equals one process."""

import math
import warnings

import numpy as np
import pytest
import torch
from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

from shiftkit import metrics
from shiftkit.metrics_extra import confidence_bin
from shiftkit.selection import Selection, parse_select

NEW = ("ece", "macro_f1", "auroc", "dp_gap", "eo_gap")


def _labels_and_preds(data, n_min=1):
    n = data.draw(st.integers(n_min, 60))
    k = data.draw(st.integers(2, 5))
    y = data.draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n))
    preds = data.draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n))
    return k, y, preds


def _none_as_nan(values):
    return [math.nan if v is None else v for v in values]


def _guo_ece(logits: torch.Tensor, y: torch.Tensor, bins: int = 15) -> float:
    """Guo et al.'s loop over bins (lo, hi], in float64 with edges i/15."""
    probs = torch.softmax(logits.double(), -1).numpy()
    conf, hit = probs.max(1), probs.argmax(1) == y.numpy()
    ece = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = (conf > lo) & (conf <= hi) if b else conf <= hi
        if inside.any():
            ece += abs(conf[inside].mean() - hit[inside].mean()) * inside.mean()
    return float(ece)


# --- against scikit-learn -----------------------------------------------------------------------------


@given(st.data())
def test_macro_f1_equals_sklearn_over_the_classes_in_labels_or_predictions(data):
    k, y, preds = _labels_and_preds(data)
    m = metrics.evaluate(torch.tensor(preds), torch.tensor(y), num_classes=k)
    present = sorted(set(y) | set(preds))
    for zero_division in (0.0, 1.0, np.nan):  # never used: each present class has a nonzero denominator
        want = f1_score(y, preds, labels=present, average="macro", zero_division=zero_division)
        assert m["macro_f1"] == pytest.approx(want, rel=1e-12, abs=1e-15)
    assert m["macro_f1"] == pytest.approx(f1_score(y, preds, average="macro"), rel=1e-12, abs=1e-15)


@given(st.data())
def test_per_class_precision_and_recall_equal_sklearn_with_nan_for_undefined(data):
    k, y, preds = _labels_and_preds(data)
    m = metrics.evaluate(torch.tensor(preds), torch.tensor(y), num_classes=k)
    labels = list(range(k))
    precision = precision_score(y, preds, labels=labels, average=None, zero_division=np.nan)
    recall = recall_score(y, preds, labels=labels, average=None, zero_division=np.nan)
    np.testing.assert_allclose(_none_as_nan(m["per_class_precision"]), precision, rtol=1e-12)
    np.testing.assert_allclose(_none_as_nan(m["per_class_recall"]), recall, rtol=1e-12)
    assert m["per_class_recall"] == m["per_class_acc"]


@given(st.integers(1, 80), st.integers(0, 2**16), st.booleans())
def test_auroc_equals_sklearn_including_ties(n, seed, coarse):
    gen = torch.Generator().manual_seed(seed)
    # coarse logits (a few integer values) tie many scores; fine ones tie none
    logits = torch.randint(-2, 3, (n, 2), generator=gen).float() if coarse else torch.randn(n, 2, generator=gen)
    y = torch.randint(0, 2, (n,), generator=gen)
    m = metrics.evaluate(logits, y)
    if len(set(y.tolist())) < 2:
        assert m["auroc"] is None
        return
    score = (logits[:, 1].double() - logits[:, 0].double()).numpy()
    assert m["auroc"] == pytest.approx(roc_auc_score(y.numpy(), score), rel=1e-12)
    if not coarse:  # the probability of class 1 orders the examples as the logit difference does
        p1 = torch.softmax(logits.double(), 1)[:, 1].numpy()
        assert m["auroc"] == pytest.approx(roc_auc_score(y.numpy(), p1), rel=1e-12)


@given(st.integers(1, 100), st.integers(2, 6), st.integers(0, 2**16), st.floats(0.1, 8.0))
def test_ece_equals_guo_et_al_definition(n, k, seed, scale):
    gen = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(n, k, generator=gen)
    y = torch.randint(0, k, (n,), generator=gen)
    assert metrics.evaluate(logits, y, num_classes=k)["ece"] == pytest.approx(_guo_ece(logits, y), abs=n * 2.0**-33)


# --- against fairlearn --------------------------------------------------------------------------------


def _fair_batch(data, n_min=4):
    n = data.draw(st.integers(n_min, 60))
    y = data.draw(st.lists(st.integers(0, 1), min_size=n, max_size=n))
    a = data.draw(st.lists(st.integers(0, 1), min_size=n, max_size=n))
    preds = data.draw(st.lists(st.integers(0, 1), min_size=n, max_size=n))
    return np.array(y), np.array(a), np.array(preds)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_dp_gap_and_eo_gap_equal_fairlearn(data):
    y, a, preds = _fair_batch(data)
    m = metrics.evaluate(torch.tensor(preds), torch.tensor(y), torch.tensor(2 * y + a), num_classes=2, num_groups=4)
    cells = {(int(c), int(s)) for c, s in zip(y, a)}
    if set(a) == {0, 1}:
        want = demographic_parity_difference(y, preds, sensitive_features=a, method="between_groups")
        assert m["dp_gap"] == pytest.approx(want, abs=1e-15)
    else:
        assert m["dp_gap"] is None  # fairlearn: one group, a difference of 0
    if len(cells) == 4:
        want = equalized_odds_difference(y, preds, sensitive_features=a, method="between_groups")
        assert m["eo_gap"] == pytest.approx(want, abs=1e-15)
        assert m["eo_gap"] <= m["deo"] + 1e-12 <= 2 * m["eo_gap"] + 2e-12  # deo sums the two gaps
    else:
        assert m["eo_gap"] is None  # fairlearn counts the empty cell's rate as 0


def test_fairness_gaps_by_hand():
    # a=0: y=0 predicted [0, 1], y=1 predicted [1, 1];  a=1: y=0 [0, 0], y=1 [0, 1]
    y = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
    a = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    preds = torch.tensor([0, 1, 1, 1, 0, 0, 0, 1])
    m = metrics.evaluate(preds, y, 2 * y + a)
    assert m["dp_gap"] == pytest.approx(3 / 4 - 1 / 4)  # selection rates 3/4 and 1/4
    assert m["eo_gap"] == pytest.approx(max(1 - 1 / 2, 1 / 2 - 0))  # TPR 1 vs 1/2, FPR 1/2 vs 0
    assert m["deo"] == pytest.approx(1.0)


def test_fairness_gaps_need_the_two_attribute_layout():
    y, g = torch.tensor([0, 1, 1]), torch.tensor([0, 1, 2])
    m = metrics.evaluate(y, y, g, num_classes=2, num_groups=3)
    assert m["dp_gap"] is None and m["eo_gap"] is None
    m = metrics.evaluate(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2]), torch.tensor([0, 1, 3]), num_groups=4)
    assert m["dp_gap"] is None and m["eo_gap"] is None  # three classes


# --- hand cases and edge cases ------------------------------------------------------------------------


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_a_perfectly_calibrated_model_has_ece_zero():
    logits = torch.tensor([[0.0, math.log(3.0)]] * 4, dtype=torch.float64)  # p = 0.75 for class 1 everywhere
    y = torch.tensor([1, 1, 1, 0])  # 3 of 4 right
    assert metrics.evaluate(logits, y)["ece"] == pytest.approx(0.0, abs=1e-12)


def test_ece_of_a_three_bin_example():
    conf = [0.55, 0.55, 0.95, 0.7]  # bins 8, 8, 14, 10
    logits = torch.tensor([[0.0, _logit(p)] for p in conf], dtype=torch.float64)
    y = torch.tensor([1, 0, 1, 0])  # right, wrong, right, wrong
    want = 2 / 4 * abs(0.55 - 0.5) + 1 / 4 * abs(0.95 - 1) + 1 / 4 * abs(0.7 - 0)
    assert want == pytest.approx(0.2125)
    assert metrics.evaluate(logits, y)["ece"] == pytest.approx(want, abs=1e-9)


def test_bins_are_open_below_and_closed_above():
    edges = torch.arange(0, 16, dtype=torch.float64) / 15
    below, above = torch.nextafter(edges, edges - 1), torch.nextafter(edges, edges + 1)
    assert confidence_bin(edges).tolist() == [0] + list(range(15))
    assert confidence_bin(above[:-1]).tolist() == list(range(15))
    assert confidence_bin(below[1:]).tolist() == list(range(15))


def test_fixed_point_confidence_stays_within_its_bound_of_the_float_sum():
    gen = torch.Generator().manual_seed(0)
    logits, y = torch.randn(5000, 4, generator=gen), torch.randint(0, 4, (5000,), generator=gen)
    assert abs(metrics.evaluate(logits, y)["ece"] - _guo_ece(logits, y)) < 2.0**-33


def test_auroc_hand_cases():
    y = torch.tensor([0, 1, 0, 1])
    tied = torch.zeros(4, 2)
    assert metrics.evaluate(tied, y)["auroc"] == 0.5
    # scores 0.1, 0.4, 0.4, 0.8 (class 1 logit): pairs (pos, neg) win 3, tie 1 of 4
    logits = torch.tensor([[0.0, 0.1], [0.0, 0.4], [0.0, 0.4], [0.0, 0.8]])
    assert metrics.evaluate(logits, y)["auroc"] == 0.875
    assert metrics.evaluate(logits, torch.tensor([1, 0, 1, 0]))["auroc"] == 0.125
    assert metrics.evaluate(logits, torch.ones(4, dtype=torch.long))["auroc"] is None  # one class absent
    assert metrics.evaluate(torch.randn(4, 3), torch.tensor([0, 1, 2, 1]))["auroc"] is None  # three classes


def test_an_empty_split_reports_none():
    m = metrics.evaluate(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long),
                         num_groups=4)
    assert m["n"] == 0 and all(m[name] is None for name in NEW)
    assert m["per_class_precision"] == m["per_class_recall"] == [None, None]


def test_an_absent_class_is_left_out_of_macro_f1_and_undefined_in_precision_and_recall():
    m = metrics.evaluate(torch.tensor([0, 0, 1]), torch.tensor([0, 1, 1]), num_classes=3)
    assert m["per_class_precision"] == [0.5, 1.0, None] and m["per_class_recall"] == [1.0, 0.5, None]
    assert m["macro_f1"] == pytest.approx((2 / 3 + 2 / 3) / 2)  # class 2 is neither a label nor a prediction
    wrong = metrics.evaluate(torch.tensor([2, 2]), torch.tensor([0, 0]), num_classes=3)
    assert wrong["macro_f1"] == 0.0 and wrong["per_class_precision"] == [None, None, 0.0]


def test_score_metrics_need_logits_in_every_batch():
    y = torch.tensor([0, 1, 1])
    assert metrics.evaluate(y, y, num_classes=2)["ece"] is None
    acc = metrics.Accumulator(2)
    acc.update(torch.tensor([[1.0, 0.0]]), y[:1])
    acc.update(torch.tensor([1, 1]), y[1:])
    m = acc.compute()
    assert m["ece"] is None and m["auroc"] is None and m["acc"] == 1.0
    assert {k: v for k, v in m.items() if k not in metrics.SCORE_METRICS} == {
        k: v for k, v in metrics.evaluate(y, y, num_classes=2).items() if k not in metrics.SCORE_METRICS}


def test_the_new_metrics_select_models_and_lower_ones_are_better():
    assert set(NEW) <= set(metrics.SCALAR_METRICS)
    assert {"ece", "dp_gap", "eo_gap"} <= metrics.LOWER_IS_BETTER
    assert not {"macro_f1", "auroc"} & metrics.LOWER_IS_BETTER
    assert parse_select("best:ece") == "ece"
    select = Selection("best:ece")
    for epoch, ece in enumerate([0.3, 0.1, 0.2]):
        select.offer({"epoch": epoch, "train": {}, "val": {"ece": ece}, "test": {}})
    assert select.best_record["epoch"] == 1


# --- batched, members, ranks --------------------------------------------------------------------------


def _binary_batch(gen, n, members=None, coarse=False):
    shape = (n, 2) if members is None else (members, n, 2)
    logits = torch.randint(-2, 3, shape, generator=gen).float() if coarse else torch.randn(*shape, generator=gen)
    return logits, torch.randint(0, 2, (n,), generator=gen), torch.randint(0, 4, (n,), generator=gen)


@given(st.integers(1, 80), st.integers(1, 9), st.integers(0, 2**16), st.booleans())
def test_batched_reported_metrics_equal_one_shot_bit_for_bit(n, batch, seed, coarse):
    gen = torch.Generator().manual_seed(seed)
    logits, y, g = _binary_batch(gen, n, coarse=coarse)
    whole = metrics.evaluate(logits, y, g, num_groups=4)
    acc = metrics.Accumulator(2, 4)
    for idx in torch.randperm(n, generator=gen).split(batch):
        acc.update(logits[idx], y[idx], g[idx])
    assert acc.compute() == whole


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.integers(1, 40), st.integers(0, 2**16), st.booleans())
def test_member_axis_equals_one_accumulator_per_member(members, n, seed, coarse):
    gen = torch.Generator().manual_seed(seed)
    logits, y, g = _binary_batch(gen, n, members=members, coarse=coarse)
    both = metrics.Accumulator(2, 4, members=members)
    for idx in torch.arange(n).split(7):
        both.update(logits[:, idx], y[idx], g[idx])
    for s, m in enumerate(both.compute_members()):
        assert m == metrics.evaluate(logits[s], y, g, num_groups=4)


@pytest.mark.parametrize("members", [None, 3])
def test_merging_ranks_equals_one_process(members):
    gen = torch.Generator().manual_seed(1)
    logits, y, g = _binary_batch(gen, 30, members=members)
    take = (lambda t, idx: t[:, idx]) if members else (lambda t, idx: t[idx])
    shards = []
    for idx in (torch.arange(0, 15), torch.arange(15, 30)):
        shard = metrics.Accumulator(2, 4, members=members)
        shard.update(take(logits, idx), y[idx], g[idx])
        shards.append(shard)
    mine, other = shards
    counts = iter([other.counts, other.confidence])
    gathered = iter(other._scores())
    mine.merge_ranks(lambda t: t.add_(next(counts)), lambda local: torch.cat([local, next(gathered)]))
    whole = metrics.Accumulator(2, 4, members=members)
    whole.update(logits, y, g)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got, want = (mine.compute_members(), whole.compute_members()) if members else (mine.compute(), whole.compute())
    assert got == want
