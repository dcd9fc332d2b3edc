"""AutoBalance's search (docs/METHODS.md#protocol-autobalance) and its validation objectives (docs/METHODS.md#autobalance-objectives, docs/METHODS.md#metrics)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vjp

from shiftkit import losses, models, optim
from shiftkit.autobalance import AutoBalanceSearch, merge_train_val, search_and_retrain
from shiftkit.bilevel import hypergradient, neumann_inverse_hvp
from shiftkit.data.base import Split, Splits
from shiftkit.errors import ShiftkitError
from shiftkit.objectives import OBJECTIVES, balanced_ce, ce_deo, deo_mix, group_balanced_ce
from shiftkit.train import fit
from shiftkit.weighting import build as build_weighting


def ce(z0, z1, label):
    """CE of a two-logit example by hand: log(1 + exp(z_other - z_label))."""
    return math.log1p(math.exp((z1 - z0) if label == 0 else (z0 - z1)))


# ---- objectives against hand computations ----------------------------------------------------------------

LOGITS = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 3.0], [-1.0, 0.0]])
Y = torch.tensor([0, 0, 1, 1, 1])
A = torch.tensor([0, 1, 0, 1, 1])
G = 2 * Y + A  # cells (y, a): (0,0) (0,1) (1,0) (1,1) (1,1)
CES = [ce(*LOGITS[i].tolist(), int(Y[i])) for i in range(5)]


def test_balanced_ce_by_hand_and_vs_weighted_ce():
    want = ((CES[0] + CES[1]) / 2 + (CES[2] + CES[3] + CES[4]) / 3) / 2
    assert balanced_ce(LOGITS, Y, G).item() == pytest.approx(want, rel=1e-6)
    # The code's weighted CE with w_k ∝ 1/n_val,k agrees when the batch has the validation proportions.
    w = torch.tensor([1 / 2, 1 / 3]) / torch.tensor([1 / 2, 1 / 3]).norm()
    assert F.cross_entropy(LOGITS, Y, weight=w).item() == pytest.approx(want, rel=1e-6)
    # Absent classes are skipped: only class 1 here.
    assert balanced_ce(LOGITS[2:], Y[2:]).item() == pytest.approx(sum(CES[2:]) / 3, rel=1e-6)


def test_deo_mix_and_group_balanced_by_hand():
    cells = {(0, 0): CES[0], (0, 1): CES[1], (1, 0): CES[2], (1, 1): (CES[3] + CES[4]) / 2}
    deo = abs(cells[0, 0] - cells[0, 1]) + abs(cells[1, 0] - cells[1, 1])
    assert ce_deo(LOGITS, Y, G).item() == pytest.approx(deo, rel=1e-6)
    mean_ce = sum(CES) / 5
    assert deo_mix(LOGITS, Y, G).item() == pytest.approx(0.1 * mean_ce + 0.9 * deo, rel=1e-6)
    assert OBJECTIVES.build("deo_mix", lam=0.3)(LOGITS, Y, G).item() == pytest.approx(0.7 * mean_ce + 0.3 * deo)
    assert group_balanced_ce(LOGITS, Y, G).item() == pytest.approx(sum(cells.values()) / 4, rel=1e-6)
    # With groups = attribute only (2 groups), cells are (y, a) again.
    assert OBJECTIVES.build("group_balanced_ce", num_groups=2)(LOGITS, Y, A).item() == pytest.approx(
        sum(cells.values()) / 4, rel=1e-6)
    # A pair with an empty cell contributes nothing.
    assert ce_deo(LOGITS[1:], Y[1:], G[1:]).item() == pytest.approx(abs(cells[1, 0] - cells[1, 1]), rel=1e-6)


def test_objectives_differentiable_and_deo_errors():
    z = LOGITS.clone().requires_grad_(True)
    for name in OBJECTIVES.names():
        (g,) = torch.autograd.grad(OBJECTIVES.build(name)(z, Y, G), z)
        assert torch.isfinite(g).all() and g.abs().sum() > 0
    with pytest.raises(ShiftkitError, match="binary labels"):
        ce_deo(torch.zeros(2, 3), torch.tensor([0, 2]), torch.tensor([0, 1]))
    with pytest.raises(ShiftkitError, match="2\\*y"):
        OBJECTIVES.build("deo_mix").validate(Y, A)


# ---- a two-class imbalanced toy: class 0 the majority, class 1 the minority ------------------------------

def gaussians(n0, n1, gen):
    x = torch.cat([torch.randn(n0, 2, generator=gen) + torch.tensor([-1.0, 0.0]),
                   torch.randn(n1, 2, generator=gen) + torch.tensor([1.0, 0.0])])
    y = torch.cat([torch.zeros(n0), torch.ones(n1)]).long()
    return Split(x, y, y.clone(), 2, 2)


def toy(n0=400, n1=40):
    gen = torch.Generator().manual_seed(0)
    return Splits(gaussians(n0, n1, gen), gaussians(n0 // 4, n1 // 4, gen), gaussians(200, 200, gen))


def setup(splits, seed=0, **kwargs):
    torch.manual_seed(seed)
    model = models.build("linear", input_shape=(2,), num_classes=2)
    loss = losses.build("autobalance", class_counts=splits.train.class_counts)
    return model, loss, AutoBalanceSearch(model, loss, splits, seed=seed, **kwargs)


def alpha(loss):
    return {k: v.detach().clone() for k, v in loss.hyperparameters().items()}


def test_alpha_moves_only_from_start_epoch():
    model, loss, search = setup(toy(), epochs=4, start_epoch=2, every=5, batches=2, batch_size=16)
    before = alpha(loss)
    for epoch in (0, 1):
        search.start_epoch(epoch)
        for step in range(10):
            search.after_step(step)
    assert all(torch.equal(before[k], v) for k, v in alpha(loss).items()) and search.updates == 0
    search.start_epoch(2)
    search.after_step(3)  # not a multiple of every
    assert search.updates == 0
    search.after_step(5)
    assert search.updates == 1 and not torch.equal(before["l"], loss.l.detach())


@pytest.mark.parametrize("curvature", [None, 1])
def test_applied_hypergradient_equals_bilevel_on_same_batches(curvature):
    """The search's hypergradient (batched forward passes, forward-mode mixed term) against one written
    independently from :func:`hypergradient`'s pieces; ``curvature_batches=1`` takes the Neumann series'
    Hessian from the first train batch only, ``None`` from all (then it is exactly ``hypergradient``)."""
    splits = toy()
    kw = dict(epochs=3, start_epoch=0, every=1, batches=2, batch_size=8, terms=3, step=0.5,
              curvature_batches=curvature)
    model, loss, search = setup(splits, seed=3, **kw)
    _, _, twin = setup(splits, seed=3, **kw)  # same generator seed -> same batches
    ti, vi = twin.draw()
    assert ti.shape == (2, 8) and vi.shape == (2, 8)
    buffers = dict(model.named_buffers())

    def inner_on(params, hparams, index):  # written independently: loop over batches, mean of batch means
        vals = [functional_call(loss, hparams, (functional_call(model, {**params, **buffers}, (splits.train.x[i],)),
                                                splits.train.y[i], splits.train.g[i])).mean() for i in index]
        return sum(vals) / len(vals)

    def outer(params):
        vals = [balanced_ce(functional_call(model, params, (splits.val.x[i],)), splits.val.y[i]) for i in vi]
        return sum(vals) / len(vals)

    params, hparams = dict(model.named_parameters()), loss.hyperparameters()
    if curvature is None:
        want = hypergradient(lambda p, h: inner_on(p, h, ti), outer, params, hparams, 3, 0.5)
    else:
        theta, fixed = ({k: v.detach() for k, v in d.items()} for d in (params, hparams))
        _, pull_curvature = vjp(grad(lambda p: inner_on(p, fixed, ti[:curvature])), theta)
        p = neumann_inverse_hvp(lambda c: pull_curvature(c)[0], grad(outer)(theta), 3, 0.5)
        _, pull = vjp(grad(lambda p, h: inner_on(p, h, ti)), theta, fixed)
        want = {k: -v for k, v in pull(p)[1].items()}
    before = alpha(loss)
    search.start_epoch(0)
    search.after_step(0)
    for k in want:
        torch.testing.assert_close(search.last_hypergradient[k], want[k])
        # First SGD step with momentum: the buffer is the gradient plus weight decay.
        torch.testing.assert_close(loss.hyperparameters()[k].detach(), before[k] - 0.01 * (want[k] + 1e-4 * before[k]))


def test_search_through_fit_records_history():
    splits = toy()
    model, loss, search = setup(splits, epochs=3, start_epoch=1, every=4, batches=2, batch_size=32)
    fit(model, splits, loss, build_weighting("erm"), optim.build("sgd", lr=0.1), epochs=3, batch_size=32,
        outer=search)
    steps_per_epoch = math.ceil(len(splits.train) / 32)
    assert [h["epoch"] for h in search.history] == [0, 1, 2]
    assert search.history[0]["l"] == search.history[1]["l"] == [[0.0, 0.0]]  # warm-up: α fixed
    assert search.updates == len([s for s in range(steps_per_epoch, 3 * steps_per_epoch) if s % 4 == 0])
    assert search.history[2]["l"] != search.history[1]["l"] and len(search.history[2]["delta"][0]) == 2


def test_minority_margin_grows_like_logit_adjustment():
    """With x = σ(Δ)·f + l inside CE, a lower l_1 during training makes the model learn a larger f_1 (LA's
    l = τ log π is lowest for the minority). Balanced validation CE should push l_1 - l_0 down."""
    splits = toy()
    model, loss, search = setup(splits, epochs=12, start_epoch=2, every=2, batches=4, batch_size=64,
                                upper=optim.build("sgd", lr=0.05, momentum=0.9))
    fit(model, splits, loss, build_weighting("erm"), optim.build("sgd", lr=0.1), epochs=12, batch_size=64,
        outer=search)
    l = loss.l.detach()[0]
    # Seeds 0-4 give -1.4..-2.0 (LA with τ = 1 would set log(π_1/π_0) = log 0.1 = -2.3).
    assert l[1] - l[0] < -0.5, l


def test_batchnorm_stats_untouched_by_hypergradient():
    splits = toy()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    loss = losses.build("autobalance", class_counts=splits.train.class_counts)
    search = AutoBalanceSearch(model, loss, splits, epochs=1, start_epoch=0, every=1, batches=2, batch_size=16)
    stats = {k: v.clone() for k, v in model.named_buffers()}
    search.start_epoch(0)
    search.after_step(0)
    assert all(torch.equal(stats[k], v) for k, v in model.named_buffers()) and model[1].track_running_stats
    assert all(torch.isfinite(t).all() for t in search.last_hypergradient.values())


def test_search_and_retrain_end_to_end():
    splits = toy(n0=120, n1=12)
    loss = losses.build("autobalance", class_counts=splits.train.class_counts)
    out = search_and_retrain(lambda: models.build("linear", input_shape=(2,), num_classes=2), splits, loss,
                             optim.build("sgd", lr=0.1), search_epochs=3, retrain_epochs=2, batch_size=16,
                             search_options=dict(start_epoch=1, every=2, batches=2))
    assert out.retrain.steps == 2 * math.ceil((len(splits.train) + len(splits.val)) / 16)
    assert out.alpha["l"] == out.history[-1]["l"] and out.history[-1]["epoch"] == 3
    assert out.alpha["l"] != [[0.0, 0.0]] and set(out.search.final) == {"train", "val", "test"}
    merged = merge_train_val(splits)
    assert len(merged.train) == len(splits.train) + len(splits.val) and merged.info["val_in_train"]


def test_bad_arguments():
    splits = toy()
    with pytest.raises(ShiftkitError, match="start_epoch"):
        setup(splits, epochs=3, start_epoch=3)
    with pytest.raises(ShiftkitError, match="the loss has nothing to learn"):
        AutoBalanceSearch(nn.Linear(2, 2), losses.build("ce"), splits, epochs=2)
    assert setup(splits, epochs=10)[2].begin == 4  # default warm-up: 40% of the run (code: 120 of 300)


def test_search_from_the_command_line_config_writes_alpha_and_both_phases(tmp_path):
    import json

    from shiftkit.config import compose
    from shiftkit.errors import ShiftkitError
    from shiftkit.runner import run

    overrides = ["experiment=autobalance", "train.epochs=4", "train.eval_every=2", "search.start_epoch=1",
                 "search.every=2", "search.batches=2", "model.width=16", "device=cpu", f"out={tmp_path}"]
    record = run(compose(overrides))
    assert set(record["alpha"]) == {"l", "delta"} and len(record["alpha_history"]) >= 4
    assert record["alpha_history"][0]["l"] != record["alpha"]["l"]  # the search moved l
    assert {"final", "selected"} <= set(record["search"])
    run_dir = tmp_path / record["run_dir"].split(str(tmp_path) + "/")[1]
    phases = [json.loads(line)["phase"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert phases == ["search", "search", "retrain", "retrain"]
    assert (run_dir / "alpha.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ShiftkitError, match="procedure=autobalance trains with weighting=erm and sampler=none"):
        run(compose([*overrides, "weighting=iw"]))


# ---- groups (eq. 4.2), cluster interpolation (docs/METHODS.md#autobalance-parameters), retraining data -------------------------------

def spurious_toy(n_major=300, n_minor=20, seed=0):
    """g = 2y + a; the attribute a agrees with y in the large cells (a Waterbirds-like shortcut): train has
    n_major examples in cells (0,0), (1,1) and n_minor in (0,1), (1,0); val and test are group-balanced."""
    gen = torch.Generator().manual_seed(seed)

    def split(counts):
        g = torch.cat([torch.full((c,), k) for k, c in enumerate(counts)])
        y, a = g // 2, g % 2
        x = torch.stack([(2 * y - 1) * 0.6, (2 * a - 1) * 1.5], 1) + torch.randn(len(g), 2, generator=gen)
        return Split(x.float(), y, g, 2, 4)

    major, minor = n_major, n_minor
    return Splits(split([major, minor, minor, major]), split([60] * 4), split([200] * 4))


def test_class_group_minority_cells_get_the_larger_margin():
    """[AB] eq. 4.2 with a group-balanced objective: in each class, the minority-attribute cell's row should
    end with a lower true-class offset than the majority cell's (a larger margin is then learned for it,
    as LA's lower offset does for a minority class)."""
    splits = spurious_toy()
    torch.manual_seed(0)
    model = models.build("linear", input_shape=(2,), num_classes=2)
    loss = losses.build("autobalance", class_counts=splits.train.class_counts, num_groups=4, by="class_group")
    search = AutoBalanceSearch(model, loss, splits, "group_balanced_ce", epochs=12, start_epoch=2, every=2,
                               batches=4, batch_size=64, upper=optim.build("sgd", lr=0.05, momentum=0.9))
    fit(model, splits, loss, build_weighting("erm"), optim.build("sgd", lr=0.1), epochs=12, batch_size=64,
        outer=search)
    l = loss.l.detach()
    offset = [l[g, g // 2] - l[g, 1 - g // 2] for g in range(4)]  # true-class minus other-class offset
    # Seeds 0-4: majority cells +2.6..+3.4, minority cells -0.6..-1.1.
    assert offset[1] < 0 < offset[0] and offset[2] < 0 < offset[3], offset


def test_per_class_interpolates_unsorted_clusters_and_is_frozen():
    counts = [5, 50, 20, 40, 10]  # ranks: class 1, 3, 2, 4, 0
    loss = losses.build("autobalance", class_counts=counts, cluster_size=2)  # clusters {1,3}, {2,4}, {0}
    with torch.no_grad():
        loss.l.copy_(torch.tensor([[1.0, 3.0, 4.0]]))  # centres at ranks 1, 3, 4
        loss.delta.copy_(torch.tensor([[2.0, 2.0, 2.0]]))
    flat = loss.per_class()
    by_rank = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0])  # rank 0 extrapolated: 1 - (3 - 1)/2
    rank_of_class = torch.tensor([4, 0, 2, 1, 3])
    torch.testing.assert_close(flat.l[0], by_rank[rank_of_class])
    torch.testing.assert_close(flat.delta[0], torch.full((5,), 2.0))
    assert flat.cluster_size == 1 and not any(p.requires_grad for p in flat.parameters())
    assert loss.l.requires_grad and loss.cluster_size == 2  # the original is untouched
    logits, y = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 0])
    expected = F.cross_entropy(logits * torch.sigmoid(flat.delta[0]) + flat.l[0], y, reduction="none")
    torch.testing.assert_close(flat(logits, y), expected)
    single = losses.build("autobalance", class_counts=[3, 2], cluster_size=2)
    assert single.per_class().l.tolist() == [[single.l.item()] * 2]


@pytest.mark.parametrize("retrain_on", ["train+val", "train"])
def test_retrain_data_and_cluster_interpolation(retrain_on):
    splits = toy(n0=120, n1=12)
    loss = losses.build("autobalance", class_counts=splits.train.class_counts, cluster_size=2)
    out = search_and_retrain(lambda: models.build("linear", input_shape=(2,), num_classes=2), splits, loss,
                             optim.build("sgd", lr=0.1), search_epochs=2, retrain_epochs=1, batch_size=16,
                             search_options=dict(start_epoch=1, every=2, batches=2), retrain_on=retrain_on)
    seen = len(splits.train) + (len(splits.val) if retrain_on == "train+val" else 0)
    assert out.retrain.steps == math.ceil(seen / 16)
    assert len(out.alpha["l"][0]) == 1  # α* as searched: one cluster for both classes
    with pytest.raises(ShiftkitError, match="retrain_on"):
        search_and_retrain(lambda: models.build("linear", input_shape=(2,), num_classes=2), splits, loss,
                           optim.build("sgd", lr=0.1), search_epochs=1, retrain_epochs=1, retrain_on="val")


@pytest.mark.parametrize("init, interpolate, retrain_cluster_size", [
    ("ce", True, 1), ("la", True, 1), ("ce", False, 2), ("ce", "unless_la", 1), ("la", "unless_la", 2),
])
def test_interpolate_clusters_unless_la_follows_the_released_retraining(monkeypatch, init, interpolate,
                                                                        retrain_cluster_size):
    """The released retraining.py interpolates the clusters only when the search did not start from LA
    (``ly_LA_tau`` unset); ``interpolate_clusters="unless_la"`` does the same, ``True`` always interpolates."""
    import shiftkit.autobalance as ab

    seen = []

    def spy(model, splits, loss, *args, **kwargs):
        seen.append(loss.cluster_size)
        return fit(model, splits, loss, *args, **kwargs)

    monkeypatch.setattr(ab, "fit", spy)
    splits = toy(n0=60, n1=6)
    loss = losses.build("autobalance", class_counts=splits.train.class_counts, cluster_size=2, init=init)
    search_and_retrain(lambda: models.build("linear", input_shape=(2,), num_classes=2), splits, loss,
                       optim.build("sgd", lr=0.1), search_epochs=1, retrain_epochs=1, batch_size=32,
                       search_options=dict(start_epoch=0, every=2, batches=1), interpolate_clusters=interpolate)
    assert seen == [2, retrain_cluster_size]  # the search on clusters, the retraining as chosen
    with pytest.raises(ShiftkitError, match="interpolate_clusters"):
        search_and_retrain(lambda: models.build("linear", input_shape=(2,), num_classes=2), splits, loss,
                           optim.build("sgd", lr=0.1), search_epochs=1, retrain_epochs=1,
                           interpolate_clusters="always")


def test_the_released_extra_upper_step_moves_nothing():
    """The released train_epoch's upper step on a validation CE that does not involve dy, ly (zero_grad,
    backward, step): on PyTorch >= 2 zero_grad() leaves the gradients None and SGD skips them, so α and
    its momentum stay put (with zero-filled gradients, as on PyTorch < 2, weight decay and momentum would
    move α). AutoBalanceSearch has no such step."""
    dy, ly = torch.ones(2, requires_grad=True), torch.zeros(2, requires_grad=True)
    upper = torch.optim.SGD([{"params": dy}, {"params": ly}], lr=0.01, momentum=0.9, weight_decay=1e-4)
    dy.grad, ly.grad = torch.full((2,), 0.5), torch.full((2,), -0.5)
    upper.step()  # a hyper-update: momentum buffers now hold a nonzero step
    before = [t.detach().clone() for t in (dy, ly, upper.state[dy]["momentum_buffer"])]
    model = nn.Linear(3, 2)
    up_loss = F.cross_entropy(model(torch.randn(4, 3)), torch.tensor([0, 1, 1, 0]), weight=torch.ones(2))
    upper.zero_grad()
    up_loss.backward()
    upper.step()
    assert dy.grad is None and ly.grad is None
    assert all(torch.equal(b, a) for b, a in zip(before, (dy, ly, upper.state[dy]["momentum_buffer"])))
