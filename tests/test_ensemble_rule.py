"""Where a stacked ensemble would be slower than its seeds one by one (shiftkit.ensemble.slower), the
command line runs them one by one and says why; elsewhere it stacks (docs/PERFORMANCE.md#ensembles)."""

import json

import pytest
from torch import nn

from shiftkit import cli, models
from shiftkit.config import compose
from shiftkit.ensemble import EnsembleUnsupported, slower
from shiftkit.runner import run_ensemble

SEEDS = (0, 1)


def mlp(width):
    return models.build("mlp", width=width, depth=2, input_shape=(64,), num_classes=2)


def test_the_rule_stacks_linear_models_and_not_convolutions_on_the_cpu():
    small, demo = mlp(128), mlp(512)
    assert slower([small], "cpu", 32) is None and slower([demo], "cpu", 512) is None
    conv = models.build("cnn", input_shape=(1, 28, 28), num_classes=2)
    assert "convolutions" in slower([conv], "cpu", 64)
    for model in (demo, conv):
        assert slower([model], "cuda", 64) is None and slower([model], "cuda:1", 64) is None
    assert slower([nn.Sequential(nn.Flatten(), nn.Conv1d(1, 2, 3))], "cpu", 8) is not None  # any convolution


def test_a_slower_ensemble_is_refused_before_anything_is_written(tmp_path):
    cfgs = [compose(["model=cnn", "data=digits_binary", "train.epochs=1", "device=cpu", f"seed={s}", "ensemble=true",
                     f"out={tmp_path}"]) for s in SEEDS]
    with pytest.raises(EnsembleUnsupported, match="convolutions"):
        run_ensemble(cfgs)
    assert not list(tmp_path.iterdir())


def test_the_sweep_runs_the_seeds_one_by_one_and_says_why(tmp_path, capsys):
    argv = ["train", "-m", "seed=0,1", "ensemble=true", "model=cnn", "data=digits_binary", "train.epochs=1",
            "device=cpu", f"out={tmp_path}"]
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert err.count("stacked convolutions train slower than one model at a time; running the seeds one by one") == 1
    records = [json.loads(p.read_text()) for p in tmp_path.rglob("run.json")]
    assert len(records) == 2 and not any("ensemble_size" in r for r in records)
    # a small model stacks as before
    argv = [*argv[:4], "model.width=16", *argv[6:-1], f"out={tmp_path / 'small'}"]
    assert cli.main(argv) == 0
    records = [json.loads(p.read_text()) for p in (tmp_path / "small").rglob("run.json")]
    assert [r["ensemble_size"] for r in records] == [2, 2]
