"""The training loop on problems with known answers; selection, schedules, failures, determinism."""

import pytest
import torch

from shiftkit import data, losses, models, optim, weighting
from shiftkit.data.base import Split, Splits
from shiftkit.errors import ShiftkitError
from shiftkit.train import NonFiniteLoss, fit, parse_select

from helpers import with_attribute


def _separable(n=40, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=gen)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    x = x + 0.3 * (2 * y[:, None] - 1) * torch.tensor([1.0, 0.5])  # a margin around the boundary
    split = Split(x, y, y.clone(), 2, 2)
    return Splits(split, split, split)


def _fit(splits, loss="ce", scheme="erm", seed=0, **kw):
    torch.manual_seed(seed)
    net = models.build("linear", input_shape=(2,), num_classes=2)
    stats = splits.statistics()
    return net, fit(
        net, splits, losses.build(loss, **stats), weighting.build(scheme, **stats),
        kw.pop("spec", optim.build("sgd", lr=0.5, momentum=0.0)), seed=seed, **{"epochs": 60, **kw},
    )


@pytest.mark.parametrize("loss", losses.names())
@pytest.mark.parametrize("scheme", weighting.names())
def test_every_loss_and_weighting_separates_a_separable_problem(loss, scheme):
    # Groups 2y + a with a random bit a, so that every scheme applies (deo_mix needs that layout).
    _, result = _fit(with_attribute(_separable()), loss, scheme, batch_size=8)
    assert result.final["train"]["acc"] == 1.0


def test_full_batch_gd_equals_closed_form_steps():
    splits = _separable(8)
    torch.manual_seed(0)
    net = models.build("linear", input_shape=(2,), num_classes=2)
    w0 = [p.detach().clone() for p in net.parameters()]
    fit(net, splits, losses.build("ce"), weighting.build("erm"), optim.build("sgd", lr=0.1, momentum=0.0),
        epochs=1, batch_size=0)
    ref = torch.nn.Linear(2, 2)
    with torch.no_grad():
        ref.weight.copy_(w0[0]), ref.bias.copy_(w0[1])
    torch.nn.functional.cross_entropy(ref(splits.train.x), splits.train.y).backward()
    torch.testing.assert_close(net[1].weight, w0[0] - 0.1 * ref.weight.grad)


def test_importance_weights_move_the_boundary_toward_the_majority():  # [W] Fig. 1 before interpolation
    noisy = data.build("two_gaussians", n_minority=20, n_majority=200)
    erm_net, _ = _fit(noisy, "ce", "erm", epochs=30, batch_size=0, spec=optim.build("sgd", lr=0.1, momentum=0.0))
    iw_net, _ = _fit(noisy, "ce", "iw", epochs=30, batch_size=0, spec=optim.build("sgd", lr=0.1, momentum=0.0))
    minority_test = noisy.test.x[noisy.test.y == 0]

    def minority_score(net):
        with torch.no_grad():
            out = net(minority_test)
        return (out[:, 0] - out[:, 1]).mean().item()

    assert minority_score(iw_net) > minority_score(erm_net)


def test_best_selection_returns_the_best_validation_evaluation():
    splits = _separable()
    _, result = _fit(splits, epochs=20, eval_every=2, select="best:balanced_acc", batch_size=8)
    history = result.history
    best = max(h["val"]["balanced_acc"] for h in history)
    first_best = next(h for h in history if h["val"]["balanced_acc"] == best)
    assert result.selected_epoch == first_best["epoch"]
    assert result.selected["test"] == first_best["test"]
    assert [h["epoch"] for h in history] == list(range(2, 21, 2))


def test_same_seed_same_metrics_different_seed_different_order():
    splits = data.build("digits_binary")
    spec = optim.build("sgd", lr=0.05)
    runs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        net = models.build("mlp", input_shape=splits.input_shape, num_classes=2, width=32, depth=1)
        res = fit(net, splits, losses.build("ce"), weighting.build("erm"), spec, epochs=3, batch_size=16, seed=seed)
        runs.append((res.history[-1]["train_loss"], [p.detach().clone() for p in net.parameters()]))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))
    assert runs[0][0] != runs[2][0]


def test_non_finite_loss_stops_with_the_step():
    splits = _separable()
    with pytest.raises(NonFiniteLoss, match=r"non-finite (at|by) step \d+ \(epoch \d+\)"):
        _fit(splits, epochs=3, batch_size=8, spec=optim.build("sgd", lr=1e38, momentum=0.0), divergence=0)


def test_schedules():
    cosine = optim.build("sgd", schedule="cosine", warmup_epochs=2)
    assert [round(cosine.factor(e, 6), 3) for e in range(6)] == [0.5, 1.0, 1.0, 0.854, 0.5, 0.146]
    with pytest.raises(ShiftkitError, match="unknown schedule"):
        optim.build("sgd", schedule="linear")


@pytest.mark.parametrize("bad", ["best", "best:nope", "first", "best:"])
def test_select_is_validated(bad):
    with pytest.raises(ShiftkitError):
        parse_select(bad)


def test_training_with_augmentation_is_reproducible_per_seed():
    base = data.build("digits_binary")
    splits = data.Splits(base.train, base.val, base.test, pipeline=data.pipeline.Pipeline(crop_padding=1, flip=True))
    losses_seen = []
    for seed in (3, 3, 4):
        torch.manual_seed(0)  # same initialization: only the data order and augmentation differ
        net = models.build("mlp", input_shape=(1, 8, 8), num_classes=2, width=16, depth=1)
        res = fit(net, splits, losses.build("ce"), weighting.build("erm"), optim.build("sgd", lr=0.05),
                  epochs=2, batch_size=16, seed=seed)
        losses_seen.append(res.history[-1]["train_loss"])
    assert losses_seen[0] == losses_seen[1] != losses_seen[2]


def test_bf16_autocast_trains_close_to_float32():
    splits = _separable()
    _, full = _fit(splits, epochs=20, batch_size=8)
    _, half = _fit(splits, epochs=20, batch_size=8, amp="bf16")
    assert half.final["train"]["acc"] == full.final["train"]["acc"] == 1.0
    with pytest.raises(ShiftkitError, match="train.amp"):
        _fit(splits, epochs=1, amp="fp8")


def test_compiled_model_gives_the_same_training():
    splits = _separable()
    _, eager = _fit(splits, epochs=3, batch_size=8)
    _, compiled = _fit(splits, epochs=3, batch_size=8, compile=True)
    assert compiled.history[-1]["train_loss"] == pytest.approx(eager.history[-1]["train_loss"], rel=1e-4)


def test_unit_weights_take_the_mean_without_multiplying_and_train_bit_for_bit_the_same():
    """ERM's ``unit`` fast path (no multiply by ones, no weighting call) changes no number of a run."""
    from shiftkit.weighting.static import ERM

    class Ones(ERM):
        unit = False

    splits = data.build("digits_binary")
    states = []
    for scheme in (weighting.build("erm"), Ones()):
        torch.manual_seed(0)
        model = models.build("mlp", width=16, depth=1, **splits.statistics())
        result = fit(model, splits, losses.build("ce"), scheme, optim.build("sgd", lr=0.05), epochs=3, batch_size=16,
                     device="cpu")
        states.append((model.state_dict(), result.history[-1]))
    assert weighting.build("erm").unit and not Ones().unit
    for key, value in states[0][0].items():
        assert torch.equal(value, states[1][0][key]), key
    assert states[0][1] == states[1][1]
