"""Every finished run keeps its weights, and ``shiftkit.load(run_dir)`` gives back the model that made its
numbers (docs/RUNS.md)."""

import json

import pytest

import shiftkit
from shiftkit import data, metrics, rundir
from shiftkit.cli import main
from shiftkit.config import compose
from shiftkit.errors import ShiftkitError
from shiftkit.runner import run

TINY = ["model.width=16", "model.depth=1", "train.epochs=12", "train.eval_every=2", "device=cpu",
        "optim.lr=0.05"]


def _test_metrics(loaded) -> dict:
    splits = data.build("digits_binary")
    return metrics.evaluate(loaded.logits(splits.test.x), splits.test.y, splits.test.g)


def test_load_gives_the_selected_and_the_final_model_of_a_run(tmp_path):
    record = run(compose([*TINY, "train.select=best:balanced_acc", f"out={tmp_path}"]))
    folder = record["run_dir"]
    assert record["weights"]["file"] == rundir.WEIGHTS_FILE and record["weights"]["epoch"] == record["selected_epoch"]
    selected, final = shiftkit.load(folder), shiftkit.load(folder, which="final")
    assert selected.epoch == record["selected_epoch"] and final.epoch == 12
    assert not selected.model.training and tuple(selected.statistics["input_shape"]) == (1, 8, 8)
    for loaded, which in ((selected, "selected"), (final, "final")):
        got = _test_metrics(loaded)
        for key in ("acc", "balanced_acc", "worst_group_acc"):
            assert got[key] == pytest.approx(record[which]["test"][key], abs=1e-9), (which, key)
    assert selected.predict(data.build("digits_binary").test.x).shape == (100,)


def test_a_run_that_selects_its_last_epoch_keeps_one_file(tmp_path):
    record = run(compose([*TINY, f"out={tmp_path}"]))
    assert "final_file" not in record["weights"]
    assert not (tmp_path / record["run_dir"] / rundir.FINAL_WEIGHTS_FILE).exists()
    assert _test_metrics(shiftkit.load(record["run_dir"], "final"))["acc"] == pytest.approx(
        record["final"]["test"]["acc"], abs=1e-9)


def test_every_member_of_an_ensemble_keeps_its_weights(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["train", "-m", "seed=0,1", "ensemble=true", *TINY, f"out={out}"]) == 0
    folders = sorted(p.parent for p in out.rglob("run.json"))
    assert len(folders) == 2
    for folder in folders:
        record = json.loads((folder / "run.json").read_text())
        assert record["ensemble_size"] == 2
        assert _test_metrics(shiftkit.load(folder))["balanced_acc"] == pytest.approx(
            record["selected"]["test"]["balanced_acc"], abs=1e-6)


def test_save_weights_false_keeps_none_and_load_says_so(tmp_path):
    record = run(compose([*TINY, "save_weights=false", f"out={tmp_path}"]))
    assert "weights" not in record and not list(tmp_path.rglob("*.safetensors"))
    with pytest.raises(ShiftkitError, match="kept no weights"):
        shiftkit.load(record["run_dir"])


def test_by_default_a_large_model_keeps_no_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(rundir, "AUTO_WEIGHTS_BYTES", 1000)
    record = run(compose([*TINY, f"out={tmp_path}"]))
    assert "weights" not in record
    forced = run(compose([*TINY, "save_weights=true", f"out={tmp_path}"]))  # same run: trains again to save them
    assert forced["run_dir"] == record["run_dir"] and forced["weights"]["file"] == rundir.WEIGHTS_FILE


def test_load_refuses_what_it_cannot_use(tmp_path):
    record = run(compose([*TINY, f"out={tmp_path}"]))
    loaded = shiftkit.load(record["run_dir"])
    with pytest.raises(ShiftkitError, match=r"inputs of shape \[N, 1, 8, 8\], got \[2, 64\]"):
        loaded.logits(data.build("digits_binary").test.x[:2].reshape(2, 64))
    with pytest.raises(ShiftkitError, match="which must be 'selected' or 'final'"):
        shiftkit.load(record["run_dir"], which="best")
    with pytest.raises(ShiftkitError, match="not a finished run"):
        shiftkit.load(tmp_path)
