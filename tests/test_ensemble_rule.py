"""Where a stacked ensemble would be slower than its seeds one by one (shiftkit.ensemble.slower), the
command line runs them one by one and says why; elsewhere it stacks (docs/PERFORMANCE.md#ensembles)."""

import json

import pytest
from torch import nn

from shiftkit import cli, models
from shiftkit.config import compose
from shiftkit.ensemble import CPU_STACK_MACS, EnsembleUnsupported, slower
from shiftkit.runner import run_ensemble

SEEDS = (0, 1)


def mlp(width):
    return models.build("mlp", width=width, depth=2, input_shape=(64,), num_classes=2)


def test_the_rule_stacks_small_linear_models_and_not_convolutions_or_arithmetic_bound_steps():
    small, demo = mlp(128), mlp(512)
    assert slower([small], "cpu", 32) is None
    assert "bound by arithmetic" in slower([demo], "cpu", 32)  # the demo's 2 x 512 MLP at batch 32: 9.5e6
    assert slower([demo], "cpu", 16) is None  # half the batch, half the multiply-adds: below the bound
    conv = models.build("cnn", input_shape=(1, 28, 28), num_classes=2)
    assert "convolutions" in slower([conv], "cpu", 64)
    for model in (demo, conv):
        assert slower([model], "cuda", 64) is None and slower([model], "cuda:1", 64) is None
    # the bound is on batch x the linear layers' weights, per member
    linear = nn.Sequential(nn.Linear(1000, 1000))
    at = int(CPU_STACK_MACS // 1_000_000)
    assert slower([linear], "cpu", at) is None and slower([linear], "cpu", at + 1) is not None


def test_a_slower_ensemble_is_refused_before_anything_is_written(tmp_path):
    cfgs = [compose(["model=cnn", "data=digits_binary", "train.epochs=1", "device=cpu", f"seed={s}", "ensemble=true",
                     f"out={tmp_path}"]) for s in SEEDS]
    with pytest.raises(EnsembleUnsupported, match="convolutions"):
        run_ensemble(cfgs)
    assert not list(tmp_path.iterdir())


def test_the_sweep_runs_the_seeds_one_by_one_and_says_why(tmp_path, capsys):
    argv = ["train", "-m", "seed=0,1", "ensemble=true", "model.width=512", "train.batch_size=32", "train.epochs=1",
            "device=cpu", f"out={tmp_path}"]
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert err.count("bound by arithmetic, which stacking cannot save; running the seeds one by one") == 1
    records = [json.loads(p.read_text()) for p in tmp_path.rglob("run.json")]
    assert len(records) == 2 and not any("ensemble_size" in r for r in records)
    # a small model stacks as before
    argv = [*argv[:4], "model.width=16", *argv[5:-1], f"out={tmp_path / 'small'}"]
    assert cli.main(argv) == 0
    records = [json.loads(p.read_text()) for p in (tmp_path / "small").rglob("run.json")]
    assert [r["ensemble_size"] for r in records] == [2, 2]
