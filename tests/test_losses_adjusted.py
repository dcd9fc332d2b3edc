"""Logit-adjusted losses and AutoBalance's parametric loss against closed forms (docs/METHODS.md#losses-logit-adjusted, docs/METHODS.md#autobalance-parameters, docs/METHODS.md#quirk-vs-group).

Every expected value is written from the formulas of docs/METHODS.md in float64, never taken from the implementation.
"""

import contextlib
import math

import pytest
import torch
import torch.nn.functional as F

from shiftkit import losses
from shiftkit.errors import ShiftkitError

COUNTS = [40, 4, 1]
SIGMOID_ONE = 1.0 / (1.0 + math.exp(-1.0))  # 0.7311, AutoBalance's default logit scale (docs/METHODS.md#loss-autobalance)


def _batch(k=3, b=12, seed=0, groups=4):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, k, generator=gen, dtype=torch.float64) * 3
    return logits, torch.randint(0, k, (b,), generator=gen), torch.randint(0, groups, (b,), generator=gen)


def _ce(z, y):
    """docs/METHODS.md#loss-ce: -z_y + log sum_k exp z_k, per example."""
    return torch.logsumexp(z, 1) - z.gather(1, y[:, None]).squeeze(1)


def _n(counts):
    return torch.tensor(counts, dtype=torch.float64)


@contextlib.contextmanager
def _float64_parameters():
    """AutoBalance's learnable tensors take the default dtype; float64 keeps the comparisons tight."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


# ---------------------------------------------------------------- LDAM (docs/METHODS.md#loss-ldam, docs/METHODS.md#quirk-ldam-scale)


def test_ldam_margins_of_the_wang_figure5_run():  # docs/METHODS.md#loss-ldam: cat 0.5623, dog 1.0
    loss = losses.build("ldam", class_counts=[4000, 400], max_margin=1.0)
    assert loss.margins.tolist() == pytest.approx([0.5623, 1.0], abs=1e-4)


@pytest.mark.parametrize("s, max_margin", [(1.0, 0.5), (30.0, 0.5), (1.0, 1.0)])
def test_ldam_closed_form(s, max_margin):
    logits, y, g = _batch()
    m = _n(COUNTS) ** -0.25
    m = m * max_margin / m.max()  # C chosen so that max_j m_j = max_margin
    shifted = logits - F.one_hot(y, 3).double() * m[y][:, None]  # margin on the true-class logit only
    out = losses.build("ldam", class_counts=COUNTS, s=s, max_margin=max_margin)(logits, y, g)
    torch.testing.assert_close(out, _ce(s * shifted, y))


def test_ldam_defaults_are_the_wang_code():  # docs/METHODS.md#loss-ldam: max_margin 0.5, s = 1
    loss = losses.build("ldam", class_counts=COUNTS)
    assert loss.s == 1.0 and loss.margins.max().item() == pytest.approx(0.5)


# ---------------------------------------------------------------- LA, CDT, VS (docs/METHODS.md#losses-logit-adjusted)


@pytest.mark.parametrize("tau", [0.5, 1.0, 3.0])
def test_la_closed_form(tau):  # docs/METHODS.md#loss-la: CE(f + tau log pi)
    logits, y, _ = _batch()
    pi = _n(COUNTS) / sum(COUNTS)
    torch.testing.assert_close(losses.build("la", class_counts=COUNTS, tau=tau)(logits, y), _ce(logits + tau * pi.log(), y))


@pytest.mark.parametrize("gamma", [0.3, 0.5, 1.0])
def test_cdt_divides_logit_j_by_its_temperature(gamma):  # docs/METHODS.md#loss-cdt: f_j / (n_max/n_j)^gamma
    logits, y, _ = _batch()
    temperature = (max(COUNTS) / _n(COUNTS)) ** gamma
    out = losses.build("cdt", class_counts=COUNTS, gamma=gamma)(logits, y)
    torch.testing.assert_close(out, _ce(logits / temperature, y))


@pytest.mark.parametrize("tau, gamma", [(1.5, 0.2), (3.0, 0.3), (1.0, 0.0), (0.0, 0.5)])
def test_vs_closed_form(tau, gamma):  # docs/METHODS.md#loss-vs: CE(Δ ⊙ f + ι), Δ = (n/n_max)^gamma, ι = tau log pi
    logits, y, _ = _batch()
    n = _n(COUNTS)
    expected = _ce(logits * (n / n.max()) ** gamma + tau * (n / n.sum()).log(), y)
    torch.testing.assert_close(losses.build("vs", class_counts=COUNTS, tau=tau, gamma=gamma)(logits, y), expected)


def test_vs_reference_values_of_the_wang_figure5_run():  # docs/METHODS.md#loss-vs
    loss = losses.build("vs", class_counts=[4000, 400], tau=3.0, gamma=0.3)
    assert loss.delta.tolist() == pytest.approx([1.0, 0.5012], abs=1e-4)
    assert loss.iota.tolist() == pytest.approx([-0.286, -7.194], abs=1e-3)


def test_defaults():  # docs/METHODS.md#losses-logit-adjusted: la tau 1; vs tau 1.5, gamma 0.2 ([W] config); cdt gamma 0.5 ([W] run)
    n = _n(COUNTS)
    la, cdt, vs = (losses.build(name, class_counts=COUNTS) for name in ("la", "cdt", "vs"))
    torch.testing.assert_close(la.iota, (n / n.sum()).log())
    torch.testing.assert_close(cdt.delta, (n / n.max()) ** 0.5)
    torch.testing.assert_close(vs.delta, (n / n.max()) ** 0.2)
    torch.testing.assert_close(vs.iota, 1.5 * (n / n.sum()).log())


@pytest.mark.parametrize("name, options", [("la", dict(tau=0.0)), ("cdt", dict(gamma=0.0)), ("vs", dict(tau=0.0, gamma=0.0))])
def test_neutral_settings_are_exactly_ce(name, options):  # docs/METHODS.md#losses-logit-adjusted
    logits, y, _ = _batch()
    exact_ce = F.cross_entropy(logits, y, reduction="none")  # bitwise: Δ = 1 and ι = 0 change nothing
    assert torch.equal(losses.build(name, class_counts=COUNTS, **options)(logits, y), exact_ce)


@pytest.mark.parametrize("value", [0.3, 1.0, 3.0])
def test_vs_halves_are_la_and_cdt(value):  # docs/METHODS.md#loss-vs: gamma = 0 is LA, tau = 0 is CDT
    logits, y, _ = _batch()
    vs_la = losses.build("vs", class_counts=COUNTS, tau=value, gamma=0.0)
    vs_cdt = losses.build("vs", class_counts=COUNTS, tau=0.0, gamma=value)
    assert torch.equal(vs_la(logits, y), losses.build("la", class_counts=COUNTS, tau=value)(logits, y))
    assert torch.equal(vs_cdt(logits, y), losses.build("cdt", class_counts=COUNTS, gamma=value)(logits, y))


def test_float32_logits_give_float32_losses():
    logits, y, _ = _batch()
    for name in ("ldam", "la", "cdt", "vs", "vs_group", "autobalance"):
        assert losses.build(name, class_counts=COUNTS)(logits.float(), y).dtype == torch.float32


# ---------------------------------------------------------------- group VS (docs/METHODS.md#loss-vs_group, docs/METHODS.md#quirk-vs-group)

GROUPS = [30, 10, 4, 1]


def _group_terms(counts, gamma):
    ratio = _n(counts) / max(counts)
    return ratio**gamma, -(ratio ** (-gamma))


def test_vs_group_faithful_adds_iota_to_every_logit():  # docs/METHODS.md#loss-vs_group: new = Δ_g f + ι_g, same ι_g everywhere
    logits, y, g = _batch()
    delta, iota = _group_terms(GROUPS, 0.3)
    out = losses.build("vs_group", group_counts=GROUPS)(logits, y, g)
    torch.testing.assert_close(out, _ce(delta[g][:, None] * logits + iota[g][:, None], y))


def test_vs_group_faithful_is_a_per_group_temperature():  # docs/METHODS.md#quirk-vs-group: ι_g cancels in the softmax
    logits, y, g = _batch()
    delta, _ = _group_terms(GROUPS, 0.4)
    out = losses.build("vs_group", group_counts=GROUPS, gamma=0.4)(logits, y, g)
    torch.testing.assert_close(out, _ce(delta[g][:, None] * logits, y))


def test_vs_group_true_class_variant():  # docs/METHODS.md#quirk-vs-group: ι_g on the true-class logit only
    logits, y, g = _batch()
    delta, iota = _group_terms(GROUPS, 0.3)
    expected = _ce(delta[g][:, None] * logits + iota[g][:, None] * F.one_hot(y, 3).double(), y)
    out = losses.build("vs_group", group_counts=GROUPS, additive="true_class")(logits, y, g)
    torch.testing.assert_close(out, expected)
    rare = torch.tensor([3])  # the rarest group's ι_g < 0 acts as a margin: a larger loss than faithful
    faithful = losses.build("vs_group", group_counts=GROUPS)(logits[:1], y[:1], rare)
    assert (losses.build("vs_group", group_counts=GROUPS, additive="true_class")(logits[:1], y[:1], rare) > faithful).all()


def test_vs_group_readme_gamma():  # docs/METHODS.md#loss-vs_group: gamma 0.4 on CelebA counts gives Δ = [1.0, 0.961, 0.637, 0.221]
    loss = losses.build("vs_group", group_counts=[1446, 1308, 468, 33], gamma=0.4)
    # 0.2205 exactly; docs/METHODS.md's 0.221 is within its rounding.
    assert loss.group_delta.tolist() == pytest.approx([1.0, 0.961, 0.637, 0.221], abs=1e-3)


def test_vs_group_without_groups_uses_the_classes():  # docs/METHODS.md#loss-vs_group applied with g = y
    logits, y, _ = _batch()
    delta, iota = _group_terms(COUNTS, 0.3)
    out = losses.build("vs_group", class_counts=COUNTS, group_counts=GROUPS)(logits, y)
    torch.testing.assert_close(out, _ce(delta[y][:, None] * logits + iota[y][:, None], y))


def test_vs_group_built_without_group_counts_refuses_groups():
    logits, y, g = _batch()
    with pytest.raises(ShiftkitError, match="vs_group.*group_counts"):
        losses.build("vs_group", class_counts=COUNTS)(logits, y, g)


# ---------------------------------------------------------------- AutoBalance (docs/METHODS.md#loss-autobalance, docs/METHODS.md#autobalance-parameters)


def _autobalance(**options):
    with _float64_parameters():
        return losses.build("autobalance", class_counts=options.pop("class_counts", COUNTS), **options)


def test_autobalance_default_is_ce_on_sigmoid_one_scaled_logits():  # docs/METHODS.md#loss-autobalance: dy Ones, ly Zeros, wy Ones
    logits, y, g = _batch()
    torch.testing.assert_close(_autobalance()(logits, y, g), _ce(SIGMOID_ONE * logits, y))


def test_autobalance_la_init():  # docs/METHODS.md#loss-autobalance: ly_init LA, l = tau log pi, on σ(1)-scaled logits
    logits, y, _ = _batch()
    pi = _n(COUNTS) / sum(COUNTS)
    out = _autobalance(init="la", tau=2.0)(logits, y)
    torch.testing.assert_close(out, _ce(SIGMOID_ONE * logits + 2.0 * pi.log(), y))
    # ... which is the `la` loss evaluated on the σ(1)-scaled logits.
    torch.testing.assert_close(out, losses.build("la", class_counts=COUNTS, tau=2.0)(SIGMOID_ONE * logits, y))


def test_autobalance_cdt_init_skips_the_sigmoid():  # docs/METHODS.md#loss-autobalance: dy_init CDT without the sigmoid
    logits, y, _ = _batch()
    n = _n(COUNTS)
    out = _autobalance(init="cdt", gamma=0.5)(logits, y)
    torch.testing.assert_close(out, _ce(logits * (n / n.max()) ** 0.5, y))
    torch.testing.assert_close(out, losses.build("cdt", class_counts=COUNTS, gamma=0.5)(logits, y))


def test_autobalance_clusters_frequency_sorted_classes():  # docs/METHODS.md#autobalance-parameters: D_π, K' = ceil(K/C)
    counts = [5, 100, 1, 50, 20]  # decreasing order: classes 1, 3 | 4, 0 | 2
    loss = _autobalance(class_counts=counts, cluster_size=2)
    assert loss.cluster_of.tolist() == [1, 0, 2, 0, 1]
    assert loss.delta.shape == loss.l.shape == (1, 3)
    with torch.no_grad():
        loss.delta.copy_(torch.tensor([[0.5, -1.0, 2.0]]))
        loss.l.copy_(torch.tensor([[0.1, 0.2, 0.3]]))
    per_class_delta = torch.tensor([-1.0, 0.5, 2.0, 0.5, -1.0], dtype=torch.float64)
    per_class_l = torch.tensor([0.2, 0.1, 0.3, 0.1, 0.2], dtype=torch.float64)
    logits, y, _ = _batch(k=5)
    torch.testing.assert_close(loss(logits, y), _ce(logits * torch.sigmoid(per_class_delta) + per_class_l, y))


def test_autobalance_cluster_ties_keep_index_order_and_la_init_averages():  # docs/METHODS.md#autobalance-parameters
    counts = [10, 10, 10, 1]
    loss = _autobalance(class_counts=counts, cluster_size=2, init="la")
    assert loss.cluster_of.tolist() == [0, 0, 1, 1]
    log_pi = (_n(counts) / sum(counts)).log()
    # [INFERRED] a cluster starts at the mean of its classes' LA offsets (no released clustered init).
    torch.testing.assert_close(loss.l.detach()[0], torch.stack([log_pi[:2].mean(), log_pi[2:].mean()]))


def test_autobalance_class_group_uses_each_examples_group_row():  # docs/METHODS.md#loss-autobalance, [AB] eq. 4.2
    loss = _autobalance(by="class_group", group_counts=GROUPS, learn_w=True)
    assert loss.delta.shape == loss.l.shape == (4, 3) and loss.w.shape == (4, 3)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in (loss.delta, loss.l, loss.w):
            p.copy_(torch.rand(p.shape, generator=gen, dtype=torch.float64) + 0.5)
    logits, y, g = _batch()
    d, l, w = (p.detach() for p in (loss.delta, loss.l, loss.w))
    expected = w[g, y] * _ce(logits * torch.sigmoid(d[g]) + l[g], y)  # w multiplies; no division by Σw
    torch.testing.assert_close(loss(logits, y, g), expected)
    with pytest.raises(ShiftkitError, match="autobalance.*groups"):
        loss(logits, y)
    assert _autobalance(by="class_group", num_groups=2).l.shape == (2, 3)


def test_autobalance_learnable_tensors_get_gradients():  # docs/METHODS.md#autobalance-parameters: l and Δ are tuned, w fixed by default
    loss = _autobalance()
    assert set(loss.hyperparameters()) == {"l", "delta"} and "w" in dict(loss.named_buffers())
    logits, y, g = _batch()
    loss(logits.requires_grad_(), y, g).sum().backward()
    for p in loss.hyperparameters().values():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    learned_w = _autobalance(learn_w=True)
    assert set(learned_w.hyperparameters()) == {"l", "delta", "w"}


# ---------------------------------------------------------------- bad input (one-line messages)


@pytest.mark.parametrize(
    "name, options, words",
    [
        ("ldam", dict(class_counts=COUNTS, max_margin=-0.1), "max_margin"),
        ("ldam", dict(class_counts=COUNTS, s=0.0), "s must"),
        ("vs_group", dict(group_counts=GROUPS, additive="nope"), "additive"),
        ("autobalance", dict(class_counts=COUNTS, init="nope"), "init"),
        ("autobalance", dict(class_counts=COUNTS, by="group"), "by"),
        ("autobalance", dict(class_counts=COUNTS, cluster_size=0), "cluster_size"),
        ("autobalance", dict(class_counts=COUNTS, by="class_group"), "group_counts"),
        ("ldam", dict(), "class_counts"),
        ("la", dict(), "class_counts"),
        ("cdt", dict(), "class_counts"),
        ("vs", dict(), "class_counts"),
        ("vs_group", dict(), "group_counts"),
        ("autobalance", dict(), "class_counts"),
        ("vs", dict(class_counts=[10, 0]), "class_counts"),
        ("vs_group", dict(group_counts=[10, 0]), "group_counts"),
    ],
)
def test_bad_options_name_the_loss_and_the_option(name, options, words):
    with pytest.raises(ShiftkitError) as err:
        losses.build(name, **options)
    message = str(err.value)
    assert f"'{name}'" in message and words in message and "\n" not in message


@pytest.mark.parametrize("name", ["ldam", "la", "cdt", "vs", "autobalance"])
def test_wrong_number_of_classes_is_a_clear_error(name):
    logits, y, _ = _batch(k=2)
    with pytest.raises(ShiftkitError, match=f"'{name}' was built for 3 classes"):
        losses.build(name, class_counts=COUNTS)(logits, y)


@pytest.mark.parametrize("name", ["ldam", "la", "cdt", "vs", "vs_group"])
def test_data_constants_are_buffers(name):  # so that .to(device) moves them
    loss = losses.build(name, class_counts=COUNTS, group_counts=GROUPS)
    assert len(list(loss.buffers())) > 0 and len(list(loss.parameters())) == 0
