"""Group DRO's automatic generalization adjustment in the training loop (docs/METHODS.md#weighting-group_dro):
after every training epoch the scheme takes the validation split's per-group mean losses, as group_DRO's
train.py does after each epoch's validation; without the option the loop runs as before."""

import json
import math

import pytest
import torch
from torch import nn

from shiftkit import data, losses, members, models, optim, sampling, weighting
from shiftkit.checkpoint import Checkpoint
from shiftkit.cli import main
from shiftkit.data.base import Split, Splits
from shiftkit.ensemble import fit_ensemble
from shiftkit.errors import ShiftkitError
from shiftkit.train import fit
from shiftkit.weighting.dro import GroupDRO

from helpers import with_attribute

BASE = with_attribute(data.build("digits_binary"))  # groups g = 2y + a


class Crash(Exception):
    pass


def _hard(seed: int = 0) -> Splits:
    """Two Gaussian features (class, attribute), groups g = 2y + a of training counts [60, 60, 12, 12], and
    a validation split whose labels are flipped: its loss soon lies far above the training loss in every
    group, so that every gap is positive and the adjustment acts from the first epoch on."""
    gen = torch.Generator().manual_seed(seed)

    def split(counts, flip=False):
        g = torch.cat([torch.full((n,), k) for k, n in enumerate(counts)])
        y, a = g // 2, g % 2
        x = torch.stack([(2 * y - 1) * 2.0, (2 * a - 1) * 1.0], 1) + torch.randn(len(g), 2, generator=gen)
        y = 1 - y if flip else y
        return Split(x, y, 2 * y + a, 2, 4)

    return Splits(split([60, 60, 12, 12]), split([20, 20, 6, 6], flip=True), split([20, 20, 20, 20]))


HARD = _hard()
STATS = HARD.statistics()


def _fit(splits=HARD, automatic=True, seed=0, lr=0.1, epochs=3, eval_every=1, checkpoint=None, loss=None, on_eval=None,
         **options):
    stats = splits.statistics()
    torch.manual_seed(seed)
    net = models.build("mlp", **stats, width=16)
    scheme = weighting.build("group_dro", eta=0.5, automatic_adjustment=automatic, **options, **stats)
    result = fit(net, splits, loss or losses.build("ce", **stats), scheme, optim.build("sgd", lr=lr),
                 epochs=epochs, batch_size=32, eval_every=eval_every, seed=seed, checkpoint=checkpoint,
                 on_eval=on_eval, sampler=sampling.build("none"))
    return result, net, scheme


def _by_hand(net: nn.Module, split: Split) -> torch.Tensor:
    """Each group's mean CE of ``net`` on ``split``, in evaluation mode (NaN for an absent group)."""
    net.eval()
    with torch.no_grad():
        values = losses.build("ce")(net(split.x), split.y, split.g).double()
    counts = torch.bincount(split.g, minlength=4).double()
    means = torch.zeros(4, dtype=torch.double).index_add(0, split.g, values) / counts.clamp_min(1)
    return torch.where(counts > 0, means, torch.full_like(means, math.nan)).float()


def _spy(monkeypatch) -> list:
    """Record each validation pass: its per-example losses, the state before and the state after."""
    calls, original = [], GroupDRO.after_validation

    def spy(self, losses, y, g, state):
        new = original(self, losses, y, g, state)
        calls.append((losses.clone(), {k: v.clone() for k, v in state.items()}, new))
        return new

    monkeypatch.setattr(GroupDRO, "after_validation", spy)
    return calls


def test_the_gap_after_training_is_the_last_validation_gap_computed_by_hand(monkeypatch):
    calls = _spy(monkeypatch)
    result, net, scheme = _fit(epochs=3, eval_every=2)
    assert len(calls) == 3  # after every epoch, not only at the evaluations (epochs 2 and 3)
    expected = _by_hand(net, HARD.val) - scheme.train_loss
    assert (expected > 0).all()
    torch.testing.assert_close(scheme.gap, expected)
    _, _, off = _fit(automatic=False, epochs=3, eval_every=2)
    assert not torch.equal(scheme.q, off.q)  # the adjustment acted on the later epochs' updates


def test_a_group_absent_from_validation_keeps_its_gap(monkeypatch):
    calls = _spy(monkeypatch)
    val = HARD.val.subset(torch.nonzero(HARD.val.g != 3).flatten())
    splits = Splits(HARD.train, val, HARD.test)
    _, net, scheme = _fit(splits, adjustment=0.5, epochs=2)
    kept = 0.5 / math.sqrt(STATS["group_counts"][3])  # the given adjustment C / sqrt(n_3) to begin with
    assert float(calls[0][1]["gap"][3]) == pytest.approx(kept)
    assert (calls[0][2]["gap"][:3] > 0).all()  # the first epoch's measured gaps turn the adjustment on ...
    for _, before, after in calls:
        on = bool((after["gap"][:3] > 0).all())
        assert float(after["gap"][3]) == (float(before["gap"][3]) if on else 0.0)
    assert float(calls[0][2]["gap"][3]) == pytest.approx(kept)  # ... and group 3 keeps its gap
    torch.testing.assert_close(scheme.gap[:3], _by_hand(net, val)[:3] - scheme.train_loss[:3])


def test_the_pure_adjustment_rules():
    dro = GroupDRO(automatic_adjustment=True, adjustment=1.0, group_counts=[4, 1, 1, 0])
    state = {**dro.state(), "train_loss": torch.tensor([0.5, 1.0, 1.0, 0.0])}
    nan = math.nan
    # An absent group (NaN) keeps its gap and takes no part in the test; a group with no training example gets 0.
    new = dro.adjusted(torch.tensor([1.0, 3.0, nan, 9.0]), state)
    torch.testing.assert_close(new["gap"], torch.tensor([0.5, 2.0, 1.0, 0.0]))
    # One measured gap <= 0: none of the adjustment, the kept one included (group_DRO's all-or-nothing).
    torch.testing.assert_close(dro.adjusted(torch.tensor([0.5, 3.0, nan, 9.0]), state)["gap"], torch.zeros(4))
    # From per-example losses: each group's mean over its finite losses.
    g = torch.tensor([0, 0, 1, 1, 2])
    new = dro.after_validation(torch.tensor([1.0, 2.0, 3.0, math.inf, 2.0]), g, g, state)
    torch.testing.assert_close(new["gap"], torch.tensor([1.0, 2.0, 1.0, 0.0]))
    assert dro.needs_validation_losses and not GroupDRO(group_counts=[4, 1]).needs_validation_losses
    plain = GroupDRO(group_counts=[4, 1])
    assert plain.after_validation(torch.ones(2), g[:2], g[:2], plain.state()) == plain.state()


def test_without_the_option_no_validation_pass_runs(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a validation pass ran without automatic_adjustment")

    monkeypatch.setattr(members, "split_losses", forbidden)
    _fit(automatic=False, epochs=2)
    for name in ("erm", "rgd", "cvar"):
        fit(models.build("mlp", **STATS, width=8), HARD, losses.build("ce"), weighting.build(name, **STATS),
            optim.build("sgd"), epochs=1)


def test_an_adjustment_that_stays_off_trains_bit_for_bit_as_the_option_off():
    # On the plain validation split the training loss's moving average lags above the validation loss, so
    # every gap is negative and the automatic adjustment stays 0: the run is the one without the option.
    on, on_net, on_scheme = _fit(BASE, automatic=True, epochs=4, eval_every=2)
    off, off_net, off_scheme = _fit(BASE, automatic=False, epochs=4, eval_every=2)
    assert torch.equal(on_scheme.gap, torch.zeros(4))
    assert torch.equal(on_scheme.q, off_scheme.q)
    assert on.history == off.history and on.final == off.final
    for a, b in zip(on_net.state_dict().values(), off_net.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_resume_after_an_epoch_finishes_as_never_interrupted(tmp_path):
    reference, ref_net, ref_scheme = _fit(epochs=5)

    def crash(record):
        if record["epoch"] == 3:
            raise Crash

    with pytest.raises(Crash):
        _fit(epochs=5, checkpoint=Checkpoint(tmp_path / "checkpoint.pt", every=1), on_eval=crash)
    resumed = Checkpoint(tmp_path / "checkpoint.pt")
    assert resumed.load()["epoch"] == 2
    result, net, scheme = _fit(epochs=5, checkpoint=resumed)
    assert result.history == reference.history and result.final == reference.final
    for key, value in ref_scheme.state_dict().items():
        assert torch.equal(scheme.state_dict()[key], value), key
    assert (scheme.gap > 0).all()
    for a, b in zip(net.state_dict().values(), ref_net.state_dict().values(), strict=True):
        assert torch.equal(a, b)


class CrashingCE(nn.Module):
    """CE that raises at its ``at``-th call (validation passes count too), once."""

    def __init__(self, at: int):
        super().__init__()
        self.ce, self.calls, self.at = losses.build("ce"), 0, at

    def forward(self, logits, y, g=None):
        self.calls += 1
        if self.calls == self.at:
            raise Crash
        return self.ce(logits, y, g)


def test_resume_inside_an_epoch_finishes_as_never_interrupted(tmp_path):
    reference, ref_net, ref_scheme = _fit(epochs=3)
    steps = -(-len(HARD.train) // 32)
    ck = Checkpoint(tmp_path / "checkpoint.pt", every=1, interval=1e-9)  # saves after every step
    with pytest.raises(Crash):  # the 2nd batch of the 3rd epoch: 2 epochs of steps and 2 validation passes
        _fit(epochs=3, checkpoint=ck, loss=CrashingCE(2 * steps + 2 + 2))
    resumed = Checkpoint(ck.path)
    assert resumed.load()["batch"] == 1
    result, net, scheme = _fit(epochs=3, checkpoint=resumed)
    assert result.history == reference.history and result.final == reference.final
    for key, value in ref_scheme.state_dict().items():
        assert torch.equal(scheme.state_dict()[key], value), key


def test_ensemble_members_adjust_as_their_sequential_runs():
    seeds = [0, 1]
    sequential = [_fit(seed=s) for s in seeds]
    nets, schemes = [], []
    for s in seeds:
        torch.manual_seed(s)
        nets.append(models.build("mlp", **STATS, width=16))
        schemes.append(weighting.build("group_dro", eta=0.5, automatic_adjustment=True, **STATS))
    results = fit_ensemble(nets, HARD, losses.build("ce", **STATS), schemes, optim.build("sgd", lr=0.1),
                           seeds=seeds, epochs=3, batch_size=32, samplers=[sampling.build("none") for _ in seeds])
    for s, (result, _, scheme) in enumerate(sequential):
        assert (scheme.gap > 0).all()
        torch.testing.assert_close(schemes[s].gap, scheme.gap)
        torch.testing.assert_close(schemes[s].q, scheme.q)
        assert results[s].final["test"] == result.final["test"]


def test_a_chain_that_would_hide_the_option_is_refused():
    both = weighting.chain(weighting.build("iw", **STATS),
                           weighting.build("group_dro", automatic_adjustment=True, **STATS))
    with pytest.raises(ShiftkitError, match="'group_dro' needs each epoch's validation losses, which Chain"):
        fit(models.build("mlp", **STATS, width=8), HARD, losses.build("ce"), both, optim.build("sgd"), epochs=1)


def test_the_command_line_runs_and_records_the_option(tmp_path):
    args = ["train", "weighting=group_dro", "weighting.automatic_adjustment=true", "weighting.eta=0.1",
            "model.width=16", "train.epochs=3", "train.eval_every=1", "device=cpu", f"out={tmp_path}"]
    assert main(args) == 0
    (path,) = tmp_path.rglob("run.json")
    record = json.loads(path.read_text())
    assert record["status"] == "finished"
    assert record["config"]["weighting"]["automatic_adjustment"] is True
    assert len((path.parent / "metrics.jsonl").read_text().splitlines()) == 3
