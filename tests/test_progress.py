"""What a run prints where there is no terminal (SLURM, nohup, a pipe): a plain line per evaluation at
most every ``$SHIFTKIT_PROGRESS_SECONDS``, the metric that matters for the data, and whether it resumed."""

from shiftkit import sweep
from shiftkit.cli import main

TINY = ["train.epochs=3", "train.eval_every=1", "model.width=8", "model.depth=1", "device=cpu"]


def _lines(capsys) -> list:
    return capsys.readouterr().err.splitlines()


def test_without_a_terminal_each_evaluation_is_a_plain_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SHIFTKIT_PROGRESS_SECONDS", "0")
    assert main(["train", *TINY, f"out={tmp_path}"]) == 0
    lines = _lines(capsys)
    evals = [line for line in lines if line.startswith("  ce+erm seed 0: epoch ")]
    assert [line.split(": ")[1] for line in evals] == ["epoch 1", "epoch 2", "epoch 3"]
    assert "val balanced acc" in evals[0] and "worst group" not in evals[0]  # digits: groups are the classes
    assert lines[-1].startswith("[1/1] ce+erm seed 0: ") and "worst class" in lines[-1]


def test_lines_are_at_most_every_so_many_seconds(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SHIFTKIT_PROGRESS_SECONDS", "3600")
    assert main(["train", *TINY, f"out={tmp_path}"]) == 0
    assert not [line for line in _lines(capsys) if ": epoch " in line]


def test_group_shift_data_show_the_worst_group():
    record = {"epoch": 1, "train_loss": 0.5, "train": {"acc": 0.9},
              "val": {"balanced_acc": 0.8, "worst_group_acc": 0.25, "per_class_acc": [0.9, 0.7],
                      "per_group_acc": [0.9, 0.25, 0.7, 0.8]}}
    assert sweep._describe(record).endswith("val balanced acc 0.800, worst group 0.250")
    test = {"acc": 0.8, "balanced_acc": 0.75, "worst_class_acc": 0.6, "worst_group_acc": 0.3,
            "per_class_acc": [0.9, 0.6], "per_group_acc": [0.9, 0.3, 0.6, 0.8]}
    done = {"selected": {"train": {"acc": 1.0}, "test": test}, "train_seconds": 2.0, "resumed_from_epoch": 4}
    assert sweep.finished(done) == "train acc 1.000, test balanced acc 0.750, worst group 0.300 (2.0 s, resumed from epoch 4)"
    done["config"] = {"train": {"amp": "bf16"}}  # what train.amp=auto resolved to, say, on a CPU with BF16
    assert sweep.finished(done).endswith("(2.0 s, bfloat16, resumed from epoch 4)")


def test_a_bad_interval_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SHIFTKIT_PROGRESS_SECONDS", "soon")
    assert main(["train", *TINY, f"out={tmp_path}"]) == 2
    assert _lines(capsys)[-1] == "shiftkit: error: $SHIFTKIT_PROGRESS_SECONDS must be a number of seconds"


def test_an_autobalance_run_counts_and_times_its_search_and_retraining(tmp_path, capsys, monkeypatch):
    from shiftkit.config import compose

    monkeypatch.setenv("SHIFTKIT_PROGRESS_SECONDS", "0")
    overrides = ["experiment=autobalance", "data=digits_lt", "model=linear", "train.epochs=2", "train.eval_every=1",
                 "search.start_epoch=1", "search.retrain_epochs=3", "device=cpu", f"out={tmp_path}"]
    cfg = compose(overrides)
    assert sweep._epochs(cfg) == 5
    assert sweep._done_epochs({"epoch": 2, "phase": "retrain"}, cfg) == 4
    assert main(["train", *overrides]) == 0
    lines = _lines(capsys)
    evals = [line.split(": ")[1] for line in lines if ": search epoch " in line or ": retraining epoch " in line]
    assert evals == ["search epoch 1", "search epoch 2", "retraining epoch 1", "retraining epoch 2",
                     "retraining epoch 3"]
    assert "s: search " in lines[-1] and " s + retraining " in lines[-1]
    done = {"selected": {"train": {"acc": 1.0}, "test": {"balanced_acc": 0.5, "worst_class_acc": 0.4}},
            "train_seconds": 2.0, "search": {"seconds": 3.5}}
    assert sweep.finished(done).endswith("(5.5 s: search 3.5 s + retraining 2.0 s)")
