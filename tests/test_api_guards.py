"""The Python API's guards: bad ids and shapes are one-line errors naming the argument, for every registered
loss and weighting and for the metrics; a call without groups never weighs classes as groups; a NaN loss
does not poison Group DRO's q; CVaR's weights keep their mass."""

import math
import re

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from shiftkit import guards, losses, metrics, weighting
from shiftkit.errors import ShiftkitError

#: Three classes, four groups (losses) and two classes, four groups g = 2y + a (weightings), as in
#: tests/test_losses.py and tests/test_weighting.py.
LOSS_COUNTS = dict(class_counts=[40, 4, 1], group_counts=[30, 10, 4, 1])
COUNTS = dict(class_counts=[40, 4], group_counts=[30, 10, 3, 1])
#: The same data without an attribute: its groups are its classes (g = y), so the counts are equal.
PLAIN = dict(class_counts=[40, 4], group_counts=[40, 4])


def _loss_batch(b=8):
    gen = torch.Generator().manual_seed(0)
    return torch.randn(b, 3, generator=gen), torch.arange(b) % 3, torch.arange(b) % 4


def _weight_batch(b=8):
    y = torch.arange(b) % 2
    return torch.rand(b, generator=torch.Generator().manual_seed(0)) * 3, y, 2 * y + (torch.arange(b) // 2) % 2


def _weights(name, counts, *args):
    return weighting.build(name, **counts).weights(*args)  # a fresh scheme per call: Group DRO's q moves


def _raises_naming(argument):
    return pytest.raises(ShiftkitError, match=rf"\b{argument}\b")


# --- losses: every registered name ---------------------------------------------------------------------


@pytest.mark.parametrize("name", losses.names())
@pytest.mark.parametrize("label", [3, -1])
def test_loss_labels_out_of_range_are_an_error_naming_y_and_the_range(name, label):
    logits, y, g = _loss_batch()
    y[2] = label
    with pytest.raises(ShiftkitError, match=r"\by\b.*\[0, 3\)"):
        losses.build(name, **LOSS_COUNTS)(logits, y, g)


@pytest.mark.parametrize("name", losses.names())
def test_loss_labels_must_be_integer_ids_one_per_row_of_logits(name):
    logits, y, g = _loss_batch()
    loss = losses.build(name, **LOSS_COUNTS)
    with pytest.raises(ShiftkitError, match=r"\by\b.*\blogits\b"):
        loss(logits, y[:-1], g[:-1])
    with _raises_naming("y"):
        loss(logits, y.float(), g)
    with _raises_naming("logits"):
        loss(logits[0], y[:1], g[:1])


@pytest.mark.parametrize("name", losses.names())
def test_loss_groups_must_have_one_entry_per_example(name):
    logits, y, g = _loss_batch()
    with _raises_naming("g"):
        losses.build(name, **LOSS_COUNTS)(logits, y, g[:-1])


@pytest.mark.parametrize("name", losses.names())
@pytest.mark.parametrize("group", [4, -1])
def test_loss_groups_out_of_range_are_checked_or_ignored(name, group):
    """A loss that uses the groups refuses an id outside [0, G); one that does not gives the same values."""
    logits, y, g = _loss_batch()
    loss = losses.build(name, **LOSS_COUNTS)
    bad = g.clone()
    bad[1] = group
    try:
        out = loss(logits, y, bad)
    except ShiftkitError as error:
        assert "g must lie in [0, 4)" in str(error)
    else:
        torch.testing.assert_close(out, loss(logits, y, g))


def test_group_losses_check_their_group_range():  # the two losses that use g, so the test above sees them
    logits, y, g = _loss_batch()
    g[0] = 4
    for loss in (losses.build("vs_group", **LOSS_COUNTS),
                 losses.build("autobalance", by="class_group", **LOSS_COUNTS)):
        with pytest.raises(ShiftkitError, match=r"g must lie in \[0, 4\)"):
            loss(logits, y, g)


# --- weightings: every registered name -----------------------------------------------------------------


@pytest.mark.parametrize("name", weighting.names())
def test_weighting_losses_y_and_g_must_have_one_entry_per_example(name):
    values, y, g = _weight_batch()
    with pytest.raises(ShiftkitError, match=r"\by\b.*\blosses\b"):
        _weights(name, COUNTS, values, y[:-1], g[:-1])
    with _raises_naming("g"):
        _weights(name, COUNTS, values, y, g[:-1])
    with _raises_naming("losses"):
        _weights(name, COUNTS, values[:, None], y, g)


@pytest.mark.parametrize("name", weighting.names())
@pytest.mark.parametrize("argument, bad, bound", [("y", 2, 2), ("y", -1, 2), ("g", 4, 4), ("g", -1, 4)])
def test_weighting_ids_out_of_range_are_checked_or_ignored(name, argument, bad, bound):
    """A scheme that uses y (or g) refuses an id outside [0, K) (or [0, G)); one that does not ignores it."""
    values, y, g = _weight_batch()
    ids = {"y": y.clone(), "g": g.clone()}
    ids[argument][3] = bad
    try:
        w = _weights(name, COUNTS, values, ids["y"], ids["g"])
    except ShiftkitError as error:
        assert f"{argument} must lie in [0, {bound})" in str(error)
    else:
        torch.testing.assert_close(w, _weights(name, COUNTS, values, y, g))


@pytest.mark.parametrize("name", weighting.names())
def test_weighting_without_groups_never_weighs_classes_as_groups(name):
    """g=None is an error naming g, unless the scheme ignores the groups (the same weights as with g)."""
    values, y, g = _weight_batch()
    try:
        w = _weights(name, COUNTS, values, y, None)
    except ShiftkitError as error:
        assert re.search(r"\bg\b", str(error)), error
    else:
        torch.testing.assert_close(w, _weights(name, COUNTS, values, y, g))


@pytest.mark.parametrize("name", weighting.names())
def test_weighting_without_groups_uses_the_classes_where_they_are_the_groups(name):
    values, y, _ = _weight_batch()
    try:
        scheme = weighting.build(name, **PLAIN)
    except ShiftkitError as error:  # deo_mix: its objective needs groups g = 2y + a, and says so when built
        assert "g = 2*y + a" in str(error) or "attribute" in str(error), error
        return
    torch.testing.assert_close(scheme.weights(values, y, None), _weights(name, PLAIN, values, y, y))


def test_iw_and_group_dro_refuse_g_none_when_groups_are_not_the_classes():
    values, y, _ = _weight_batch()
    for name in ("iw", "group_dro", "chain"):
        for counts in (COUNTS, {"group_counts": COUNTS["group_counts"]}):
            with pytest.raises(ShiftkitError, match=r"g=None"):
                _weights(name, counts, values, y, None)


# --- metrics.evaluate ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, argument",
    [
        (lambda b: b.update(y=b["y"][:-1]), r"\by\b.*\blogits\b"),
        (lambda b: b.update(g=b["g"][:-1]), r"\bg\b"),
        (lambda b: b["y"].__setitem__(0, 3), r"y must lie in \[0, 3\)"),
        (lambda b: b["y"].__setitem__(0, -1), r"y must lie in \[0, 3\)"),
        (lambda b: b["g"].__setitem__(0, -1), r"g must lie in \[0, 4\)"),
        (lambda b: b["g"].__setitem__(0, 4), r"g must lie in \[0, 4\)"),
        (lambda b: b.update(counts=[1, 2, 3]), r"train_group_counts"),
    ],
)
def test_evaluate_refuses_bad_ids_and_lengths_naming_the_argument(change, argument):
    logits, y, g = _loss_batch()
    batch = {"y": y, "g": g, "counts": [5, 5, 5, 5]}
    change(batch)
    with pytest.raises(ShiftkitError, match=argument):
        metrics.evaluate(logits, batch["y"], batch["g"], train_group_counts=batch["counts"], num_groups=4)


def test_evaluate_refuses_negative_labels_of_predictions():
    with pytest.raises(ShiftkitError, match=r"y must lie in \[0, 2\)"):
        metrics.evaluate(torch.tensor([0, 1]), torch.tensor([-1, 1]))


# --- guards.trusted(): shiftkit's own loop skips the range checks (no host synchronization) -----------


def test_trusted_skips_the_range_checks_only_and_restores_them_on_exit():
    logits, y, g = _loss_batch()
    ce = losses.build("ce")
    ignored = y.clone()
    ignored[0] = -100  # F.cross_entropy's ignore_index: no PyTorch error, so only the guard can refuse it
    with pytest.raises(ShiftkitError, match=r"y must lie in \[0, 3\)"):
        ce(logits, ignored)
    with guards.trusted():
        with guards.trusted():
            assert ce(logits, ignored)[0].item() == 0.0
        assert ce(logits, ignored)[0].item() == 0.0  # the inner block restores the outer one's setting
        with _raises_naming("y"):  # shapes are still checked: they cost nothing
            ce(logits, y[:-1])
    with pytest.raises(ShiftkitError, match=r"y must lie"):
        ce(logits, ignored)
    with pytest.raises(ShiftkitError, match=r"y must be \[B\]"), guards.trusted():
        ce(logits, y[:-1])
    with pytest.raises(ShiftkitError, match=r"y must lie"):  # also after an exception inside the block
        ce(logits, ignored)
    assert guards.trusted()(ce)(logits, ignored)[0].item() == 0.0  # as a decorator, e.g. of a loop function
    with pytest.raises(ShiftkitError, match=r"y must lie"):
        ce(logits, ignored)


#: The ways Python code reads a tensor's value on the host.
READS = ("tolist", "item", "__bool__", "__int__", "__float__", "__index__", "numpy")


def test_trusted_reads_no_values(monkeypatch):
    """Inside trusted(), no loss or weighting moves a value to the host (on a GPU: a synchronization)."""
    logits, y, g = _loss_batch()
    values, yw, gw = _weight_batch()

    def refuse(self):
        raise AssertionError("host read inside guards.trusted()")

    for name in losses.names():
        loss = losses.build(name, **LOSS_COUNTS)
        with monkeypatch.context() as m, guards.trusted():
            for read in READS:
                m.setattr(torch.Tensor, read, refuse)
            loss(logits, y, g)
    for name in weighting.names():
        scheme = weighting.build(name, **COUNTS)
        with monkeypatch.context() as m, guards.trusted():
            for read in READS:
                m.setattr(torch.Tensor, read, refuse)
            scheme.weights(values, yw, gw)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU to observe synchronizations")
def test_trusted_loss_and_weighting_do_not_synchronize_on_a_gpu():
    logits, y, g = (t.cuda() for t in _loss_batch(64))
    loss, scheme = losses.build("vs_group", **LOSS_COUNTS).cuda(), weighting.build("group_dro", **COUNTS).cuda()
    yw, gw = y % 2, 2 * (y % 2) + g % 2
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with guards.trusted():
            per_example = loss(logits, y, g)
            scheme.weights(per_example.detach(), yw, gw)
    finally:
        torch.cuda.set_sync_debug_mode("default")


# --- Group DRO: a non-finite loss takes no part in the update ------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("options", [dict(eta=0.5), dict(eta=2.0, adjustment=1.0), dict(eta=1.0, normalize_loss=True)])
def test_group_dro_update_skips_non_finite_losses(bad, options):
    """q after a batch with non-finite losses is q after the same batch without those examples (a group
    left with none counts as absent), so q stays finite and every later batch moves it as in that run."""
    counts = dict(group_counts=[30, 10, 3, 1])
    values = torch.tensor([1.0, bad, 2.0, bad, 0.5, 3.0])
    g = torch.tensor([0, 0, 1, 2, 3, 3])  # group 2 has only the non-finite loss
    kept = torch.isfinite(values)
    dirty, clean = (weighting.build("group_dro", **options, **counts) for _ in range(2))
    w = dirty.weights(values, g // 2, g)
    clean.weights(values[kept], g[kept] // 2, g[kept])
    assert torch.isfinite(dirty.q).all() and torch.isfinite(w).all()
    torch.testing.assert_close(dirty.q, clean.q)
    after = torch.tensor([0.3, 1.0, 2.0, 0.1]), torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 2, 3])
    torch.testing.assert_close(dirty.weights(*after), clean.weights(*after))
    torch.testing.assert_close(dirty.q, clean.q)


# --- CVaR keeps its mass ------------------------------------------------------------------------------

VALUES = st.one_of(st.sampled_from([0.0, 1.0, 2.0, math.nan, math.inf, -math.inf]),
                   st.floats(allow_nan=True, allow_infinity=True, width=32))


def _rank_key(value):
    return math.inf if math.isnan(value) else value  # NaN ranks as the worst loss, as in torch.topk


@given(st.lists(VALUES, min_size=1, max_size=40), st.floats(1e-4, 1.0))
def test_cvar_weights_keep_their_mass_for_ties_nan_and_any_alpha(values, alpha):
    """Mean weight 1, no weight above B/k, and a worse loss never weighs less (k = ceil(alpha·B))."""
    losses_ = torch.tensor(values, dtype=torch.float64)
    w = weighting.build("cvar", alpha=alpha).weights(losses_, torch.zeros(len(values), dtype=torch.long), None)
    b = len(values)
    k = min(b, max(1, math.ceil(round(alpha * b, 6))))
    assert torch.isfinite(w).all() and (w >= 0).all()
    assert w.sum().item() == pytest.approx(b, rel=1e-9)
    assert w.max().item() <= b / k * (1 + 1e-9)
    order = sorted(range(b), key=lambda i: _rank_key(values[i]), reverse=True)
    ranked = w[order].tolist()
    assert all(x >= y - 1e-9 for x, y in zip(ranked, ranked[1:]))
