"""Checkpoint and resume for vectorized ensembles (docs/RUNS.md): an ensemble stopped mid-way
and started again finishes with exactly the metrics of one never interrupted; its one checkpoint covers a
fixed set of members and goes once they have all finished (unless kept)."""

import json
from pathlib import Path

import pytest
import torch

from shiftkit import data, losses, models, optim, sampling, weighting
from shiftkit.checkpoint import ENSEMBLE_FILE, MembersCheckpoint
from shiftkit.config import compose
from shiftkit.data.pipeline import Pipeline
from shiftkit.ensemble import fit_ensemble
from shiftkit.runner import run_ensemble

from helpers import with_attribute

SEEDS = [0, 1, 2]
COMMON = ["train.epochs=6", "train.eval_every=1", "train.batch_size=64", "model.width=16", "weighting=group_dro",
          "sampler=resample", "train.select=best:balanced_acc", "checkpoint.interval=0", "device=cpu",
          "ensemble=true"]


class Crash(Exception):
    pass


def _cfgs(out: Path, seeds=SEEDS, *extra):
    return [compose([*COMMON, *extra, f"seed={s}", f"out={out}"]) for s in seeds]


def _crash_at(epoch: int):
    def on_eval(record):
        if record["epoch"] == epoch:
            raise Crash

    return on_eval


def _folder(record) -> Path:
    return Path(record["run_dir"])


def test_an_ensemble_stopped_mid_way_resumes_and_finishes_as_never_interrupted(tmp_path):
    reference = run_ensemble(_cfgs(tmp_path / "reference"))
    cfgs = _cfgs(tmp_path / "resumed")
    with pytest.raises(Crash):  # epoch 4's checkpoint is not written: the crash comes first
        run_ensemble(cfgs, on_eval=_crash_at(4))
    first = Path(reference[0]["run_dir"].replace(str(tmp_path / "reference"), str(tmp_path / "resumed")))
    saved = torch.load(first / ENSEMBLE_FILE, weights_only=False)
    assert saved["epoch"] == 3 and len(saved["members"]) == 3 and saved["seeds"] == SEEDS
    assert not list((tmp_path / "resumed").rglob("done"))
    seen = []
    records = run_ensemble(cfgs, on_eval=seen.append)
    assert sorted({r["epoch"] for r in seen}) == [4, 5, 6]  # the resumed run trains only the epochs left
    for r, ref in zip(records, reference):
        assert r["resumed_from_epoch"] == 3 and "resumed_from_epoch" not in ref
        for key in ("final", "selected", "selected_epoch", "steps"):
            assert r[key] == ref[key], key
        assert (_folder(r) / "metrics.jsonl").read_text() == (_folder(ref) / "metrics.jsonl").read_text()
        assert [json.loads(line)["epoch"] for line in (_folder(r) / "metrics.jsonl").read_text().splitlines()] \
            == [1, 2, 3, 4, 5, 6]
    assert not (first / ENSEMBLE_FILE).exists()  # removed once every member finished


def test_a_checkpoint_of_other_members_is_ignored_and_the_ensemble_starts_over(tmp_path):
    with pytest.raises(Crash):
        run_ensemble(_cfgs(tmp_path / "ens", SEEDS[:2]), on_eval=_crash_at(4))
    (stale,) = (tmp_path / "ens").rglob(ENSEMBLE_FILE)
    assert torch.load(stale, weights_only=False)["epoch"] == 3
    seen = []
    records = run_ensemble(_cfgs(tmp_path / "ens"), on_eval=seen.append)  # seeds 0, 1, 2: not the saved 0, 1
    assert sorted({r["epoch"] for r in seen}) == [1, 2, 3, 4, 5, 6]
    assert all("resumed_from_epoch" not in r for r in records)
    reference = run_ensemble(_cfgs(tmp_path / "reference"))
    for r, ref in zip(records, reference):
        assert r["final"] == ref["final"] and r["selected"] == ref["selected"]
    assert not stale.exists()
    # The members are compared as run directories, in order.
    ck = MembersCheckpoint(tmp_path / "ck.pt", ["a", "b"])
    ck.save({"epoch": 1})
    assert MembersCheckpoint(ck.path, ["a", "b"]).load()["epoch"] == 1
    assert MembersCheckpoint(ck.path, ["a"]).load() is None and not ck.path.exists()


@pytest.mark.parametrize("keep", [False, True])
def test_the_checkpoint_goes_after_success_unless_kept(tmp_path, keep):
    records = run_ensemble(_cfgs(tmp_path, SEEDS[:2], f"checkpoint.keep={str(keep).lower()}"))
    files = list(tmp_path.rglob(ENSEMBLE_FILE))
    assert all((_folder(r) / "done").exists() for r in records)
    if keep:
        (kept,) = files
        assert kept.parent == _folder(records[0])
        saved = torch.load(kept, weights_only=False)
        assert saved["epoch"] == 5 and saved["members"] == [
            _folder(r).relative_to(tmp_path).as_posix() for r in records
        ]
    else:
        assert files == []


def test_fit_ensemble_resumes_augmentation_balanced_batches_and_adam_exactly(tmp_path):
    base = with_attribute(data.build("digits_binary"))
    splits = data.Splits(base.train, base.val, base.test, pipeline=Pipeline(crop_padding=1, flip=True))
    stats = splits.statistics()

    def fit(checkpoint=None, crash_at=None):
        members = []
        for s in SEEDS:
            torch.manual_seed(s)
            members.append(models.build("mlp", **stats, width=16))

        def on_eval(s, record):
            if record["epoch"] == crash_at:
                raise Crash

        results = fit_ensemble(
            members, splits, losses.build("ce", **stats), [weighting.build("group_dro", **stats) for _ in SEEDS],
            optim.build("adam", lr=1e-3, schedule="multistep", milestones=[3]),
            samplers=[sampling.build("balanced", **stats) for _ in SEEDS], seeds=SEEDS, epochs=5, batch_size=64,
            eval_every=1, select="best:worst_group_acc", on_eval=on_eval, checkpoint=checkpoint,
        )
        return results, members

    reference, ref_members = fit()
    with pytest.raises(Crash):
        fit(MembersCheckpoint(tmp_path / ENSEMBLE_FILE, ["m"], every=1), crash_at=3)
    resumed = MembersCheckpoint(tmp_path / ENSEMBLE_FILE, ["m"])
    assert resumed.load()["epoch"] == 2
    results, members = fit(resumed)
    for r, ref, m, ref_m in zip(results, reference, members, ref_members):
        assert r.history == ref.history and r.selected_epoch == ref.selected_epoch and r.steps == ref.steps
        for a, b in zip(m.state_dict().values(), ref_m.state_dict().values()):
            assert torch.equal(a, b)
