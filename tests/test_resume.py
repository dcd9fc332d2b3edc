"""Checkpoint and resume (docs/RUNS.md): a run stopped mid-way and started again finishes with
exactly the metrics of a run never interrupted; a failed run keeps its last good checkpoint and says why
in run.json; the same seed twice gives identical metrics."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from shiftkit import data, losses, models, optim, sampling, weighting
from shiftkit.checkpoint import FILE as CHECKPOINT
from shiftkit.checkpoint import Checkpoint
from shiftkit.config import compose
from shiftkit.data.pipeline import Pipeline
from shiftkit.errors import ShiftkitError
from shiftkit.runner import run, run_dir
from shiftkit.train import fit

from helpers import with_attribute


class Crash(Exception):
    pass


def _image_splits():
    """Digits as 1x8x8 uint8 images with crop and flip augmentation, and groups g = 2y + a."""
    base = data.build("digits_binary")

    def image(s):
        return replace(s, x=(s.x.view(-1, 1, 8, 8) * 255 / s.x.max()).to(torch.uint8))

    splits = data.Splits(image(base.train), image(base.val), image(base.test), info=base.info,
                         pipeline=Pipeline(crop_padding=1, flip=True))
    return with_attribute(splits)


CASES = {
    "group_dro+augment+best": dict(weighting=("group_dro", {"eta": 0.1}), sampler=("none", {}),
                                   select="best:worst_group_acc"),
    "drw+undersample": dict(weighting=("drw", {"start_epoch": 3}), sampler=("undersample", {}), select="last"),
    "rgd+resample+adam": dict(weighting=("rgd", {}), sampler=("resample", {}), select="best:balanced_acc",
                                 optim=("adam", {"lr": 1e-3})),
}


def _fit(case, checkpoint=None, crash_after=None):
    spec = CASES[case]
    splits = _image_splits()
    stats = splits.statistics()
    torch.manual_seed(0)
    model = models.build("cnn", **stats)
    name, opts = spec.get("optim", ("sgd", {"lr": 0.05}))
    records = []

    def on_eval(record):
        records.append(record)
        if crash_after is not None and record["epoch"] == crash_after:
            raise Crash

    result = fit(
        model, splits, losses.build("ce", **stats), weighting.build(spec["weighting"][0], **spec["weighting"][1], **stats),
        optim.build(name, **opts, schedule="multistep", milestones=[4]),
        sampler=sampling.build(spec["sampler"][0], **spec["sampler"][1], **stats),
        epochs=6, batch_size=64, eval_every=1, select=spec["select"], seed=3, on_eval=on_eval, checkpoint=checkpoint,
    )
    return result, model, records


@pytest.mark.parametrize("case", CASES)
def test_resume_from_a_checkpoint_finishes_exactly_as_never_interrupted(tmp_path, case):
    reference, ref_model, _ = _fit(case)
    ck = Checkpoint(tmp_path / "checkpoint.pt", every=1)
    with pytest.raises(Crash):
        _fit(case, ck, crash_after=4)  # epoch 4's checkpoint is not written: the crash comes first
    resumed = Checkpoint(tmp_path / "checkpoint.pt")
    assert resumed.load()["epoch"] == 3
    result, model, records = _fit(case, resumed)
    assert [r["epoch"] for r in records] == [4, 5, 6]
    assert result.final == reference.final and result.selected == reference.selected
    assert result.selected_epoch == reference.selected_epoch and result.steps == reference.steps
    assert result.history == reference.history
    for a, b in zip(model.state_dict().values(), ref_model.state_dict().values()):
        assert torch.equal(a, b)


def test_checkpoint_every_and_none():
    ck = Checkpoint(Path("unused"), every=2)
    assert [e for e in range(7) if ck.due(e, 7)] == [1, 3, 5]
    assert not any(Checkpoint(Path("unused"), every=0).due(e, 7) for e in range(7))
    for bad in ({"every": -1}, {"interval": -1.0}, {"interval": float("nan")}):
        with pytest.raises(ShiftkitError, match="checkpoint.every .* must be >= 0"):
            Checkpoint(Path("unused"), **bad)


def test_checkpoints_wait_for_their_interval(monkeypatch):
    clock = iter([0.0, 10.0, 59.0, 61.0, 100.0, 121.0])
    monkeypatch.setattr("shiftkit.checkpoint.time.monotonic", lambda: next(clock))
    ck = Checkpoint(Path("unused"), every=1, interval=60)  # starts at t = 0
    assert [ck.due(e, 9) for e in range(4)] == [False, False, True, True]  # t = 10, 59, 61, 100
    ck.last = 100.0
    assert not ck.due(4, 9)  # t = 121 - 100 < 60


def test_a_corrupt_checkpoint_is_refused_by_name(tmp_path):
    (tmp_path / "checkpoint.pt").write_text("not a checkpoint")
    with pytest.raises(ShiftkitError, match=r"checkpoint .* does not fit this run \(it cannot be read as one: .*"
                                            r"delete it to start the run over"):
        Checkpoint(tmp_path / "checkpoint.pt").load()


OVERRIDES = ["train.epochs=300", "train.eval_every=20", "weighting=group_dro", "train.select=best:balanced_acc",
             "seed=2", "device=cpu", "checkpoint.interval=0"]


def _shiftkit(*args, **kwargs):
    exe = Path(sys.executable).parent / "shiftkit"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([str(exe), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def test_sigkill_mid_run_then_the_same_command_gives_the_uninterrupted_metrics(tmp_path):
    reference = run(compose([*OVERRIDES, f"out={tmp_path / 'reference'}"]))
    out = tmp_path / "killed"
    cmd = ["train", *OVERRIDES, f"out={out}"]
    folder = run_dir({**json.loads(json.dumps(reference["config"])), "out": str(out)})
    proc = _shiftkit(*cmd)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        lines = (folder / "metrics.jsonl").read_text().count("\n") if (folder / "metrics.jsonl").exists() else 0
        if lines >= 3 and (folder / "checkpoint.pt").exists():
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (folder / "done").exists() and not (folder / "run.json").exists()
    proc = _shiftkit(*cmd)
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()
    record = json.loads((folder / "run.json").read_text())
    assert 0 < record["resumed_from_epoch"] < 300
    for key in ("final", "selected", "selected_epoch", "steps"):
        assert record[key] == reference[key], key
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == list(range(20, 301, 20))
    assert not (folder / "checkpoint.pt").exists()  # a finished run removes it (checkpoint.keep=false)


class NanFrom(weighting.Weighting):
    """ERM until ``epoch``, then NaN weights: a run that diverges mid-way, on cue."""

    def __init__(self, epoch: int):
        super().__init__()
        self.at, self.now = epoch, 0

    def start_epoch(self, epoch: int) -> None:
        self.now = epoch

    def weights(self, losses, y, g):
        return torch.full_like(losses, float("nan") if self.now >= self.at else 1.0)


def test_a_diverging_fit_stops_naming_the_step_and_keeps_its_last_good_checkpoint(tmp_path):
    splits = data.build("digits_binary")
    model = models.build("mlp", **splits.statistics())
    ck = Checkpoint(tmp_path / "checkpoint.pt")
    steps_per_epoch = -(-len(splits.train) // 64)
    with pytest.raises(ShiftkitError, match=rf"non-finite at step {3 * steps_per_epoch} \(epoch 4\)"):
        fit(model, splits, losses.build("ce"), NanFrom(3), optim.build("sgd", lr=0.1), epochs=6, checkpoint=ck)
    assert Checkpoint(ck.path).load()["epoch"] == 3


def test_a_failed_run_records_why_in_run_json_and_leaves_nothing_that_looks_finished(tmp_path):
    cfg = compose(["optim.lr=1e30", "train.epochs=5", f"out={tmp_path}", "device=cpu"])
    with pytest.raises(ShiftkitError, match=r"non-finite at step \d+ \(epoch \d+\)"):
        run(cfg)
    folder = run_dir(OmegaConf.to_container(cfg))
    record = json.loads((folder / "run.json").read_text())
    assert record["status"] == "failed" and "non-finite at step" in record["error"]
    assert record["checkpoint"] == (CHECKPOINT if (folder / CHECKPOINT).exists() else None)
    assert not (folder / "done").exists()


def test_same_seed_twice_gives_identical_metrics(tmp_path):
    overrides = ["train.epochs=15", "train.eval_every=5", "weighting=cvar", "sampler=resample", "device=cpu"]
    first = run(compose([*overrides, f"out={tmp_path / 'a'}"]))
    second = run(compose([*overrides, f"out={tmp_path / 'b'}"]))
    for key in ("final", "selected", "selected_epoch", "steps"):
        assert first[key] == second[key]
    read = [(Path(r["run_dir"]) / "metrics.jsonl").read_text() for r in (first, second)]
    assert read[0] == read[1]


def test_a_diverging_run_on_the_command_line_is_one_line_naming_the_step_and_exit_2(tmp_path, capsys):
    from shiftkit.cli import main

    assert main(["train", "optim.lr=1e30", "train.epochs=3", "device=cpu", f"out={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("shiftkit: error: the training loss became non-finite at step ")
    assert not list(tmp_path.rglob("done"))
    (record,) = [json.loads(p.read_text()) for p in tmp_path.rglob("run.json")]
    assert record["status"] == "failed"


def test_a_checkpoint_of_another_model_is_refused_by_name(tmp_path):
    splits = data.build("digits_binary")
    stats = splits.statistics()
    ck = Checkpoint(tmp_path / "checkpoint.pt", every=1)
    fit(models.build("mlp", width=16, **stats), splits, losses.build("ce"), weighting.build("erm"),
        optim.build("sgd", lr=0.1), epochs=3, checkpoint=ck)
    stale = Checkpoint(ck.path)
    stale.load()
    with pytest.raises(ShiftkitError, match=r"checkpoint .*checkpoint.pt does not fit this run \(RuntimeError: .*"
                                            r"delete it to start the run over"):
        fit(models.build("mlp", width=32, **stats), splits, losses.build("ce"), weighting.build("erm"),
            optim.build("sgd", lr=0.1), epochs=3, checkpoint=stale)


class CrashAtCall(weighting.Weighting):
    """Group DRO that raises at its ``at``-th call, once: a kill in the middle of an epoch."""

    def __init__(self, at: int, **stats):
        super().__init__()
        self.inner = weighting.build("group_dro", eta=0.5, **stats)
        self.calls, self.at = 0, at

    def weights(self, losses, y, g):
        self.calls += 1
        if self.calls == self.at:
            raise Crash
        return self.inner.weights(losses, y, g)


@pytest.mark.parametrize("augment", [False, True])
def test_a_run_stopped_inside_an_epoch_resumes_at_its_batch(tmp_path, augment):
    splits = _image_splits() if augment else data.build("digits_binary")
    stats = splits.statistics()

    def train(crash_at=None, ck=None):
        torch.manual_seed(0)
        model = models.build("cnn" if augment else "mlp", **stats)
        records = []
        result = fit(model, splits, losses.build("ce"), CrashAtCall(crash_at or 0, **stats),
                     optim.build("sgd", lr=0.05, schedule="multistep", milestones=[2]), sampler=sampling.build("resample"),
                     epochs=4, batch_size=25, select="best:balanced_acc", seed=1, on_eval=records.append, checkpoint=ck)
        return result, model, records

    reference, ref_model, _ = train()
    steps_per_epoch = -(-len(splits.train) // 25)
    ck = Checkpoint(tmp_path / "checkpoint.pt", every=1, interval=1e-9)  # saves after every step
    with pytest.raises(Crash):
        train(crash_at=steps_per_epoch + 3, ck=ck)  # the 3rd batch of the 2nd epoch
    resumed = Checkpoint(ck.path, every=1, interval=1e-9)
    state = resumed.load()
    assert (state["epoch"], state["batch"], state["step"]) == (1, 2, steps_per_epoch + 2)
    result, model, records = train(ck=resumed)
    assert [r["epoch"] for r in records] == [2, 3, 4]
    assert result.final == reference.final and result.selected == reference.selected
    assert result.history == reference.history and result.steps == reference.steps
    for a, b in zip(model.state_dict().values(), ref_model.state_dict().values()):
        assert torch.equal(a, b)
