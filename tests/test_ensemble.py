"""Vectorized seeds: each ensemble member is the sequential run of its seed."""

import json

import pytest
import torch

from shiftkit import data, losses, models, optim, sampling, weighting
from shiftkit.config import compose
from shiftkit.data.pipeline import Pipeline
from shiftkit.ensemble import EnsembleUnsupported, fit_ensemble
from shiftkit.runner import run, run_ensemble
from shiftkit.train import fit

from helpers import with_attribute

SPLITS = with_attribute(data.build("digits_binary"))  # groups 2y + a: every weighting applies
STATS = SPLITS.statistics()
SEEDS = [0, 1, 2]


def _sequential_and_ensemble(splits, scheme, loss="poly", sampler="none", model="mlp", **train):
    settings = dict(epochs=6, batch_size=32, eval_every=3, **train)
    seq_nets, seq = [], []
    for s in SEEDS:
        torch.manual_seed(s)
        net = models.build(model, **STATS, width=32) if model == "mlp" else models.build(model, **STATS)
        seq.append(fit(net, splits, losses.build(loss, **STATS), weighting.build(scheme, **STATS),
                       optim.build("sgd", lr=0.05), sampler=sampling.build(sampler, **STATS), seed=s, **settings))
        seq_nets.append(net)
    members = []
    for s in SEEDS:
        torch.manual_seed(s)
        members.append(models.build(model, **STATS, width=32) if model == "mlp" else models.build(model, **STATS))
    ens = fit_ensemble(members, splits, losses.build(loss, **STATS), [weighting.build(scheme, **STATS) for _ in SEEDS],
                       optim.build("sgd", lr=0.05), samplers=[sampling.build(sampler, **STATS) for _ in SEEDS],
                       seeds=SEEDS, **settings)
    return seq_nets, seq, members, ens


def same_metrics(a: dict, b: dict) -> bool:
    """Equal counts-based metrics; the score-based ones (``ece``, ``auroc``) read the logits, which a member
    axis computes in another order, so they agree to float rounding."""
    from shiftkit.metrics import SCORE_METRICS

    rest = [k for k in a if k not in SCORE_METRICS]
    return [a[k] for k in rest] == [b[k] for k in rest] and set(a) == set(b) and all(
        (a[k] is None) == (b[k] is None) and (a[k] is None or a[k] == pytest.approx(b[k], abs=1e-6))
        for k in SCORE_METRICS if k in a)


@pytest.mark.parametrize("scheme", weighting.names())
def test_members_equal_their_sequential_runs(scheme):
    seq_nets, seq, members, ens = _sequential_and_ensemble(SPLITS, scheme)
    for s in range(len(SEEDS)):
        with torch.no_grad():
            assert torch.equal(seq_nets[s](SPLITS.test.x).argmax(1), members[s](SPLITS.test.x).argmax(1))
        assert same_metrics(seq[s].final["test"], ens[s].final["test"])
        for a, b in zip(seq[s].history, ens[s].history):
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4, abs=1e-6)


def test_members_with_augmentation_and_a_sampler_and_selection():
    splits = data.Splits(SPLITS.train, SPLITS.val, SPLITS.test, pipeline=Pipeline(crop_padding=1, flip=True))
    seq_nets, seq, members, ens = _sequential_and_ensemble(
        splits, "iw", loss="ce", sampler="balanced", select="best:balanced_acc"
    )
    for s in range(len(SEEDS)):
        assert seq[s].selected_epoch == ens[s].selected_epoch
        assert same_metrics(seq[s].selected["test"], ens[s].selected["test"])


def test_unsupported_ensembles_are_refused():
    with pytest.raises(EnsembleUnsupported, match="BatchNorm"):
        fit_ensemble([models.build("resnet32", input_shape=(1, 8, 8), num_classes=2) for _ in range(2)], SPLITS,
                     losses.build("ce"), [weighting.build("erm")] * 2, optim.build("sgd"), seeds=[0, 1], epochs=1)
    with pytest.raises(EnsembleUnsupported, match="different lengths"):
        _sequential_and_ensemble(SPLITS, "erm", sampler="undersample")


def test_each_member_writes_the_run_directory_of_its_sequential_run(tmp_path):
    common = ["train.epochs=4", "train.eval_every=2", "model.width=16", "device=cpu"]
    cfgs = [compose([*common, f"seed={s}", "ensemble=true", f"out={tmp_path / 'ens'}"]) for s in SEEDS]
    records = run_ensemble(cfgs)
    solo = [run(compose([*common, f"seed={s}", "ensemble=true", f"out={tmp_path / 'seq'}"])) for s in SEEDS]
    for r, q in zip(records, solo):
        assert r["config"]["seed"] == q["config"]["seed"] and r["ensemble_size"] == 3
        assert r["final"]["test"] == q["final"]["test"]
        lines = (tmp_path / "ens" / r["run_dir"].split("/ens/")[1] / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["epoch"] for line in lines] == [2, 4]
    assert all(r["skipped"] for r in run_ensemble(cfgs))  # finished members are skipped


@pytest.mark.parametrize("extra, message", [(["experiment=autobalance"], "AutoBalance search"),
                                            (["diagnostics.enabled=true"], "diagnostics")])
def test_runs_an_ensemble_cannot_reproduce_are_refused_before_training(tmp_path, extra, message):
    # An ensemble would train these as plain runs (no search, no probe) in the directories of the real ones.
    cfgs = [compose(["train.epochs=2", "model.width=8", "device=cpu", f"seed={s}", "ensemble=true", *extra,
                     f"out={tmp_path}"]) for s in SEEDS]
    with pytest.raises(EnsembleUnsupported, match=message):
        run_ensemble(cfgs)
    assert not list(tmp_path.iterdir())
