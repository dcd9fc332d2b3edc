"""Chaos (docs/RUNS.md, "Signals, damaged files, full disks"): a sweep killed with SIGKILL again and again, at
random moments and at aimed ones, and rerun after each kill, ends exactly as the same sweep run once: the
same run directories, byte-identical ``metrics.jsonl``, the same results in ``run.json``, nothing left over
(no temporary file, no checkpoint) and every file as readable as the umask allows.

The aimed moments are the windows where a kill is most likely to leave a half-made state: inside the write
of a checkpoint, after it but before its rename, after ``run.json``'s write but before its rename, between
``run.json`` and ``done``, after ``done`` but before the checkpoint is removed, and while a resumed run
rewrites ``metrics.jsonl`` from its checkpoint. The random moments are drawn (from a seeded
``random.Random``) from a run's duration after the process has started training, so they land inside steps
and inside saves (each kill is classified by what it left on disk).

Every killed process is a fork of the test process that runs the command line (:func:`shiftkit.cli.main`
with the same arguments as ``shiftkit train``), so that it starts in milliseconds where a fresh ``shiftkit``
process spends seconds importing torch and scikit-learn (``tests/test_resume.py`` kills a real ``shiftkit``
process once). A kill is a real SIGKILL: nothing runs in the process after it. An aimed kill is sent by the
process to itself, from a hook on the call that opens the window (``os.replace``, the checkpoint's writes,
the opening of a resumed ``metrics.jsonl``).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import stat
import sys
import time
import traceback
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

from shiftkit import cli, files, rundir
from shiftkit.checkpoint import ENSEMBLE_FILE, Checkpoint
from shiftkit.checkpoint import FILE as CHECKPOINT_FILE

UMASK = 0o002  # group-writable: a mode written as a constant (0o644, 0o600) would show
CHILD_TIMEOUT = 60.0  # seconds any one process may take before the test fails (it never should)

#: 4 runs (2 seeds x 2 losses) of ~1 s each on a 2-core machine; a checkpoint every 10 ms of training, so
#: that most saves happen inside an epoch (of 2 steps), some at its end.
SWEEP = ["-m", "seed=0,1", "loss=ce,poly", "train.epochs=250", "train.eval_every=25", "model.width=16",
         "device=cpu", "checkpoint.interval=0.01"]
#: 3 members trained as one ensemble, a checkpoint after every epoch.
ENSEMBLE = ["-m", "seed=0,1,2", "loss=poly", "ensemble=true", "train.epochs=100", "train.eval_every=20",
            "model.width=16", "device=cpu", "checkpoint.interval=0"]

CHECKPOINTS = (CHECKPOINT_FILE, ENSEMBLE_FILE)
#: Aimed kills through ``os.replace``: kind -> (the target names, whether the kill comes after the rename).
REPLACES = {
    "checkpoint written, not renamed": (CHECKPOINTS, False),
    "run.json written, not renamed": ((rundir.RUN_FILE,), False),
    "between run.json and done": ((rundir.RUN_FILE,), True),
    "after done, checkpoint not removed": ((rundir.DONE_FILE,), True),
}
INSIDE_SAVE = "inside a checkpoint's write"
REWRITE = "resumed metrics.jsonl half rewritten"
TIME = "random moment"
#: Kinds of kill that stop the current run at its end (the run after it starts only once one marks it done).
AT_END = ("run.json written, not renamed", "between run.json and done")


# ----------------------------------------------------------------------------------------- the processes


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)  # never reached: SIGKILL cannot be caught


def _arm(kind: str, n: int) -> None:
    """In the child: SIGKILL itself at the ``n``-th occurrence of ``kind``'s moment (for ``REWRITE``: at the
    first resumed ``metrics.jsonl``, once ``n`` of its lines are rewritten)."""
    seen = [0]

    def due() -> bool:
        seen[0] += 1
        return seen[0] == n

    if kind == INSIDE_SAVE:  # torch.save writes a checkpoint in ~120 pieces
        real_write = files._Writes.write

        def write(self, data):
            written = real_write(self, data)
            if due():
                _die()
            return written

        files._Writes.write = write
    elif kind == REWRITE:
        real_init = rundir.MetricsLog.__init__

        def init(self, folder, history=(), write=True):
            if history:
                real_init(self, folder, list(history)[:n], write)
                _die()
            real_init(self, folder, history, write)

        rundir.MetricsLog.__init__ = init
    else:
        names, after = REPLACES[kind]
        real_replace = os.replace

        def replace(src, dst, **kwargs):
            hit = Path(dst).name in names and due()
            if hit and not after:
                _die()
            real_replace(src, dst, **kwargs)
            if hit and after:
                _die()

        os.replace = replace


def _spawn(argv: List[str], log: Path, aim: Optional[Tuple[str, int]] = None) -> int:
    """Fork a process that runs ``shiftkit <argv>`` (its output into ``log``), armed with ``aim``; its pid."""
    pid = os.fork()
    if pid:
        return pid
    code = 70
    try:  # the child: never returns into pytest
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.stdout = sys.stderr = open(1, "w", buffering=1, closefd=False)
        if aim is not None:
            _arm(*aim)
        code = cli.main(argv)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        os._exit(code)


def _wait(pid: int, log: Path, timeout: float = CHILD_TIMEOUT) -> int:
    """The wait status of ``pid``; a process that outlives ``timeout`` is killed and fails the test."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"shiftkit ran past {timeout} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.002)


def _killed(status: int) -> bool:
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def _snapshot(out: Path) -> Dict[str, Tuple[int, int]]:
    found = {}
    for p in out.rglob("*") if out.exists() else ():
        try:
            st = p.stat()
        except FileNotFoundError:  # removed while we looked
            continue
        if stat.S_ISREG(st.st_mode):
            found[str(p.relative_to(out))] = (st.st_mtime_ns, st.st_size)
    return found


def _kill_at_random(pid: int, out: Path, delay: float, log: Path) -> int:
    """Wait until the process ``pid`` writes something under ``out`` (it is training), then ``delay``
    seconds more, and SIGKILL it; its wait status."""
    before, deadline = _snapshot(out), time.monotonic() + CHILD_TIMEOUT
    while _snapshot(out) == before:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() > deadline:
            break
        time.sleep(0.002)
    time.sleep(delay)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:  # already gone (the wait below says how)
        pass
    return _wait(pid, log)


# ----------------------------------------------------------------------------------- what a kill left


def _run_dirs(out: Path) -> List[Path]:
    return sorted(p.parent for p in out.rglob(rundir.METRICS_FILE))


def _pending(out: Path, expected: int) -> int:
    """How many of the sweep's ``expected`` runs are not marked done."""
    return expected - sum((d / rundir.DONE_FILE).exists() for d in _run_dirs(out))


def _history(folder: Path) -> Optional[list]:
    """The evaluations of the checkpoint in ``folder`` (a run's or an ensemble's first member's), or None."""
    for name in CHECKPOINTS:
        if (folder / name).exists():
            state = Checkpoint(folder / name).load()
            return state["selection"]["history"] if "selection" in state else state["selections"][0]["history"]
    return None


def _resumable(out: Path) -> Optional[int]:
    """The number of evaluations the checkpoint of a pending run holds (the next process rewrites them into
    its metrics.jsonl), or None when no pending run has a checkpoint with any."""
    for d in _run_dirs(out):
        history = None if (d / rundir.DONE_FILE).exists() else _history(d)
        if history:
            return len(history)
    return None


def _temporaries(out: Path) -> List[Path]:
    return sorted(p for p in out.rglob(".*.tmp-*"))


def _where(out: Path, kind: str, before: Dict[str, Tuple[int, int]]) -> str:
    """Where a kill landed, from what it left on disk; for an aimed kill, a failure unless it is its window."""
    temporaries = [p.name.split(".tmp-")[0][1:] for p in _temporaries(out)]
    dirs = _run_dirs(out)
    if kind == INSIDE_SAVE or kind == "checkpoint written, not renamed":
        assert set(temporaries) & set(CHECKPOINTS), (kind, temporaries)
        return kind
    if kind == "run.json written, not renamed":
        assert rundir.RUN_FILE in temporaries, (kind, temporaries)
        return kind
    if kind == "between run.json and done":
        assert any((d / rundir.RUN_FILE).exists() and not (d / rundir.DONE_FILE).exists()
                   and json.loads((d / rundir.RUN_FILE).read_text())["status"] == "finished" for d in dirs), kind
        return kind
    if kind == "after done, checkpoint not removed":
        assert any((d / rundir.DONE_FILE).exists() and any((d / c).exists() for c in CHECKPOINTS) for d in dirs), kind
        return kind
    if kind == REWRITE:
        assert any(not (d / rundir.DONE_FILE).exists() and _history(d)
                   and (d / rundir.METRICS_FILE).read_text().count("\n") < len(_history(d)) for d in dirs), kind
        return kind
    if set(temporaries) & set(CHECKPOINTS):
        return f"{TIME}: inside a checkpoint's save"
    if temporaries:
        return f"{TIME}: inside the write of {temporaries[0]}"
    if any((d / rundir.RUN_FILE).exists() and not (d / rundir.DONE_FILE).exists()
           and json.loads((d / rundir.RUN_FILE).read_text())["status"] == "finished" for d in dirs):
        return f"{TIME}: between run.json and done"
    newest = max(_snapshot(out).items(), key=lambda item: item[1][0], default=("", None))[0]
    if Path(newest).name == rundir.DONE_FILE:
        return f"{TIME}: just after a done marker"
    if _snapshot(out) == before:
        return f"{TIME}: before training"
    return f"{TIME}: inside training steps"


# ---------------------------------------------------------------------------------------------- the chaos


def _plan(rng: random.Random, times: int, ends: int) -> List[str]:
    """The kinds of kill, in order: random moments and kills inside or just after saves (in a seeded
    order), then kills at the end of a run, the rewrite of a resumed run's metrics.jsonl, and last a kill
    after ``done`` (the only one that lets the sweep move on to its next run)."""
    early = [TIME] * times + [INSIDE_SAVE, "checkpoint written, not renamed"]
    rng.shuffle(early)
    late = list(AT_END) * ends
    rng.shuffle(late)
    return [*early, *late, REWRITE, "after done, checkpoint not removed"]


def _chaos(tmp: Path, argv: List[str], runs: int, seconds: float, rng: random.Random,
           plan: List[str], done_at: int = 1) -> List[str]:
    """Run ``shiftkit train <argv>`` into ``tmp/killed``, killing it once per kind in ``plan`` and starting
    it again after each kill, then once more to the end; where each kill landed. ``seconds``: how long a
    run lasts (random kills come within half of it, once the process writes); ``done_at``: the number of
    ``done`` markers after which "after done" kills."""
    out = tmp / "killed"
    argv = ["train", *argv, f"out={out}"]
    landed = []
    for i, kind in enumerate(plan):
        assert _pending(out, runs) > 0, f"the sweep finished before kill {i + 1} ({kind}); landed: {landed}"
        log, before = tmp / f"process{i}.log", _snapshot(out)
        if kind == TIME:
            status = _kill_at_random(_spawn(argv, log), out, rng.uniform(0.0, seconds / 2), log)
        else:
            if kind == INSIDE_SAVE:
                n = rng.randint(1, 360)  # within the first three saves
            elif kind == "checkpoint written, not renamed":
                n = rng.randint(1, 3)
            elif kind == REWRITE:
                lines = _resumable(out)
                assert lines, f"no pending run has a checkpoint to resume for kill {i + 1}; landed: {landed}"
                n = rng.randrange(lines)
            elif kind == "after done, checkpoint not removed":
                n = done_at
            else:
                n = 1
            status = _wait(_spawn(argv, log, (kind, n)), log)
        assert _killed(status), f"kill {i + 1} ({kind}) did not land (status {status}):\n{log.read_text()[-3000:]}"
        landed.append(_where(out, kind, before))
        print(f"kill {i + 1}: {landed[-1]}")
    log = tmp / "final.log"
    status = _wait(_spawn(argv, log), log)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, log.read_text()[-3000:]
    return landed


@contextlib.contextmanager
def _umask(mask: int):
    old = os.umask(mask)
    try:
        yield mask
    finally:
        os.umask(old)


@pytest.fixture
def umask():
    with _umask(UMASK) as mask:
        yield mask


def _reference(tmp: Path, argv: List[str], runs: int) -> float:
    """The sweep run once, uninterrupted, into ``tmp/reference`` (in this process); the mean training
    seconds of its runs (an ensemble's members share theirs)."""
    assert cli.main(["train", *argv, f"out={tmp / 'reference'}"]) == 0
    folders = _run_dirs(tmp / "reference")
    assert len(folders) == runs
    return sum(json.loads((d / rundir.RUN_FILE).read_text())["train_seconds"] for d in folders) / runs


RESULT_KEYS = ("status", "method", "group_key", "final", "selected", "selected_epoch", "steps", "metrics_sha256")


def _assert_same_results(reference: Path, out: Path, umask: int) -> List[dict]:
    """``out`` holds exactly the run directories and files of ``reference``, with the same metrics and
    results, nothing else, and every file and folder as the umask makes them; the records."""
    tree = lambda root: sorted(str(p.relative_to(root)) for p in root.rglob("*"))  # noqa: E731
    assert tree(out) == tree(reference)  # no run lost or duplicated, nothing left over
    assert not _temporaries(out)
    assert not [p for name in CHECKPOINTS for p in out.rglob(name)]
    records = []
    for ref in _run_dirs(reference):
        got = out / ref.relative_to(reference)
        assert (got / rundir.DONE_FILE).exists()
        assert (got / rundir.METRICS_FILE).read_bytes() == (ref / rundir.METRICS_FILE).read_bytes(), got
        record, expected = (json.loads((d / rundir.RUN_FILE).read_text()) for d in (got, ref))
        for key in RESULT_KEYS:
            assert record[key] == expected[key], (got, key)
        assert rundir.finished(got) is not None
        records.append(record)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    for p in [out, *out.rglob("*")]:
        assert mode(p) == (0o777 if p.is_dir() else 0o666) & ~umask, (p, oct(mode(p)))
    for d in _run_dirs(out):
        assert mode(d / rundir.RUN_FILE) == mode(d / rundir.METRICS_FILE) == mode(d / rundir.DONE_FILE)
    return records


def _summary(landed: List[str]) -> str:
    counts: Dict[str, int] = {}
    for where in landed:
        counts[where] = counts.get(where, 0) + 1
    return "; ".join(f"{n} x {where}" for where, n in counts.items())


def test_a_sweep_killed_at_random_and_aimed_moments_ends_as_one_never_interrupted(tmp_path, umask):
    rng = random.Random(20240613)
    seconds = _reference(tmp_path, SWEEP, runs=4)
    plan = _plan(rng, times=2, ends=1)
    landed = _chaos(tmp_path, SWEEP, runs=4, seconds=seconds, rng=rng, plan=plan)
    print(f"\nchaos, sweep ({seconds:.2f} s a run): {len(landed)} kills: {_summary(landed)}")
    assert len(landed) == len(plan) == 8
    records = _assert_same_results(tmp_path / "reference", tmp_path / "killed", umask)
    assert any("resumed_from_epoch" in r for r in records)  # some run finished from a checkpoint


@pytest.fixture(scope="module")
def ensemble_reference(tmp_path_factory):
    """The ensemble sweep run once, uninterrupted (shared by the ensemble tests): its folder, and the
    ensemble's training seconds."""
    tmp = tmp_path_factory.mktemp("ensemble")
    with _umask(UMASK):
        seconds = _reference(tmp, ENSEMBLE, runs=3)
    return tmp / "reference", seconds


def test_an_ensemble_killed_at_random_and_aimed_moments_ends_as_one_never_interrupted(tmp_path, umask,
                                                                                    ensemble_reference):
    rng = random.Random(61320240)
    reference, seconds = ensemble_reference
    plan = _plan(rng, times=2, ends=1)
    # the members train together: random kills come within the first quarter of the ensemble's training
    landed = _chaos(tmp_path, ENSEMBLE, runs=3, seconds=seconds / 2, rng=rng, plan=plan, done_at=3)
    print(f"\nchaos, ensemble ({seconds:.2f} s): {len(landed)} kills: {_summary(landed)}")
    assert len(landed) == len(plan) == 8
    records = _assert_same_results(reference, tmp_path / "killed", umask)
    assert all(r["ensemble_size"] == 3 and "resumed_from_epoch" in r for r in records)


@pytest.mark.parametrize("done", [1, 2])
def test_an_ensemble_killed_between_its_members_done_markers_ends_as_one_never_interrupted(tmp_path, umask, done,
                                                                                         ensemble_reference):
    """A kill after the first (or second) member's ``done`` and before the others': the rerun must finish
    the others as members of the same ensemble, not as a smaller one (whose numbers differ in their last
    digits) started over (the checkpoint beside the first member is gone by then)."""
    landed = _chaos(tmp_path, ENSEMBLE, runs=3, seconds=0.0, rng=random.Random(0),
                    plan=["after done, checkpoint not removed"], done_at=done)
    assert landed == ["after done, checkpoint not removed"]
    _assert_same_results(ensemble_reference[0], tmp_path / "killed", umask)
