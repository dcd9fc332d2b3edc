"""AutoBalance search runs checkpoint and resume (docs/RUNS.md): a search run stopped in its
search or in its retraining and started again with the same config finishes with exactly the run.json
metrics, α and metrics.jsonl of a run never interrupted, and a finished search is never redone."""

import dataclasses
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from shiftkit import data, losses, models, optim
from shiftkit.autobalance import search_and_retrain
from shiftkit.checkpoint import FILE as CHECKPOINT
from shiftkit.checkpoint import Checkpoint
from shiftkit.config import compose
from shiftkit.data.pipeline import Pipeline
from shiftkit.runner import run

from helpers import with_attribute


class Crash(Exception):
    pass


OVERRIDES = ["experiment=autobalance", "train.epochs=4", "train.eval_every=1", "train.select=best:balanced_acc",
             "search.start_epoch=1", "search.every=2", "search.batches=2", "search.retrain_epochs=4",
             "model.width=16", "device=cpu", "checkpoint.interval=0"]
#: What must not change when a run is stopped and resumed (train_seconds and search.seconds may).
KEYS = ("final", "selected", "selected_epoch", "steps", "alpha", "alpha_history")


def _run(out: Path, crash_at=None, seen=None):
    """One run of the config into ``out``; raises :class:`Crash` from on_eval at (phase, epoch)."""

    def on_eval(record):
        if seen is not None:
            seen.append((record["phase"], record["epoch"]))
        if (record["phase"], record["epoch"]) == crash_at:
            raise Crash

    return run(compose([*OVERRIDES, f"out={out}"]), on_eval=on_eval)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    record = _run(tmp_path_factory.mktemp("reference"))
    return record, (Path(record["run_dir"]) / "metrics.jsonl").read_text()


@pytest.mark.parametrize("crashes, resumed", [
    ([("search", 3)], ("search", 2)),            # mid-search: the search loop and its outer update resume
    ([("retrain", 1)], ("retrain", 0)),          # at the phase boundary: only the search's result is kept
    ([("search", 2), ("retrain", 3)], ("retrain", 2)),  # stopped in both phases, one after the other
])
def test_a_search_run_stopped_then_rerun_matches_one_never_interrupted(tmp_path, reference, crashes, resumed):
    want, want_lines = reference
    for crash in crashes:
        with pytest.raises(Crash):
            _run(tmp_path, crash)
    seen = []
    record = _run(tmp_path, seen=seen)
    folder = Path(record["run_dir"])
    phase, epoch = resumed
    assert (record["resumed_from_phase"], record["resumed_from_epoch"]) == resumed
    # Only what was left is trained again: a finished search is never redone.
    expected = [("search", e) for e in range(epoch + 1, 5)] if phase == "search" else []
    expected += [("retrain", e) for e in range((epoch if phase == "retrain" else 0) + 1, 5)]
    assert seen == expected
    for key in KEYS:
        assert record[key] == want[key], key
    for key in ("final", "selected"):
        assert record["search"][key] == want["search"][key]
    assert (folder / "metrics.jsonl").read_text() == want_lines
    assert [json.loads(line)["phase"] for line in want_lines.splitlines()] == ["search"] * 4 + ["retrain"] * 4
    assert (folder / "done").exists() and not (folder / CHECKPOINT).exists()


def test_a_search_run_with_checkpoints_off_starts_over(tmp_path, reference):
    overrides = [*OVERRIDES, "checkpoint.every=0", f"out={tmp_path}"]

    def crash(record):
        if record["phase"] == "retrain":
            raise Crash

    with pytest.raises(Crash):
        run(compose(overrides), on_eval=crash)
    assert not list(tmp_path.rglob(CHECKPOINT))
    record = run(compose(overrides))
    assert "resumed_from_epoch" not in record and record["alpha"] == reference[0]["alpha"]


# ---- search_and_retrain itself, with augmentation (the search's own augmentation generator resumes) --------

def _image_splits():
    base = data.build("digits_binary")

    def image(s):
        return replace(s, x=(s.x.view(-1, 1, 8, 8) * 255 / s.x.max()).to(torch.uint8))

    return with_attribute(data.Splits(image(base.train), image(base.val), image(base.test), info=base.info,
                                      pipeline=Pipeline(crop_padding=1, flip=True)))


def _search(checkpoint=None, crash_at=None):
    splits = _image_splits()
    stats = splits.statistics()
    phase = {"name": "search"}

    def on_eval(record):
        if (phase["name"], record["epoch"]) == crash_at:
            raise Crash
        if phase["name"] == "search" and record["epoch"] == 3:
            phase["name"] = "retrain"

    return search_and_retrain(
        lambda: models.build("linear", **stats), splits, losses.build("autobalance", **stats),
        optim.build("sgd", lr=0.05, momentum=0.9), search_epochs=3, retrain_epochs=3, batch_size=32, seed=5,
        search_options=dict(start_epoch=0, every=3, batches=2, step=0.1),
        fit_options=dict(select="best:balanced_acc", on_eval=on_eval), checkpoint=checkpoint,
    )


@pytest.mark.parametrize("crash_at", [("search", 2), ("retrain", 2)])
def test_search_and_retrain_resumes_exactly(tmp_path, crash_at):
    want = _search()
    with pytest.raises(Crash):
        _search(Checkpoint(tmp_path / CHECKPOINT), crash_at)
    ck = Checkpoint(tmp_path / CHECKPOINT)
    assert ck.load()["phase"] == crash_at[0] and ck.state["epoch"] == 1
    got = _search(ck)
    assert dataclasses.asdict(got.search) | {"seconds": 0} == dataclasses.asdict(want.search) | {"seconds": 0}
    assert dataclasses.asdict(got.retrain) | {"seconds": 0} == dataclasses.asdict(want.retrain) | {"seconds": 0}
    assert got.alpha == want.alpha and got.history == want.history
    updates = [h["updates"] for h in got.history]  # α moved in every epoch: the outer state was exercised
    assert updates == sorted(set(updates)) and got.history[0]["l"] != got.alpha["l"]
    for a, b in zip(got.model.state_dict().values(), want.model.state_dict().values()):
        assert torch.equal(a, b)


def test_a_search_stopped_inside_an_epoch_resumes_at_its_step(tmp_path, reference, monkeypatch):
    """Saved after every step (checkpoint.interval tiny), stopped after an outer update in the middle of a
    search epoch: the rerun continues at that batch, with the outer update's state of that moment."""
    from shiftkit.autobalance import AutoBalanceSearch

    want, want_lines = reference
    original, calls = AutoBalanceSearch.after_step, []

    def crashing(self, step):
        original(self, step)
        calls.append(step)
        if len(calls) == 8:  # the second step of the fourth search epoch (2 steps per epoch here)
            raise Crash

    overrides = [*OVERRIDES[:-1], "checkpoint.interval=1e-9", f"out={tmp_path}"]
    with monkeypatch.context() as patch:
        patch.setattr(AutoBalanceSearch, "after_step", crashing)
        with pytest.raises(Crash):
            run(compose(overrides))
    record = run(compose(overrides))
    assert (record["resumed_from_phase"], record["resumed_from_epoch"], record["resumed_from_batch"]) == ("search", 3, 1)
    for key in KEYS:
        assert record[key] == want[key], key
    assert (Path(record["run_dir"]) / "metrics.jsonl").read_text() == want_lines
