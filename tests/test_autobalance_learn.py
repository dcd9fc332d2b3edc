"""AutoBalance's learned subset (``learn``: l, Δ, τ; [AB] Table 1's rows, docs/METHODS.md#autobalance-parameters) and its Group-LA init
(docs/METHODS.md#autobalance-objectives, [AB] Table 3), against hand computations and the search's own hypergradient."""

import math

import pytest
import torch
import torch.nn.functional as F

from shiftkit import losses, models
from shiftkit.autobalance import AutoBalanceSearch
from shiftkit.data.base import Split, Splits
from shiftkit.errors import ShiftkitError

COUNTS = [300, 60, 12]
LOG_PI = torch.log(torch.tensor(COUNTS, dtype=torch.float64) / sum(COUNTS))
SIGMOID_ONE = 1.0 / (1.0 + math.exp(-1.0))


def three_classes(counts, seed=0):
    gen = torch.Generator().manual_seed(seed)
    y = torch.cat([torch.full((n,), k) for k, n in enumerate(counts)])
    x = torch.randn(len(y), 2, generator=gen) + torch.tensor([[-1.5, 0.0], [1.5, 0.0], [0.0, 1.5]])[y]
    return Split(x, y, y.clone(), 3, 3)


SPLITS = Splits(three_classes(COUNTS), three_classes([40, 40, 40], 1), three_classes([40, 40, 40], 2))


def searched(seed=0, **loss_options):
    """A model, the loss and a search that updates α at every step from epoch 0."""
    torch.manual_seed(seed)
    model = models.build("linear", input_shape=(2,), num_classes=3)
    loss = losses.build("autobalance", class_counts=COUNTS, **loss_options)
    search = AutoBalanceSearch(model, loss, SPLITS, epochs=2, start_epoch=0, every=1, batches=2, batch_size=16,
                               step=0.5, seed=seed)
    return model, loss, search


def snapshot(loss):
    return {k: v.detach().clone() for k, v in [*loss.named_parameters(), *loss.named_buffers()]}


def test_default_learns_l_and_delta_as_before():  # docs/METHODS.md#autobalance-parameters: dy, ly trained, wy fixed
    loss = losses.build("autobalance", class_counts=COUNTS)
    assert list(loss.hyperparameters()) == ["delta", "l"] and not hasattr(loss, "tau")
    logits, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 1, 0])
    torch.testing.assert_close(loss(logits, y), F.cross_entropy(SIGMOID_ONE * logits, y, reduction="none"))


@pytest.mark.parametrize("learn, init", [(["l"], "ce"), (["delta"], "ce"), (["tau"], "la"), (["delta", "tau"], "la")])
def test_only_the_learned_tensors_move_in_a_search_step(learn, init):
    _, loss, search = searched(learn=learn, init=init)
    assert set(loss.hyperparameters()) == set(learn) and set(learn) <= set(dict(loss.named_parameters()))
    before = snapshot(loss)
    search.start_epoch(0)
    search.after_step(0)
    after = snapshot(loss)
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved == set(learn), moved
    assert all(not b.requires_grad for b in loss.buffers())


def test_tau_mode_offsets_are_tau_log_pi():  # "AutoBalance: τ of LA loss", l_y = τ log π_y (docs/METHODS.md#autobalance-parameters)
    loss = losses.build("autobalance", class_counts=COUNTS, init="la", tau=2.0, learn=["tau"])
    assert list(loss.hyperparameters()) == ["tau"] and loss.tau.shape == (1,)
    torch.testing.assert_close(loss.offsets()[0].double(), 2.0 * LOG_PI, rtol=1e-6, atol=1e-6)
    logits, y = torch.randn(6, 3), torch.tensor([0, 1, 2, 2, 1, 0])
    want = F.cross_entropy(SIGMOID_ONE * logits + 2.0 * LOG_PI.float(), y, reduction="none")
    torch.testing.assert_close(loss(logits, y), want)
    fixed = losses.build("autobalance", class_counts=COUNTS, init="la", tau=2.0)  # the same loss with l learned
    torch.testing.assert_close(loss(logits, y), fixed(logits, y))


def test_tau_hypergradient_is_the_chain_rule_through_l():
    """With l = τ·log π, dL/dτ = Σ_k (dL/dl_k)·log π_k: the search's hypergradient for τ against the one it
    computes for l at the same point (same model, same batches, autograd through the parametrization)."""
    model, by_tau, search_tau = searched(seed=1, init="la", tau=1.5, learn=["tau"])
    _, by_l, search_l = searched(seed=1, init="la", tau=1.5, learn=["l", "delta"])
    search_l.model = model  # the same θ for both
    train_index, val_index = search_tau.draw()
    torch.testing.assert_close(by_l.offsets(), by_tau.offsets())
    hyper_tau = search_tau.hypergradient(train_index, val_index)["tau"]
    hyper_l = search_l.hypergradient(train_index, val_index)["l"]
    assert hyper_tau.shape == (1,) and hyper_tau.abs().item() > 0
    torch.testing.assert_close(hyper_tau, (hyper_l[0] * by_tau.log_prior[0]).sum().reshape(1), rtol=1e-4, atol=1e-7)


def test_per_class_keeps_tau_and_interpolates_the_log_prior():  # docs/METHODS.md#autobalance-parameters retraining expansion
    loss = losses.build("autobalance", class_counts=[50, 40, 30, 20], cluster_size=2, init="la", learn=["tau"])
    with torch.no_grad():
        loss.tau.fill_(3.0)
    flat = loss.per_class()
    centres = loss.log_prior[0].double()  # cluster means, at ranks 1 and 3
    by_rank = torch.stack([centres[0] - (centres[1] - centres[0]) / 2, centres[0],
                           (centres[0] + centres[1]) / 2, centres[1]])
    torch.testing.assert_close(flat.offsets()[0].double(), 3.0 * by_rank, rtol=1e-6, atol=1e-6)
    assert "tau" in dict(flat.named_parameters()) and "log_prior" in dict(flat.named_buffers())
    assert not any(p.requires_grad for p in flat.parameters()) and loss.tau.requires_grad


@pytest.mark.parametrize(
    "options, words",
    [
        (dict(learn=[]), "learn must name"),
        (dict(learn=["x"]), "learn must name"),
        (dict(learn=["l", "tau"], init="la"), "not both l"),
        (dict(learn=["l", "l"]), "each once"),
        (dict(learn=["tau"]), "init 'la' or 'group_la'"),
        (dict(init="group_la", group_counts=[30, 10, 4, 2]), "by='class_group'"),
        (dict(init="group_la", by="class_group", group_counts=[30, 10, 4, 3]), "not \\(class, attribute\\) cells"),
        (dict(init="group_la", by="class_group", group_counts=[30, 10, 6]), "multiple of the 2 classes"),
        (dict(cluster_init="median"), "cluster_init must be 'mean' or 'centre'"),
    ],
)
def test_bad_options_are_one_line_errors(options, words):
    with pytest.raises(ShiftkitError, match=words) as info:
        losses.build("autobalance", class_counts=options.pop("class_counts", [40, 6]), **options)
    assert "\n" not in str(info.value)


# ---- clustered initialization: the released get_LA_params keeps each cluster's centre class -------------

def test_cluster_init_centre_gives_each_cluster_its_centre_class_log_prior():
    counts = [5, 50, 20, 40, 10]  # ranks by count: classes 1, 3, 2, 4, 0 -> clusters {1, 3}, {2, 4}, {0}
    log_pi = [math.log(c / sum(counts)) for c in counts]
    centre = losses.build("autobalance", class_counts=counts, cluster_size=2, init="la", tau=2.0,
                          cluster_init="centre")
    # Centre ranks start + size // 2 = 1, 3, 4: classes 3, 4 and 0 (the short last block is its own centre).
    assert centre.l[0].tolist() == pytest.approx([2.0 * log_pi[3], 2.0 * log_pi[4], 2.0 * log_pi[0]], rel=1e-6)
    assert centre.delta[0].tolist() == [1.0, 1.0, 1.0]
    mean = losses.build("autobalance", class_counts=counts, cluster_size=2, init="la", tau=2.0)  # the default
    assert mean.l[0].tolist() == pytest.approx([log_pi[1] + log_pi[3], log_pi[2] + log_pi[4], 2.0 * log_pi[0]],
                                               rel=1e-6)
    logits, y = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 0])
    want = F.cross_entropy(SIGMOID_ONE * logits + centre.l[0, centre.cluster_of], y, reduction="none")
    torch.testing.assert_close(centre(logits, y), want)

    # Frequency-sorted labels, as in the released code: tau * log(pi) at the classes range(C//2, K, C).
    ranked = [50, 40, 30, 20, 10, 5]
    log_prior = torch.log(torch.tensor(ranked, dtype=torch.float64) / sum(ranked))
    for size in (2, 3):
        loss = losses.build("autobalance", class_counts=ranked, cluster_size=size, init="la", tau=1.5,
                            cluster_init="centre")
        torch.testing.assert_close(loss.l[0].double(), 1.5 * log_prior[list(range(size // 2, 6, size))],
                                   rtol=1e-6, atol=1e-6)
    by_tau = losses.build("autobalance", class_counts=ranked, cluster_size=3, init="la", learn=["tau"],
                          cluster_init="centre")
    torch.testing.assert_close(by_tau.log_prior[0].double(), log_prior[[1, 4]], rtol=1e-6, atol=1e-6)
    cdt = losses.build("autobalance", class_counts=ranked, cluster_size=3, init="cdt", gamma=0.5,
                       cluster_init="centre")  # Δ too: (n_centre / n_max)^gamma
    torch.testing.assert_close(cdt.delta[0].double(), torch.tensor([40.0 / 50, 10.0 / 50], dtype=torch.float64).sqrt(),
                               rtol=1e-6, atol=1e-6)
    # One class per cluster: the two inits agree.
    assert torch.equal(losses.build("autobalance", class_counts=counts, init="la", cluster_init="centre").l,
                       losses.build("autobalance", class_counts=counts, init="la").l)


# ---- Group-LA (docs/METHODS.md#loss-autobalance, our reading): w_a·CE(f + log π_{·|a}, y), cells g = 2y + a --------------------------

CELLS = [3500, 182, 58, 1055]  # fmnist_spurious / Waterbirds: (y, a) = (0,0) (0,1) (1,0) (1,1)


def group_la_by_hand(z0, z1, y, g):
    a = g % 2
    n_a = CELLS[a] + CELLS[2 + a]
    log_prior = [math.log(CELLS[a] / n_a), math.log(CELLS[2 + a] / n_a)]
    w = 1.0 / (2 * n_a / sum(CELLS))
    adjusted = [z0 + log_prior[0], z1 + log_prior[1]]
    return w * (math.log(math.exp(adjusted[0]) + math.exp(adjusted[1])) - adjusted[y])


def test_group_la_init_by_hand():
    loss = losses.build("autobalance", class_counts=[3682, 1113], group_counts=CELLS, by="class_group",
                        init="group_la")
    logits = torch.tensor([[0.5, -0.2], [1.0, 2.0], [-0.3, 0.4], [2.0, -1.0], [0.0, 0.0]])
    y, g = torch.tensor([1, 0, 1, 0, 1]), torch.tensor([3, 1, 2, 0, 2])
    want = torch.tensor([group_la_by_hand(*logits[i].tolist(), int(y[i]), int(g[i])) for i in range(5)])
    torch.testing.assert_close(loss(logits, y, g), want)
    # The weights have mean 1 over the training set; rows 0, 2 (a = 0) and 1, 3 (a = 1) agree.
    w = loss.w[:, 0].double()
    assert (w * torch.tensor(CELLS, dtype=torch.float64)).sum().item() == pytest.approx(sum(CELLS), rel=1e-6)
    assert torch.equal(loss.offsets()[0], loss.offsets()[2]) and torch.equal(loss.offsets()[1], loss.offsets()[3])


def test_learned_tau_from_the_command_line_writes_alpha_and_its_plot(tmp_path):
    from shiftkit.config import compose
    from shiftkit.runner import run

    record = run(compose(["experiment=autobalance", "loss.learn=[tau]", "train.epochs=2", "search.start_epoch=1",
                          "search.every=2", "search.batches=2", "model.width=8", "device=cpu", f"out={tmp_path}"]))
    assert set(record["alpha"]) == {"tau"} and record["alpha_history"][0]["tau"] == [1.0]
    assert record["alpha"]["tau"] != [1.0]
    assert (tmp_path / record["run_dir"].split(str(tmp_path) + "/")[1] / "alpha.png").exists()
