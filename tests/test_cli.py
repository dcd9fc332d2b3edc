"""The command line through subprocesses: a run's files, sweeps, reports and bad input."""

import json
import os
import subprocess
import sys

import pytest

TINY = ["train.epochs=3", "train.eval_every=1", "model.width=16", "device=cpu"]


def shiftkit(*args, cwd):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "shiftkit.cli", *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=300
    )


def test_train_writes_run_json_metrics_and_done(tmp_path):
    res = shiftkit("train", "loss=poly", "weighting=iw", "weighting.exponent=1.5", "seed=3", f"out={tmp_path}", *TINY, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    (run,) = [p.parent for p in tmp_path.rglob("run.json")]
    assert (run / "done").exists()
    record = json.loads((run / "run.json").read_text())
    assert record["config"]["loss"] == {"name": "poly", "alpha": 1.0, "beta": 1.0, "continuity": "scale", "type": "logit"}
    assert record["config"]["weighting"]["exponent"] == 1.5 and record["config"]["seed"] == 3
    assert record["method"] == "poly+iw(exponent=1.5)"
    assert record["data"]["counts"]["test"]["class_counts"] == [50, 50]
    for key in ("final", "selected"):
        assert set(record[key]) == {"train", "val", "test"}
        assert 0.0 <= record[key]["test"]["balanced_acc"] <= 1.0
    assert {"torch", "python", "shiftkit"} <= set(record["environment"])
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


def test_sweep_skips_finished_runs_and_report_tabulates(tmp_path):
    args = ["train", "-m", "loss=ce,poly", "seed=0,1", f"out={tmp_path}", *TINY]
    first = shiftkit(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert len(list(tmp_path.rglob("done"))) == 4
    again = shiftkit(*args, cwd=tmp_path)
    assert again.returncode == 0 and "4 of 4 runs were already done" in again.stderr
    rep = shiftkit("report", str(tmp_path), cwd=tmp_path)
    assert rep.returncode == 0, rep.stderr
    assert "poly" in rep.stdout and "±" in rep.stdout
    png = tmp_path / "report.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    tables = json.loads((tmp_path / "report.json").read_text())["tables"]["digits_binary"]
    assert sorted(row["method"] for row in tables) == ["ce+erm", "poly+erm"]
    assert all(row["n"] == 2 for row in tables)


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "loss=nope"], "unknown loss 'nope'; choose one of: "),
        (["train", "weighting=iw", "weighting.exponent=abc"], "weighting.exponent"),
        (["train", "data=nonexistent"], "unknown data 'nonexistent'; choose one of:"),
        (["train", "seed=-1"], "seed must be an integer in 0..2**63-1, got -1"),
        (["report", "does-not-exist"], "no such directory"),
        (["train", "-m", "loss=ce,nope"], "unknown loss 'nope'"),
        (["train", "data.imbalance=0.5"], "digits_binary: imbalance must be >= 1"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, message):
    res = shiftkit(*args, f"out={tmp_path / 'out'}" if args[0] == "train" else "--which=selected", cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0, res.stderr
    assert res.stderr.startswith("shiftkit: error: ") and message in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "out").exists()


def test_list_names_every_group(tmp_path):
    from shiftkit.config import GROUPS

    res = shiftkit("list", cwd=tmp_path)
    assert res.returncode == 0
    for group, registry in GROUPS.items():
        assert f"{group}: {', '.join(registry.names())}" in res.stdout


def test_demo_trains_its_methods_and_reports(tmp_path):
    res = shiftkit("demo", "--seeds", "2", "--out", str(tmp_path / "demo"), *TINY, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    methods = {row["method"] for rows in report["tables"].values() for row in rows}
    assert {"ERM", "IW", "Poly+IW"} <= methods
    assert all(row["n"] == 2 for rows in report["tables"].values() for row in rows)
    for png in ("report.png", "curves.png"):
        assert (tmp_path / "demo" / png).read_bytes()[:4] == b"\x89PNG"
