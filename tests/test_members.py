"""The member axis of the one loop: what an ensemble gained by sharing the loop of a plain run
(checkpoints inside an epoch, compile), the member-axis accumulator, and schemes of the stateful
interface in ensembles."""

import pytest
import torch
from hypothesis import given, settings, strategies as st

from shiftkit import data, losses, models, optim, sampling, weighting
from shiftkit.checkpoint import ENSEMBLE_FILE, MembersCheckpoint
from shiftkit.data.pipeline import Pipeline
from shiftkit.ensemble import EnsembleUnsupported, Stacked, fit_ensemble
from shiftkit.metrics import Accumulator
from shiftkit.train import fit, fit_members
from shiftkit.weighting.dro import GroupDRO

from helpers import with_attribute

BASE = with_attribute(data.build("digits_binary"))
STATS = BASE.statistics()
SEEDS = [0, 1, 2]


class Crash(Exception):
    pass


class CrashingDRO(GroupDRO):
    """Group DRO whose vmapped step raises at its ``at``-th call (one call per step for all members)."""

    calls, at = 0, 0

    def step(self, losses, y, g, state):
        type(self).calls += 1
        if type(self).calls == type(self).at:
            raise Crash
        return super().step(losses, y, g, state)


class LegacyDRO(weighting.Weighting):
    """A scheme written against the stateful interface only (``weights`` overridden, no ``weigh``)."""

    def __init__(self, **stats):
        super().__init__()
        self.inner = weighting.build("group_dro", eta=0.5, **stats)

    def weights(self, losses, y, g):
        return self.inner.weights(losses, y, g)


def _members():
    nets = []
    for s in SEEDS:
        torch.manual_seed(s)
        nets.append(models.build("mlp", **STATS, width=16))
    return nets


@given(st.integers(1, 4), st.integers(1, 40), st.integers(0, 2**16))
@settings(max_examples=25, deadline=None)
def test_a_member_axis_accumulator_counts_as_one_accumulator_per_member(members, batch, seed):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(members, batch, 3, generator=gen)
    y, g = torch.randint(0, 3, (batch,), generator=gen), torch.randint(0, 2, (batch,), generator=gen)
    both = Accumulator(3, 2, members=members)
    both.update(logits, y, g)
    both.update(logits[:, : batch // 2], y[: batch // 2], g[: batch // 2])
    for s, metrics in enumerate(both.compute_members([5, 7])):
        one = Accumulator(3, 2)
        one.update(logits[s], y, g)
        one.update(logits[s, : batch // 2], y[: batch // 2], g[: batch // 2])
        assert metrics == one.compute([5, 7])


def test_an_ensemble_stopped_inside_an_epoch_resumes_at_its_batch(tmp_path):
    splits = data.Splits(BASE.train, BASE.val, BASE.test, pipeline=Pipeline(crop_padding=1, flip=True))

    def train(checkpoint=None, crash_at=0):
        CrashingDRO.calls, CrashingDRO.at = 0, crash_at
        nets = _members()
        results = fit_ensemble(
            nets, splits, losses.build("ce"), [CrashingDRO(eta=0.5, class_counts=STATS["class_counts"], group_counts=STATS["group_counts"]) for _ in SEEDS],
            optim.build("sgd", lr=0.05, momentum=0.9), samplers=[sampling.build("resample") for _ in SEEDS],
            seeds=SEEDS, epochs=3, batch_size=16, select="best:worst_group_acc", checkpoint=checkpoint,
        )
        return results, nets

    reference, ref_nets = train()
    steps = -(-len(splits.train) // 16)
    ck = MembersCheckpoint(tmp_path / ENSEMBLE_FILE, ["m"], every=1, interval=1e-9)  # saves after every step
    with pytest.raises(Crash):
        train(ck, crash_at=steps + 4)  # the 4th batch of the 2nd epoch
    resumed = MembersCheckpoint(ck.path, ["m"], every=1, interval=1e-9)
    state = resumed.load()
    assert (state["epoch"], state["batch"], state["step"]) == (1, 3, steps + 3)
    results, nets = train(resumed)
    for r, ref, net, ref_net in zip(results, reference, nets, ref_nets):
        assert r.history == ref.history and r.selected == ref.selected and r.steps == ref.steps
        for a, b in zip(net.state_dict().values(), ref_net.state_dict().values()):
            assert torch.equal(a, b)


def test_a_scheme_of_the_stateful_interface_trains_member_by_member_as_its_sequential_runs():
    settings_ = dict(epochs=3, batch_size=64, eval_every=3)
    sequential = []
    for s, net in zip(SEEDS, _members()):
        sequential.append(fit(net, BASE, losses.build("ce"), LegacyDRO(**STATS), optim.build("sgd", lr=0.05),
                              seed=s, **settings_))
    stacked = fit_ensemble(_members(), BASE, losses.build("ce"), [LegacyDRO(**STATS) for _ in SEEDS],
                           optim.build("sgd", lr=0.05), seeds=SEEDS, **settings_)
    for a, b in zip(sequential, stacked):
        assert a.final["test"] == b.final["test"]
        assert a.history[-1]["train_loss"] == pytest.approx(b.history[-1]["train_loss"], rel=1e-5)


def test_a_compiled_ensemble_trains_as_the_eager_one():
    eager = fit_ensemble(_members()[:2], BASE, losses.build("ce"), [weighting.build("erm")] * 2,
                         optim.build("sgd", lr=0.05), seeds=SEEDS[:2], epochs=1)
    compiled = fit_ensemble(_members()[:2], BASE, losses.build("ce"), [weighting.build("erm")] * 2,
                            optim.build("sgd", lr=0.05), seeds=SEEDS[:2], epochs=1, compile=True)
    for a, b in zip(eager, compiled):
        assert a.history[-1]["train_loss"] == pytest.approx(b.history[-1]["train_loss"], rel=1e-4)
        assert abs(a.final["test"]["acc"] - b.final["test"]["acc"]) <= 0.01


def test_what_a_member_axis_cannot_serve_is_refused_by_the_loop_too():
    with pytest.raises(EnsembleUnsupported, match="diagnostics"):
        fit_members(Stacked(_members(), "cpu"), BASE, losses.build("ce"), [weighting.build("erm")] * 3,
                    optim.build("sgd"), seeds=SEEDS, epochs=1, probe=lambda model, train, pipeline: {})
    frozen = _members()
    for net in frozen:
        next(net.parameters()).requires_grad_(False)
    with pytest.raises(EnsembleUnsupported, match="frozen"):
        Stacked(frozen, "cpu")


@pytest.mark.parametrize("name", weighting.names())
def test_a_member_weighting_weighs_as_each_member_alone(name):
    """The member-axis weighting (vmapped step, or one flat call for static per-example schemes) gives
    each member the weights of its own scheme called alone."""
    from shiftkit.members import MemberWeighting

    schemes = [weighting.build(name, **STATS) for _ in SEEDS]
    alone = [weighting.build(name, **STATS) for _ in SEEDS]
    members = MemberWeighting(schemes)
    members.train()
    members.start_epoch(0)
    for scheme in alone:
        scheme.train()
        scheme.start_epoch(0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        losses = torch.rand(len(SEEDS), 16, generator=gen)
        y = torch.randint(0, 2, (len(SEEDS), 16), generator=gen)
        g = 2 * y + torch.randint(0, 2, (len(SEEDS), 16), generator=gen)
        w = members.weights(losses, y, g)
        for s, scheme in enumerate(alone):
            torch.testing.assert_close(w[s], scheme.weights(losses[s], y[s], g[s]))
