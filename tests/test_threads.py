"""Threads per process (shiftkit.threads): the plan, its adaptation to other processes, the user's own
choice, and what the command line and joblib's workers record (docs/PERFORMANCE.md#threads)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from shiftkit import cli, threads


@pytest.fixture
def restore():
    """Leave torch's thread count and the module's state as they were."""
    count, state = torch.get_num_threads(), dict(threads._STATE)
    yield
    torch.set_num_threads(count)
    threads._STATE.clear()
    threads._STATE.update(state)


@given(st.integers(1, 64), st.integers(1, 64), st.floats(0, 64), st.integers(1, 8))
def test_the_plan_takes_the_free_cores_shared_by_the_processes(cores, default, busy, processes):
    n = threads.plan(cores, default, busy, processes)
    assert 1 <= n <= max(1, default)
    assert n == max(1, max(1, min(default, cores - round(busy))) // processes)
    assert threads.plan(cores, default, busy + 1, processes) <= n  # busier never means more threads


class Machine:
    """A fake two-core machine: other processes' busy cores and this process's CPU seconds, by the clock."""

    def __init__(self, monkeypatch):
        self.now, self.busy, self.own, self.others, self.mine = 100.0, 0.0, 0.0, 0.0, 2.0
        monkeypatch.setattr(threads, "_cores", lambda: [0, 1])
        monkeypatch.setattr(threads, "_busy_seconds", lambda cores: self.busy)
        monkeypatch.setattr(threads, "_own_seconds", lambda: self.own)
        monkeypatch.setattr(threads, "busy_cores", lambda interval=0.1: self.others)
        monkeypatch.setattr(threads.time, "monotonic", lambda: self.now)
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.delenv(threads.VARIABLE, raising=False)

    def advance(self, seconds):
        self.now += seconds
        self.own += self.mine * seconds
        self.busy += (min(2.0, self.others + self.mine)) * seconds


def test_configure_takes_the_free_cores_and_adapt_follows_a_competitor_that_comes_and_goes(monkeypatch, restore):
    machine = Machine(monkeypatch)
    torch.set_num_threads(2)
    machine.others = 1.0  # a competitor already runs
    assert threads.configure() == 1
    machine.mine = 1.0
    machine.advance(0.5)
    threads.adapt()  # within a second of the last look: nothing measured
    assert torch.get_num_threads() == 1
    machine.others = 0.0  # the competitor left
    machine.advance(1.0)
    threads.adapt()
    assert torch.get_num_threads() == 2
    machine.mine, machine.others = 1.4, 1.0  # it is back: this process's spinning threads get 1.4 cores
    # of the saturated cores' 2.0 busy seconds a second, 0.6 are the competitor's: it rounds to one core
    machine.advance(2.0)
    threads.adapt()
    assert torch.get_num_threads() == 1


def test_a_count_the_user_fixed_is_kept_and_never_adapted(monkeypatch, restore):
    machine = Machine(monkeypatch)
    machine.others = 1.0
    monkeypatch.setenv(threads.VARIABLE, "2")
    threads._STATE.clear()
    assert threads.configure() == 2
    machine.advance(5.0)
    threads.adapt()
    assert torch.get_num_threads() == 2
    monkeypatch.delenv(threads.VARIABLE)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    torch.set_num_threads(2)
    assert threads.configure() == 2 and "default" not in threads._STATE


def test_adapt_does_nothing_unless_the_entry_point_configured_the_process(monkeypatch, restore):
    Machine(monkeypatch)
    threads._STATE.clear()
    torch.set_num_threads(2)
    threads.adapt()
    assert torch.get_num_threads() == 2


def test_busy_cores_reads_this_machine():
    busy = threads.busy_cores(0.05)
    assert 0.0 <= busy <= len(threads._cores()) + 0.5


def test_an_in_process_main_leaves_the_threads_alone(tmp_path, restore):
    torch.set_num_threads(1)
    threads._STATE.clear()
    assert cli.main(["train", "model.width=8", "train.epochs=1", "device=cpu", f"out={tmp_path}"]) == 0
    assert torch.get_num_threads() == 1 and "default" not in threads._STATE


@pytest.mark.parametrize("fixed", ["1", None])
def test_the_command_records_its_threads(tmp_path, fixed):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", threads.VARIABLE)}
    env["PYTHONWARNINGS"] = "ignore"
    if fixed:
        env[threads.VARIABLE] = fixed
    done = subprocess.run([sys.executable, "-m", "shiftkit", "train", "model.width=8", "train.epochs=1", "device=cpu",
                           f"out={tmp_path}"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (record,) = [json.loads(p.read_text()) for p in tmp_path.rglob("run.json")]
    count = record["environment"]["threads"]
    assert count == 1 if fixed else 1 <= count <= len(threads._cores())


def test_bf16_on_a_cpu_that_emulates_it_warns_in_one_line(tmp_path, monkeypatch, recwarn):
    from shiftkit import runner
    from shiftkit.config import compose
    from shiftkit.errors import ShiftkitWarning

    monkeypatch.setattr(runner, "bf16_native", lambda device: False)
    runner.run(compose(["model.width=8", "train.epochs=1", "device=cpu", "train.amp=bf16", f"out={tmp_path}"]))
    (warning,) = [w for w in recwarn if issubclass(w.category, ShiftkitWarning)]
    assert "emulates bfloat16" in str(warning.message) and "\n" not in str(warning.message)
