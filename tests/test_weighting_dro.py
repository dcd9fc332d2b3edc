"""Group DRO, RGD, CVaR and DRW against closed forms written from docs/METHODS.md#weighting-group_dro, docs/METHODS.md#weighting-rgd and
docs/METHODS.md#weighting-drw."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from shiftkit import weighting
from shiftkit.errors import ShiftkitError
from shiftkit.train import fit

T = torch.tensor


def _batch(losses, groups):
    return T(losses, dtype=torch.float32), T(groups), T(groups)


def _softmax(values):
    top = max(values)
    e = [math.exp(v - top) for v in values]
    return [v / sum(e) for v in e]


# --- group_dro (docs/METHODS.md#weighting-group_dro) -------------------------------------------------------------------------

# Per-group batch means (absent group -> 0): [1.5, 3.0, 0.5], [0, 0.3, 0], [2.0, 0, 1.0].
THREE_BATCHES = [
    ([1.0, 2.0, 3.0, 0.5], [0, 0, 1, 2]),
    ([0.2, 0.4, 0.3], [1, 1, 1]),
    ([2.0, 1.0], [0, 2]),
]


def test_group_dro_q_after_three_updates_matches_the_hand_computation():  # docs/METHODS.md#weighting-group_dro (1/G start)
    dro = weighting.build("group_dro", eta=0.5, group_counts=[5, 3, 2])
    torch.testing.assert_close(dro.q, torch.full((3,), 1 / 3))
    for losses, groups in THREE_BATCHES:
        w = dro.weights(*_batch(losses, groups))
    # Multiplicative updates compose: q_3 ∝ (1/G) exp(eta * (sum over the three batches of L_g)).
    hand = _softmax([0.5 * 3.5, 0.5 * 3.3, 0.5 * 1.5])
    assert hand == pytest.approx([0.440002, 0.398130, 0.161868], abs=1e-6)
    torch.testing.assert_close(dro.q, T(hand))
    # Third batch: one example of group 0 and one of group 2, B = 2, w_i = B q_g / count_g.
    torch.testing.assert_close(w, T([2 * hand[0], 2 * hand[2]]))


def test_group_dro_objective_is_the_q_weighted_group_mean_with_the_updated_q():  # docs/METHODS.md#weighting-group_dro
    gen = torch.Generator().manual_seed(1)
    dro = weighting.build("group_dro", eta=0.3, group_counts=[30, 10, 3, 1])
    for _ in range(3):
        losses = torch.rand(24, generator=gen, dtype=torch.float64) * 3
        g = torch.randint(0, 3, (24,), generator=gen)  # group 3 absent
        before = dro.q.clone()
        w = dro.weights(losses, g // 2, g)
        group_means = torch.stack([losses[g == k].mean() if (g == k).any() else losses.new_zeros(()) for k in range(4)])
        assert not torch.equal(dro.q, before)
        torch.testing.assert_close((w * losses).mean(), (dro.q.double() * group_means).sum())


@given(
    st.lists(st.tuples(st.floats(0, 1e4), st.integers(0, 3)), min_size=1, max_size=20),
    st.floats(0, 10),
    st.integers(1, 4),
)
def test_group_dro_q_stays_a_distribution_for_any_losses(batch, eta, steps):  # docs/METHODS.md#weighting-group_dro normalization
    dro = weighting.build("group_dro", eta=eta, group_counts=[30, 10, 3, 1])
    losses, groups = T([b[0] for b in batch]), T([b[1] for b in batch])
    for _ in range(steps):
        w = dro.weights(losses, groups // 2, groups)
    assert torch.isfinite(dro.q).all() and (dro.q >= 0).all() and torch.isfinite(w).all()
    assert dro.q.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_group_dro_eval_mode_leaves_q_unchanged():  # docs/METHODS.md#weighting-group_dro: update only in training
    dro = weighting.build("group_dro", eta=1.0, group_counts=[3, 1])
    dro.weights(*_batch([1.0, 2.0], [0, 1]))
    q = dro.q.clone()
    dro.eval()
    w = dro.weights(*_batch([5.0, 0.0, 0.0], [0, 1, 1]))
    torch.testing.assert_close(dro.q, q)
    torch.testing.assert_close(w, T([3 * q[0], 1.5 * q[1], 1.5 * q[1]]))


def test_group_dro_generalization_adjustment_uses_training_counts():  # docs/METHODS.md#weighting-group_dro: L_g + C / sqrt(n_g)
    dro = weighting.build("group_dro", eta=1.0, adjustment=2.0, group_counts=[100, 25, 4, 0])
    dro.weights(*_batch([1.0, 1.0, 1.0], [0, 1, 2]))
    # C / sqrt(n) = [0.2, 0.4, 1.0]; a group with no training example gets no adjustment.
    torch.testing.assert_close(dro.q, T(_softmax([1.2, 1.4, 2.0, 0.0])))


def test_group_dro_normalized_loss():  # docs/METHODS.md#weighting-group_dro: adjusted_loss /= sum(adjusted_loss)
    plain = weighting.build("group_dro", eta=1.0, normalize_loss=True, group_counts=[1, 1, 1])
    plain.weights(*_batch([1.0, 2.0, 3.0], [0, 1, 2]))
    torch.testing.assert_close(plain.q, T(_softmax([1 / 6, 2 / 6, 3 / 6])))
    adjusted = weighting.build("group_dro", eta=1.0, adjustment=1.0, normalize_loss=True, group_counts=[4, 1])
    adjusted.weights(*_batch([1.0, 1.0], [0, 1]))  # A = [1.5, 2.0] -> [3/7, 4/7]
    torch.testing.assert_close(adjusted.q, T(_softmax([3 / 7, 4 / 7])))
    zero = weighting.build("group_dro", normalize_loss=True, group_counts=[1, 1])
    zero.weights(*_batch([0.0, 0.0], [0, 1]))
    torch.testing.assert_close(zero.q, T([0.5, 0.5]))


def test_group_dro_by_class_uses_labels_and_class_counts():
    dro = weighting.build("group_dro", eta=1.0, by="class", class_counts=[3, 1], group_counts=[1, 1, 1, 1])
    dro.weights(T([1.0, 3.0]), T([0, 1]), T([2, 2]))
    torch.testing.assert_close(dro.q, T(_softmax([1.0, 3.0])))


def test_group_dro_state_dict_restores_q():
    dro = weighting.build("group_dro", eta=0.5, group_counts=[5, 3, 2])
    for losses, groups in THREE_BATCHES:
        dro.weights(*_batch(losses, groups))
    state = dro.state_dict()
    assert list(state) == ["q"]
    fresh = weighting.build("group_dro", eta=0.5, group_counts=[5, 3, 2])
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.q, dro.q)
    assert fresh.q is not dro.q


def test_chain_default_is_iw_times_group_dro():  # docs/METHODS.md#weighting-chain: chain(build("iw"), build("group_dro"))
    both = weighting.build("chain", group_counts=[3, 1])
    assert [type(p).__name__ for p in both.parts] == ["ImportanceWeighting", "GroupDRO"]
    assert "parts.1.q" in both.state_dict()


# --- rgd (docs/METHODS.md#weighting-rgd) -------------------------------------------------------------------------------------


def test_rgd_closed_form():  # docs/METHODS.md#weighting-rgd: w = exp(min(l, tau) / (tau + 1)), tau = 1
    w = weighting.build("rgd").weights(T([0.0, 0.5, 1.0, 4.0]), T([0, 0, 1, 1]), None)
    torch.testing.assert_close(w, T([1.0, math.exp(0.25), math.exp(0.5), math.exp(0.5)]))
    w = weighting.build("rgd", clip=3.0, temperature=4.0).weights(T([2.0, 10.0]), T([0, 1]), None)
    torch.testing.assert_close(w, T([math.exp(0.5), math.exp(0.75)]))


@given(st.lists(st.floats(-5, 1e3), min_size=1, max_size=30), st.floats(0, 5), st.floats(0.1, 10))
def test_rgd_weights_lie_between_the_clipped_extremes(losses, clip, temperature):  # docs/METHODS.md#weighting-rgd
    w = weighting.build("rgd", clip=clip, temperature=temperature).weights(T(losses), T([0] * len(losses)), None)
    low, high = math.exp(min(min(losses), clip) / temperature), math.exp(clip / temperature)
    # float32 rounds the exponent x to a relative 6e-8, which exp turns into a relative error of about 6e-8·x
    rel = 1e-6 + 2e-7 * clip / temperature
    assert (w >= low * (1 - rel)).all() and (w <= high * (1 + rel)).all()
    if min(losses) >= 0:
        assert (w >= 1 - 1e-6).all()


@given(st.lists(st.floats(0, 50), min_size=1, max_size=30))
def test_rgd_mean_normalization_gives_mean_one_and_batch_softmax(losses):  # docs/METHODS.md#weighting-rgd "mean"/"softmax"
    w = weighting.build("rgd", normalize="mean").weights(T(losses), T([0] * len(losses)), None)
    assert w.mean().item() == pytest.approx(1.0, rel=1e-5)
    expected = _softmax([min(v, 1.0) / 2.0 for v in losses])
    torch.testing.assert_close(w, len(losses) * T(expected))


# --- cvar ----------------------------------------------------------------------------------------------


def test_cvar_top_k_get_b_over_k():
    losses = T([0.3, 2.0, 1.0, 0.1, 5.0, 0.2, 0.4, 0.5, 0.6, 0.7])
    w = weighting.build("cvar", alpha=0.25).weights(losses, torch.zeros(10, dtype=torch.long), None)
    # k = ceil(0.25 * 10) = 3: losses 5.0, 2.0, 1.0 weigh 10 / 3.
    expected = torch.zeros(10)
    expected[[4, 1, 2]] = 10 / 3
    torch.testing.assert_close(w, expected)


def test_cvar_k_is_not_inflated_by_floating_point():
    w = weighting.build("cvar", alpha=0.1).weights(torch.arange(30.0), torch.zeros(30, dtype=torch.long), None)
    assert (w > 0).sum().item() == 3 and w.max().item() == pytest.approx(10.0)  # 0.1 * 30 = 3, not 4


def test_cvar_alpha_one_is_erm():
    losses = torch.rand(17)
    w = weighting.build("cvar", alpha=1.0).weights(losses, torch.zeros(17, dtype=torch.long), None)
    torch.testing.assert_close(w, torch.ones(17))


def test_cvar_ties_share_the_last_places():
    w = weighting.build("cvar", alpha=0.5).weights(T([1.0, 1.0, 1.0, 0.0]), T([0, 0, 0, 0]), None)
    torch.testing.assert_close(w, T([4 / 3, 4 / 3, 4 / 3, 0.0]))


@given(st.lists(st.integers(0, 6), min_size=1, max_size=40), st.floats(0.01, 1.0))
def test_cvar_objective_is_the_mean_of_the_top_k_losses(values, alpha):  # integers: many ties
    losses = T(values, dtype=torch.float64) / 2
    w = weighting.build("cvar", alpha=alpha).weights(losses, torch.zeros(len(values), dtype=torch.long), None)
    k = math.ceil(round(alpha * len(values), 6))
    top = sorted(losses.tolist(), reverse=True)[:k]
    assert (w * losses).mean().item() == pytest.approx(sum(top) / k, rel=1e-9, abs=1e-12)
    assert w.mean().item() == pytest.approx(1.0, rel=1e-9) and (w >= 0).all()


# --- drw (docs/METHODS.md#weighting-drw) -----------------------------------------------------------------------------------

CB_4000_400 = [0.2125880, 1.7874120]  # (1 - b) / (1 - b^n), b = 0.9999, normalized to sum 2


def test_drw_is_one_before_and_class_balanced_from_the_start_epoch():
    beta = 0.9999
    raw = [(1 - beta) / (1 - beta**n) for n in (4000, 400)]
    hand = [2 * r / sum(raw) for r in raw]
    assert hand == pytest.approx(CB_4000_400, abs=1e-6)
    drw = weighting.build("drw", class_counts=[4000, 400])
    y = T([0, 1, 1])
    for epoch in (0, 159):
        drw.start_epoch(epoch)
        torch.testing.assert_close(drw.weights(torch.ones(3), y, None), torch.ones(3))
    for epoch in (160, 199):
        drw.start_epoch(epoch)
        torch.testing.assert_close(drw.weights(torch.ones(3), y, None), T([hand[0], hand[1], hand[1]]))


@given(st.lists(st.integers(1, 10**5), min_size=1, max_size=10), st.floats(0, 0.99999))
def test_drw_weights_sum_to_the_number_of_classes(counts, beta):  # docs/METHODS.md#weighting-cb normalization
    drw = weighting.build("drw", beta=beta, start_epoch=0, class_counts=counts)
    per_class = drw.weights(torch.ones(len(counts)), torch.arange(len(counts)), None)
    assert per_class.sum().item() == pytest.approx(len(counts), rel=1e-5)


def test_drw_weights_fall_with_the_count_and_beta_zero_is_uniform():
    drw = weighting.build("drw", start_epoch=0, class_counts=[5000, 50, 500])
    w = drw.weights(torch.ones(3), T([0, 1, 2]), None)
    assert w[1] > w[2] > w[0]
    flat = weighting.build("drw", beta=0.0, start_epoch=0, class_counts=[5000, 50, 500])
    torch.testing.assert_close(flat.weights(torch.ones(3), T([0, 1, 2]), None), torch.ones(3))


def test_drw_by_group_and_the_epoch_travels_in_the_state():
    drw = weighting.build("drw", by="group", start_epoch=3, group_counts=[4000, 400])
    drw.start_epoch(3)
    fresh = weighting.build("drw", by="group", start_epoch=3, group_counts=[4000, 400])
    fresh.load_state_dict(drw.state_dict())
    w = fresh.weights(torch.ones(2), T([1, 1]), T([0, 1]))
    torch.testing.assert_close(w, T(CB_4000_400))


def test_the_training_loop_drives_the_drw_schedule():
    from shiftkit import data, losses, models, optim

    splits = data.build("two_gaussians")
    drw = weighting.build("drw", start_epoch=2, **splits.statistics())
    torch.manual_seed(0)
    net = models.build("linear", input_shape=(2,), num_classes=2)
    fit(net, splits, losses.build("ce"), drw, optim.build("sgd", lr=0.1), epochs=3, batch_size=0)
    assert drw.epoch.item() == 2  # the hook ran before each epoch, 0-based


# --- validation ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("group_dro", dict(eta=-0.1), "'group_dro': eta"),
        ("group_dro", dict(adjustment=-1.0), "'group_dro': adjustment"),
        ("group_dro", dict(by="cell"), "'group_dro': by must be"),
        ("rgd", dict(temperature=0.0), "'rgd': temperature"),
        ("rgd", dict(normalize="softmax"), "'rgd': normalize"),
        ("cvar", dict(alpha=0.0), "'cvar': alpha"),
        ("cvar", dict(alpha=1.5), "'cvar': alpha"),
        ("drw", dict(beta=1.0), "'drw': beta"),
        ("drw", dict(by="cell"), "'drw': by must be"),
        ("drw", dict(start_epoch=-1), "'drw': start_epoch"),
    ],
)
def test_bad_hyperparameters_give_one_line(name, options, message):
    with pytest.raises(ShiftkitError, match=message) as err:
        weighting.build(name, class_counts=[3, 1], group_counts=[2, 1, 1], **options)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name, by", [(n, b) for n in ("group_dro", "drw") for b in ("group", "class")])
def test_missing_counts_are_named(name, by):
    with pytest.raises(ShiftkitError, match=f"'{name}' needs the training {by} counts"):
        weighting.build(name, by=by)
