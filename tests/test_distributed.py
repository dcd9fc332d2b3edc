"""One training over several processes (``torchrun``, DDP with gloo on the CPU): the same metrics as one
process with the same global batch, weighting state and evaluation counts reduced across ranks."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shiftkit import distributed
from shiftkit.config import compose
from shiftkit.runner import run


@given(st.integers(0, 500), st.integers(1, 9))
def test_shards_partition_a_batch_in_rank_order(n, world):
    bounds = [distributed.shard_bounds(n, world, r) for r in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    sizes = [hi - lo for lo, hi in bounds]
    assert max(sizes) - min(sizes) <= 1


def test_outside_torchrun_everything_is_one_process():
    assert not distributed.active() and distributed.world_size() == 1 and distributed.is_primary()
    assert distributed.setup("cpu") == "cpu"


def test_a_torchrun_command_is_rebuilt_where_its_launcher_cannot_be_read(monkeypatch):
    from shiftkit.runner import command

    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert command(["/x/shiftkit/__main__.py", "train", "seed=1"], parent=["/bin/bash"]) == (
        "torchrun --nproc_per_node=2 -m shiftkit train seed=1")
    assert command(["/x/__main__.py", "train"], ["/usr/bin/python3", "-m", "torch.distributed.run", "--nnodes=2",
                                                  "-m", "shiftkit", "train"]) == (
        "python -m torch.distributed.run --nnodes=2 -m shiftkit train")


def _torchrun(out, overrides, nproc=2):
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [str(torchrun), "--standalone", f"--nproc_per_node={nproc}", "-m", "shiftkit", "train", f"out={out}", *overrides]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _flat(value):
    """A metric as a list of numbers, ``None`` (a metric that does not apply) as NaN."""
    values = value if isinstance(value, list) else [value]
    return [float("nan") if v is None else v for v in values]


# batch 25 over 116 examples: the last batch (16) splits 8/8 and the others 13/12, uneven shards
CASES = {
    "group_dro": ["weighting=group_dro", "weighting.eta=0.5", "train.batch_size=25", "sampler=resample"],
    "poly+cvar+best": ["loss=poly", "weighting=cvar", "weighting.alpha=0.5", "train.batch_size=25",
                       "train.select=best:balanced_acc", "optim.lr=0.05"],
}


@pytest.mark.parametrize("case", CASES)
def test_two_processes_give_the_metrics_of_one_with_the_same_global_batch(tmp_path, case):
    overrides = ["train.epochs=12", "train.eval_every=3", "device=cpu", *CASES[case]]
    one = run(compose([*overrides, f"out={tmp_path / 'one'}"]))
    res = _torchrun(tmp_path / "two", overrides)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.count("seed0-") == 1  # only rank 0 reports
    folder = tmp_path / "two" / Path(one["run_dir"]).relative_to(tmp_path / "one")
    two = json.loads((folder / "run.json").read_text())
    assert one["environment"]["world_size"] == 1 and two["environment"]["world_size"] == 2
    assert two["environment"]["command"].startswith(f"torchrun --standalone --nproc_per_node=2 -m shiftkit train out={tmp_path / 'two'}")
    assert two["selected_epoch"] == one["selected_epoch"] and two["steps"] == one["steps"]
    for which in ("final", "selected"):
        for split in ("train", "val", "test"):
            a, b = one[which][split], two[which][split]
            assert a["n"] == b["n"] and a["per_group_n"] == b["per_group_n"]  # every example counted once
            assert a.keys() == b.keys()
            for key in a:
                assert _flat(b[key]) == pytest.approx(_flat(a[key]), abs=1e-6, nan_ok=True), key
    curves = [[json.loads(line)["train_loss"] for line in (Path(r) / "metrics.jsonl").read_text().splitlines()]
              for r in (one["run_dir"], folder)]
    assert curves[1] == pytest.approx(curves[0], rel=1e-4)
    assert not list((tmp_path / "two").rglob("checkpoint.pt"))
