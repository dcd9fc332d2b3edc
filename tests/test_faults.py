"""Faults a results table must survive: a run that diverged, a checkpoint saved from broken weights or planted
by someone else, damaged run directories, files others cannot read, signals from a scheduler, and writes
that fail (docs/RUNS.md, "A run that fails" and "Signals, damaged files, full disks"). Each test is a case
of that list; none of them is a run that could enter ``shiftkit report`` as a result."""

from __future__ import annotations

import json
import os
import pickle
import resource
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from shiftkit import data, losses, models, optim, weighting
from shiftkit.checkpoint import ENSEMBLE_FILE, Checkpoint
from shiftkit.checkpoint import FILE as CHECKPOINT
from shiftkit.cli import main
from shiftkit.config import compose
from shiftkit.divergence import Diverged, NonFiniteLoss, Tally, Watch
from shiftkit.errors import ShiftkitError
from shiftkit.runner import run, run_dir
from shiftkit.train import fit

FAST = ["train.epochs=6", "train.eval_every=2", "device=cpu", "checkpoint.interval=0"]


def _folder(overrides):
    return run_dir(OmegaConf.to_container(compose(overrides), resolve=True))


def _shiftkit(*args, limit_bytes=None, **kwargs):
    """A real ``shiftkit`` process; ``limit_bytes`` caps the size of any file it writes (``ulimit -f``)."""

    def cap():
        if limit_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    exe = Path(sys.executable).parent / "shiftkit"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([str(exe), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=cap, text=True, **kwargs)


# ------------------------------------------------------------------------- 1. a diverged run is no result


def test_an_exploding_loss_fails_the_run_like_a_nan_run(tmp_path, capsys):
    out = tmp_path / "r"
    code = main(["train", "optim.lr=1e6", "model.width=64", "train.epochs=30", "device=cpu", f"out={out}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0, err
    assert err.startswith("shiftkit: error: the training loss diverged at step ") and "train.divergence" in err
    (record,) = [json.loads(p.read_text()) for p in out.rglob("run.json")]
    assert record["status"] == "failed" and "diverged at step" in record["error"]
    assert not list(out.rglob("done"))
    assert main(["report", str(out)]) == 2  # nothing there is a result
    assert "no finished runs" in capsys.readouterr().err


def test_the_divergence_rule_in_closed_form():
    watch = Watch(factor=10.0)
    first = Tally(first_step=0)
    first.add(torch.tensor(0.5), torch.tensor(2.0), 4)  # L0 = 0.5: the threshold is 10 * max(1, 0.5) = 10
    assert watch.check(first, 0, [torch.ones(2)]) == [0.5] and watch.reference == [0.5]
    calm = Tally(first_step=1, objectives=[torch.tensor(9.0)], losses=[torch.tensor(36.0)], sizes=[4])
    assert watch.check(calm, 1, [torch.ones(2)]) == [9.0]  # a mean of 9 <= 10
    wild = Tally(first_step=2, objectives=[torch.tensor(1.0), torch.tensor(30.0)],
                 losses=[torch.tensor(4.0), torch.tensor(120.0)], sizes=[4, 4])
    with pytest.raises(Diverged, match=r"diverged at step 3 \(epoch 3\): its mean 15.5 .* 10 times max\(1, its first"):
        watch.check(wild, 2, [torch.ones(2)])  # mean (1 + 30) / 2 = 15.5 > 10; step 3 is the first above
    assert Watch(factor=0).check(wild, 2, [torch.ones(2)]) == [15.5]  # 0 turns the rule off
    broken = Tally(first_step=4, objectives=[torch.tensor(1.0)], losses=[torch.tensor(4.0)], sizes=[4])
    with pytest.raises(NonFiniteLoss, match=r"parameters became non-finite by step 4 \(epoch 5\)"):
        watch.check(broken, 4, [torch.tensor([1.0, float("nan")])])


class NanGradientAt(torch.nn.Module):
    """Cross-entropy whose gradient turns NaN at one step while its value stays finite: weights break
    silently, as an overflowing gradient breaks them."""

    def __init__(self, step: int):
        super().__init__()
        self.inner, self.at, self.calls = losses.build("ce"), step, 0

    def forward(self, logits, y, g=None):
        if self.training and torch.is_grad_enabled():
            self.calls += 1
            if self.calls == self.at + 1:
                logits.register_hook(lambda grad: grad * float("nan"))
        return self.inner(logits, y, g)


def _breaking_fit(tmp_path, at_step, interval=0.0):
    splits = data.build("digits_binary")
    torch.manual_seed(0)
    model = models.build("mlp", width=16, **splits.statistics())
    ck = Checkpoint(tmp_path / CHECKPOINT, every=1, interval=interval)
    records = []
    with pytest.raises(NonFiniteLoss) as failure:
        fit(model, splits, NanGradientAt(at_step), weighting.build("erm"), optim.build("sgd", lr=0.1), epochs=6,
            batch_size=64, checkpoint=ck, on_eval=records.append)
    return failure.value, Checkpoint(ck.path).load(), records


def test_weights_broken_by_the_last_step_of_an_epoch_fail_it_and_the_kept_checkpoint_is_good(tmp_path):
    # 2 steps per epoch (116 examples): step 5 is the last of epoch 3, so its objective was still finite
    failure, state, records = _breaking_fit(tmp_path, at_step=5)
    assert "by step 5 (epoch 3)" in str(failure)
    assert state["epoch"] == 2 and all(v.isfinite().all() for v in state["model"].values())
    assert [r["epoch"] for r in records] == [1, 2]  # no evaluation of the broken weights


def test_a_save_inside_an_epoch_never_stores_broken_weights(tmp_path):
    failure, state, _ = _breaking_fit(tmp_path, at_step=2, interval=1e-9)  # a save is due after every step
    assert failure.step <= 3
    assert state["step"] <= 3 and all(v.isfinite().all() for v in state["model"].values())


def test_a_loss_non_finite_before_any_update_names_the_loss_settings_not_the_learning_rate(tmp_path, capsys):
    assert main(["train", "loss=poly", "loss.beta=1000", "train.epochs=2", "device=cpu", f"out={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "non-finite at step 0 (epoch 1)" in err and "look at loss.beta=1000" in err
    assert "learning rate is not the cause" in err


def test_a_diverging_ensemble_member_names_its_seed_and_every_member_records_the_failure(tmp_path, capsys):
    code = main(["train", "-m", "seed=0,1", "ensemble=true", "optim.lr=1e6", "train.epochs=5", "device=cpu",
                 f"out={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2 and "of seed 0 diverged" in err
    records = [json.loads(p.read_text()) for p in tmp_path.rglob("run.json")]
    assert len(records) == 2 and all(r["status"] == "failed" for r in records)
    assert not list(tmp_path.rglob("done"))


# --------------------------------------------------------------------------- 3. checkpoints load safely


class Payload:
    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _resume_from(tmp_path, write) -> str:
    overrides = [*FAST, f"out={tmp_path / 'r'}"]
    folder = _folder(overrides)
    folder.mkdir(parents=True)
    write(folder / CHECKPOINT)
    with pytest.raises(ShiftkitError) as refused:
        run(compose(overrides))
    assert not (folder / "done").exists()
    return str(refused.value)


def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    payload = Payload()
    payload.marker = tmp_path / "pwned"
    message = _resume_from(tmp_path, lambda path: torch.save({"epoch": 1, "evil": payload}, path))
    assert "does not fit this run (it cannot be read as one: UnpicklingError" in message
    assert "delete it to start the run over" in message and not payload.marker.exists()


@pytest.mark.parametrize("content, expected", [
    (b"", "does not fit this run (it cannot be read as one"),
    (b"PK\x03\x04 not a zip", "does not fit this run (it cannot be read as one"),
    (pickle.dumps({"epoch": 1}, protocol=2), "does not fit this run (it cannot be read as one"),
    ("list", "does not fit this run (it holds a list"),
    ("partial", "does not fit this run (KeyError"),
    ("members", "does not fit this run (KeyError"),
])
def test_a_checkpoint_that_is_empty_foreign_or_of_another_run_is_one_error(tmp_path, content, expected):
    states = {"list": [1, 2], "partial": {"epoch": 3}, "members": {"members": ["x"], "epoch": 1, "rng": {}}}

    def write(path):
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            torch.save(states[content], path)

    message = _resume_from(tmp_path, write)
    assert expected in message and "\n" not in message


def test_an_ensemble_checkpoint_of_another_kind_is_one_error(tmp_path, capsys):
    overrides = ["seed=0,1", "ensemble=true", *FAST, f"out={tmp_path}"]
    folder = _folder([o.replace("seed=0,1", "seed=0") for o in overrides])
    folder.mkdir(parents=True)
    torch.save({"members": [f"{folder.relative_to(tmp_path).parent}/x"], "epoch": 1}, folder / ENSEMBLE_FILE)
    torch.save("nonsense", folder / ENSEMBLE_FILE)
    assert main(["train", "-m", *overrides]) == 2
    err = capsys.readouterr().err
    assert "does not fit this run" in err and "Traceback" not in err


def test_checkpoints_of_the_previous_format_still_resume(tmp_path):
    """Earlier versions stored NumPy's RNG state as an array (and no divergence reference): that one type
    is allowed on load, and such a checkpoint resumes to the uninterrupted result."""
    import numpy as np

    splits = data.build("digits_binary")

    def train(checkpoint=None):
        torch.manual_seed(0)
        model = models.build("mlp", **splits.statistics())
        return fit(model, splits, losses.build("ce"), weighting.build("erm"), optim.build("sgd"), epochs=3,
                   checkpoint=checkpoint)

    reference = train()
    ck = Checkpoint(tmp_path / CHECKPOINT, every=1)
    train(ck)  # leaves the checkpoint of epoch 2
    state = Checkpoint(ck.path).load()
    kind, keys, pos, has_gauss, cached = state["rng"]["numpy"]
    state["rng"]["numpy"] = (kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached)
    del state["divergence"]
    torch.save(state, ck.path)
    earlier = Checkpoint(ck.path)
    assert earlier.load()["epoch"] == 2
    resumed = train(earlier)
    assert resumed.final == reference.final and resumed.history == reference.history


# ------------------------------------------------------------- 4. one damaged run never stops a sweep


SWEEP = ["seed=0,1", *FAST]


def _sweep(tmp_path, capsys):
    assert main(["train", "-m", *SWEEP, f"out={tmp_path}"]) == 0
    capsys.readouterr()
    folders = sorted(p.parent for p in tmp_path.rglob("done"))
    assert len(folders) == 2
    return folders, [json.loads((f / "run.json").read_text()) for f in folders]


@pytest.mark.parametrize("damage", ["truncate", "delete", "list", "string", "metrics-cut", "metrics-edited"])
def test_a_damaged_finished_run_is_trained_again_and_the_sweep_goes_on(tmp_path, capsys, damage):
    folders, before = _sweep(tmp_path, capsys)
    damaged = folders[0]
    run_json, metrics = damaged / "run.json", damaged / "metrics.jsonl"
    text = metrics.read_text()
    {
        "truncate": lambda: run_json.write_text(run_json.read_text()[:100]),
        "delete": lambda: run_json.unlink(),
        "list": lambda: run_json.write_text("[1, 2]"),
        "string": lambda: run_json.write_text('"done"'),
        "metrics-cut": lambda: metrics.write_text(text[: len(text) // 2]),
        "metrics-edited": lambda: metrics.write_text(text.replace('"epoch": 2', '"epoch": 3')),
    }[damage]()
    assert main(["train", "-m", *SWEEP, f"out={tmp_path}"]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.startswith("shiftkit: warning:")]
    assert len(warnings) == 1 and str(damaged) in warnings[0] and "trained again" in warnings[0]
    after = [json.loads((f / "run.json").read_text()) for f in folders]
    for old, new in zip(before, after):
        for key in ("final", "selected", "selected_epoch", "steps"):
            assert old[key] == new[key]
    assert metrics.read_text() == text
    assert "1 of 2 runs were already done" in captured.err


def test_report_skips_a_damaged_run_with_one_warning_and_prints_the_rest(tmp_path, capsys):
    folders, _ = _sweep(tmp_path, capsys)
    (folders[1] / "run.json").write_text("{")
    assert main(["report", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.startswith("shiftkit: warning:")]
    assert len(warnings) == 1 and str(folders[1]) in warnings[0]
    assert "ce+erm" in captured.out and "Traceback" not in captured.err


def test_report_on_a_folder_it_cannot_write_prints_its_tables_and_warns(tmp_path, capsys):
    _sweep(tmp_path, capsys)
    proc = _shiftkit("report", str(tmp_path), limit_bytes=0)  # any write fails: a read-only results folder
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "ce+erm" in out and "Traceback" not in err
    assert err.strip().splitlines() == [line for line in err.strip().splitlines() if line.startswith("shiftkit: warning:")]
    assert "the report was printed but not saved: cannot write" in err
    assert not (tmp_path / "report.json").exists()
    assert not list(tmp_path.glob(".*tmp-*"))


# --------------------------------------------------------------------- 5. files others can read, no leftovers


def test_result_files_follow_the_umask_and_leave_no_temporary_files(tmp_path, capsys):
    old = os.umask(0o022)
    try:
        folders, _ = _sweep(tmp_path, capsys)
        assert main(["report", str(tmp_path)]) == 0
        assert main(["train", "-m", "seed=2,3", "ensemble=true", "checkpoint.keep=true", *FAST, f"out={tmp_path}"]) == 0
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    files = [*(f / n for f in folders for n in ("run.json", "done", "metrics.jsonl")), tmp_path / "report.json",
             tmp_path / "report.png", *tmp_path.rglob(ENSEMBLE_FILE)]
    assert len(list(tmp_path.rglob(ENSEMBLE_FILE))) == 1
    assert {mode(p) for p in files} == {0o644}
    assert not [p for p in tmp_path.rglob(".*") if p.is_file()]


def test_temporary_files_of_an_interrupted_save_are_removed_at_the_next_start(tmp_path, capsys):
    overrides = [*FAST, f"out={tmp_path}"]
    folder = _folder(overrides)
    folder.mkdir(parents=True)
    stale = [folder / ".checkpoint.pt.tmp-0123abcd", folder / ".run.json.tmp-deadbeef", folder / ".run.json.k3j_x9ab"]
    for path in stale:
        path.write_text("half a file")
    keep = folder / "notes.txt"
    keep.write_text("the user's")
    assert main(["train", *overrides]) == 0
    assert not any(p.exists() for p in stale) and keep.exists()


def test_a_finished_run_keeps_no_stale_checkpoint(tmp_path, capsys):
    folders, _ = _sweep(tmp_path, capsys)
    (folders[0] / CHECKPOINT).write_bytes(b"left by a kill between done and its removal")
    (folders[1] / ENSEMBLE_FILE).write_bytes(b"an ensemble's, from before its first member finished alone")
    assert main(["train", "-m", *SWEEP, f"out={tmp_path}"]) == 0
    assert not (folders[0] / CHECKPOINT).exists() and not (folders[1] / ENSEMBLE_FILE).exists()


# ---------------------------------------------------------------------------------------------- 6. signals


LONG = ["train.epochs=300", "train.eval_every=20", "weighting=group_dro", "seed=2", "device=cpu", "checkpoint.interval=0"]


def _signal_after_evaluations(cmd, folders, signum, evaluations=3):
    proc = _shiftkit(*cmd)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        lines = [(f / "metrics.jsonl").read_text().count("\n") if (f / "metrics.jsonl").exists() else 0 for f in folders]
        if min(lines) >= evaluations and any((folders[0] / name).exists() for name in (CHECKPOINT, ENSEMBLE_FILE)):
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before the signal"
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, err


def test_sigterm_ends_a_run_as_interrupted_and_the_same_command_resumes_it(tmp_path):
    reference = run(compose([*LONG, f"out={tmp_path / 'reference'}"]))
    out = tmp_path / "stopped"
    cmd = ["train", *LONG, f"out={out}"]
    folder = _folder(cmd[1:])
    code, err = _signal_after_evaluations(cmd, [folder], signal.SIGTERM)
    assert code == 143 and err.strip() == "shiftkit: interrupted (stopped by SIGTERM); the same command resumes unfinished runs"
    record = json.loads((folder / "run.json").read_text())
    assert record["status"] == "interrupted" and record["checkpoint"] == CHECKPOINT
    proc = _shiftkit(*cmd)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    record = json.loads((folder / "run.json").read_text())
    assert 0 < record["resumed_from_epoch"] < 300
    for key in ("final", "selected", "selected_epoch", "steps"):
        assert record[key] == reference[key], key


def test_ensemble_members_record_an_interruption(tmp_path):
    cmd = ["train", "-m", "seed=0,1", "ensemble=true", *LONG[:3], "device=cpu", "checkpoint.interval=0",
           f"out={tmp_path}"]
    folders = [_folder([f"seed={s}", *LONG[:3], "device=cpu", f"out={tmp_path}"]) for s in (0, 1)]
    code, err = _signal_after_evaluations(cmd, folders, signal.SIGTERM)
    assert code == 143 and "Traceback" not in err
    records = [json.loads((f / "run.json").read_text()) for f in folders]
    assert [r["status"] for r in records] == ["interrupted", "interrupted"]
    assert records[0]["checkpoint"] == ENSEMBLE_FILE


@pytest.mark.parametrize("delay", [0.3, 0.6, 0.9])
def test_ctrl_c_in_the_first_second_prints_one_line_and_no_traceback(tmp_path, delay):
    proc = _shiftkit("train", "train.epochs=2", "device=cpu", f"out={tmp_path}")
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.fail("the run finished before the signal")
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert err.strip() == "shiftkit: interrupted; the same command resumes unfinished runs"


# ------------------------------------------------------------------------------------------ 7. I/O failures


def test_a_full_disk_is_one_line_naming_the_file_and_the_failure_is_recorded(tmp_path):
    proc = _shiftkit("train", *FAST, "model.width=256", f"out={tmp_path}", limit_bytes=60_000)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "Traceback" not in err, err
    (line,) = err.strip().splitlines()
    assert line.startswith("shiftkit: error: cannot write ") and CHECKPOINT in line and "File too large" in line
    (record,) = [json.loads(p.read_text()) for p in tmp_path.rglob("run.json")]
    assert record["status"] == "failed" and "cannot write" in record["error"]
    assert not list(tmp_path.rglob("done")) and not list(tmp_path.rglob(".*tmp-*"))


def test_run_json_is_strict_json(tmp_path):
    record = run(compose([*FAST, f"out={tmp_path}"]))
    text = (Path(record["run_dir"]) / "run.json").read_text()
    json.loads(text, parse_constant=lambda name: pytest.fail(f"run.json holds {name}"))
    assert record["metrics_sha256"]


def test_a_signal_during_a_torch_save_is_delivered_after_it_never_as_a_failed_write(tmp_path):
    """A SIGTERM that arrives while a checkpoint is written ends the process as interrupted (the handler
    installed before runs once the write is done), and the file is whole: never a 'cannot write' error."""
    import os

    import torch

    from shiftkit import files

    class Stop(Exception):
        pass

    def handler(signum, frame):
        raise Stop

    class Loud:  # pickled by torch.save: sends the signal from inside the save
        def __reduce__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            return (dict, ())

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        with pytest.raises(Stop):
            files.save_torch({"a": torch.ones(3), "b": Loud()}, tmp_path / "x.pt")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert torch.load(tmp_path / "x.pt", weights_only=False)["a"].tolist() == [1.0, 1.0, 1.0]
