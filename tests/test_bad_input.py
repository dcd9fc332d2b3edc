"""A catalogue of bad input (every mistake a clear message, never a traceback): each row is one mistake a user makes on the
command line, and each must end in exactly one line ``shiftkit: error: <what to do>`` on stderr, exit
status 2, no traceback, and no file written (no run directory, no ``run.json``, no ``done``, no report).

Rows run in-process through :func:`shiftkit.cli.main` (a CLI process costs seconds to start); a few
representative rows also run as real processes to prove the exit status. Every case is refused before
training starts, so the rows are fast. (A NaN or infinite training loss is tested with the loop.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict

import numpy as np
import pytest
import torch

from shiftkit.cli import main

#: Put before every ``train`` row's own overrides: a fast CPU run in ``out/`` (never reached: all rows fail first).
TRAIN = ["train.epochs=1", "device=cpu", "out={dir}/out"]


# ---------------------------------------------------------------------------------------------- fixtures


def _table(n: int = 40, **columns):
    """A small tabular data set: two numeric features, a binary label, four groups, a split column."""
    import pandas as pd

    rng = np.random.default_rng(0)
    table = pd.DataFrame(
        {
            "a": rng.normal(size=n).round(3),
            "b": rng.normal(size=n).round(3),
            "label": np.arange(n) % 2,
            "grp": np.arange(n) % 4,
            "part": ["train"] * (n // 2) + ["val"] * (n // 4) + ["test"] * (n - n // 2 - n // 4),
        }
    )
    for name, values in columns.items():
        table[name] = values
    return table


def _csv(make: Callable[[], object]) -> Callable[[Path], None]:
    return lambda path: make().to_csv(path, index=False)


def _text(content: str) -> Callable[[Path], None]:
    return lambda path: path.write_text(content)


def _with(column: str, row: int, value) -> Callable[[], object]:
    def make():
        table = _table()
        table[column] = table[column].astype(object)
        table.loc[row, column] = value
        return table

    return make


def _no_train_group_3():
    table = _table()
    table.loc[(table["part"] == "train") & (table["grp"] == 3), "grp"] = 1  # group 3 only in val/test
    return table


def _no_train_class_1():
    table = _table()
    table.loc[(table["part"] == "train"), "label"] = 0
    return table


def _idx_with_label(label: int) -> Callable[[Path], None]:
    """A folder of the four Fashion-MNIST IDX files whose 8th training label is ``label``."""

    def write(folder: Path) -> None:
        folder.mkdir()
        for split, per_class in (("train", 12), ("t10k", 4)):
            labels = np.repeat(np.arange(10, dtype=np.uint8), per_class)
            if split == "train":
                labels[7] = label
            images = np.zeros((len(labels), 28, 28), dtype=np.uint8)
            for name, array in (("images-idx3", images), ("labels-idx1", labels)):
                header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
                (folder / f"{split}-{name}-ubyte").write_bytes(header + array.tobytes())

    return write


def _run_record(path: Path) -> None:
    """A finished run's directory whose ``metrics.jsonl`` is cut off mid-line."""
    path.mkdir(parents=True)
    split = {"acc": 0.5, "balanced_acc": 0.5}
    record = {
        "method": "ce+erm",
        "group_key": "0123456789",
        "config": {"seed": 0},
        "data": {"name": "digits_binary", "counts": {"train": {"class_counts": [9, 1], "group_counts": [9, 1]}}},
        "selected": {"train": split, "val": split, "test": split},
        "final": {"train": split, "val": split, "test": split},
    }
    (path / "run.json").write_text(json.dumps(record))
    (path / "metrics.jsonl").write_text('{"epoch": 1, "test": {"balanced_acc": 0.5}}\n{"epoch": 2, "te')
    (path / "done").write_text("")


def _not_a_record(path: Path) -> None:
    path.mkdir(parents=True)
    (path / "run.json").write_text("[1, 2]")
    (path / "done").write_text("")


# -------------------------------------------------------------------------------------------- the catalogue

#: (id, argv, files to create in the working directory, fragment the one line must hold)
# fmt: off
CASES = [
    # config values
    ("negative-epochs", ["train", "train.epochs=-1"], {}, "train.epochs and train.eval_every must be >= 1"),
    ("bad-select", ["train", "train.select=best:nope"], {},
     "train.select must be 'last' or 'best:<metric>' with a metric among acc, balanced_acc"),
    ("bad-amp", ["train", "train.amp=fp8"], {}, "train.amp must be one of auto, none, bf16, got 'fp8'"),
    ("negative-batch-size", ["train", "train.batch_size=-5"], {}, "train.batch_size >= 0"),
    ("negative-lr", ["train", "optim.lr=-1"], {}, "optim.lr must be > 0, got -1.0"),
    ("iw-negative-exponent", ["train", "weighting=iw", "weighting.exponent=-1"], {},
     "weighting 'iw': exponent must be >= 0 and finite (0 is ERM, 1 classical IW), got -1.0"),
    ("poly-alpha-zero", ["train", "loss=poly", "loss.alpha=0"], {}, "loss 'poly': alpha must be > 0, got 0.0"),
    ("dro-negative-eta", ["train", "weighting=group_dro", "weighting.eta=-0.1"], {},
     "weighting 'group_dro': eta must be >= 0 and finite, got -0.1"),
    ("dro-infinite-eta", ["train", "weighting=group_dro", "weighting.eta=inf"], {},
     "weighting.eta must be a finite number, got inf"),
    ("cvar-alpha-above-one", ["train", "weighting=cvar", "weighting.alpha=1.5"], {},
     "weighting 'cvar': alpha must be in (0, 1], got 1.5"),
    ("sampler-bad-by", ["train", "sampler=balanced", "sampler.by=cell"], {},
     "by must be 'group' or 'class', got 'cell'"),
    ("digits-imbalance-below-one", ["train", "data.imbalance=0.5"], {}, "digits_binary: imbalance must be >= 1"),
    # every value, in every group (finite, in range, named by its key)
    ("lr-nan", ["train", "optim.lr=nan"], {}, "optim.lr must be a finite number, got nan"),
    ("momentum-above-one", ["train", "optim.momentum=1.5"], {}, "optim.momentum must lie in [0, 1), got 1.5"),
    ("nesterov-without-momentum", ["train", "optim.nesterov=true", "optim.momentum=0"], {},
     "optim.nesterov=true needs optim.momentum > 0"),
    ("adam-beta-one", ["train", "optim=adam", "optim.beta2=1"], {}, "optim.beta2 must lie in [0, 1), got 1.0"),
    ("multistep-gamma-negative", ["train", "optim.schedule=multistep", "optim.gamma=-0.1"], {},
     "optim.gamma (the multistep decay factor) must be > 0, got -0.1"),
    ("milestone-zero", ["train", "optim.schedule=multistep", "optim.milestones=[0,5]"], {},
     "optim.milestones must be epochs >= 1, got [0, 5]"),
    ("weight-decay-infinite", ["train", "optim.weight_decay=inf"], {}, "optim.weight_decay must be a finite number"),
    ("poly-alpha-infinite", ["train", "loss=poly", "loss.alpha=inf"], {}, "loss.alpha must be a finite number, got inf"),
    ("poly-beta-nan", ["train", "loss=poly", "loss.beta=nan"], {}, "loss.beta must be a finite number, got nan"),
    ("ldam-s-infinite", ["train", "loss=ldam", "loss.s=inf"], {}, "loss.s must be a finite number, got inf"),
    ("la-tau-infinite", ["train", "loss=la", "loss.tau=-inf"], {}, "loss.tau must be a finite number, got -inf"),
    ("focal-gamma-infinite", ["train", "loss=focal", "loss.gamma=inf"], {}, "loss.gamma must be a finite number"),
    ("rgd-temperature-infinite", ["train", "weighting=rgd", "weighting.temperature=inf"], {},
     "weighting.temperature must be a finite number, got inf"),
    ("rgd-clip-infinite", ["train", "weighting=rgd", "weighting.clip=inf"], {},
     "weighting.clip must be a finite number, got inf"),
    ("seed-beyond-64-bits", ["train", "seed=100000000000000000000"], {},
     "seed must be an integer in 0..2**63-1, got 100000000000000000000"),
    ("epochs-beyond-64-bits", ["train", "train.epochs=100000000000000000000"], {},
     "train.epochs must be an integer within 64 bits"),
    ("split-seed-negative", ["train", "data.split_seed=-1"], {}, "data.split_seed must be an integer in 0..2**63-1"),
    ("imbalance-infinite", ["train", "data.imbalance=inf"], {}, "data.imbalance must be a finite number, got inf"),
    ("divergence-factor-below-one", ["train", "train.divergence=0.5"], {},
     "train.divergence must be 0 (off) or a finite factor > 1, got 0.5"),
    ("checkpoint-interval-infinite", ["train", "checkpoint.interval=inf"], {},
     "checkpoint.interval must be a finite number, got inf"),
    ("search-unknown-objective", ["train", "experiment=autobalance", "search.objective=balanced"], {},
     "unknown objective 'balanced'; choose one of: balanced_ce"),
    ("search-every-zero", ["train", "experiment=autobalance", "search.every=0"], {}, "procedure.every must be >= 1, got 0"),
    ("search-retrain-on", ["train", "experiment=autobalance", "search.retrain_on=val"], {},
     "procedure.retrain_on must be 'train+val' or 'train', got 'val'"),
    ("search-upper-lr-negative", ["train", "experiment=autobalance", "search.upper_lr=-0.1"], {},
     "procedure.upper_lr must be > 0, got -0.1"),
    ("search-start-after-end", ["train", "experiment=autobalance", "train.epochs=5", "search.start_epoch=5"], {},
     "procedure.start_epoch must lie in [0, epochs=5), got 5"),
    ("search-nothing-to-learn", ["train", "search.enabled=true"], {},
     "procedure=autobalance: loss=ce has nothing to learn; search with loss=autobalance"),
    ("search-with-a-weighting", ["train", "experiment=autobalance", "weighting=group_dro"], {},
     "procedure=autobalance trains with weighting=erm and sampler=none"),
    ("search-objective-needs-attribute", ["train", "experiment=autobalance", "search.objective=deo_mix"], {},
     "procedure.objective=deo_mix: objective CE_deo needs groups g = 2*y + a"),
    ("sweep-bad-value-in-its-last-run", ["train", "-m", "optim.momentum=0.5,0.9,1"], {},
     "optim.momentum must lie in [0, 1), got 1.0"),
    # nonsense that would otherwise run
    ("out-empty", ["train", "out="], {}, "out must name a results folder (default: results), got an empty string"),
    ("out-inside-a-file", ["train", "out={dir}/f/results"], {"f": _text("not a folder")},
     "out={dir}/f/results cannot be made: {dir}/f is a file, not a folder"),
    ("name-escapes-the-layout", ["train", "name=.."], {}, "name must be a label for the run's folder, not '..'"),
    ("sweep-of-nothing", ["train", "-m", "seed=range(0)"], {},
     "the sweep 'seed=range(0)' has no values; a sweep needs at least one"),
    ("ensemble-one-seed-twice", ["train", "-m", "seed=0,0", "ensemble=true"], {},
     "runs 1 and 2 of the sweep are the same run"),
    ("select-deo-without-attribute", ["train", "train.select=best:deo"], {},
     "train.select=best:deo cannot select on data=digits_binary: the metric is undefined there"),
    ("one-key-twice", ["train", "loss=poly", "loss.alpha=2", "loss.alpha=3"], {},
     "loss.alpha is set twice ('loss.alpha=2' and 'loss.alpha=3'); give each key once"),
    # unknown names
    ("unknown-loss", ["train", "loss=focall"], {}, "unknown loss 'focall'; choose one of: autobalance, cdt, ce,"),
    ("unknown-weighting", ["train", "weighting=dro"], {}, "unknown weighting 'dro'; choose one of: cb, chain,"),
    ("unknown-model", ["train", "model=resnet152"], {}, "unknown model 'resnet152'; choose one of: cnn, convnet,"),
    ("unknown-data", ["train", "data=cifar10"], {}, "unknown data 'cifar10'; choose one of: celeba,"),
    ("unknown-sampler", ["train", "sampler=oversample"], {}, "unknown sampler 'oversample'; choose one of: balanced,"),
    ("unknown-optim", ["train", "optim=adamw"], {}, "unknown optim 'adamw'; choose one of: adam, sgd"),
    ("unknown-experiment", ["train", "experiment=wang_poly_iw_exp_es_x"], {},
     "unknown experiment 'wang_poly_iw_exp_es_x'; choose one of: ab_waterbirds,"),
    ("unknown-option-of-method", ["train", "loss=poly", "loss.gamma=1"], {},
     "loss 'poly' has no option 'gamma'; its options: alpha, beta, continuity"),
    ("unknown-top-level-key", ["train", "epochs=3"], {}, "top-level config has no key 'epochs'; its keys: data,"),
    ("unknown-train-key", ["train", "train.epoch=3"], {}, "train has no key 'epoch'; its keys: epochs, batch_size"),
    ("unknown-command", ["fit"], {}, "invalid choice: 'fit'"),
    # wrong types
    ("string-for-int", ["train", "train.epochs=ten"], {}, "train.epochs: Value 'ten' of type 'str' could not be"),
    ("list-for-scalar", ["train", "loss=poly", "loss.alpha=[1,2]"], {},
     "loss.alpha: Value '[1, 2]' of type 'list' could not be converted to Float"),
    ("list-for-seed", ["train", "seed=[1,2]"], {}, "seed: Value '[1, 2]' of type 'list'"),
    # override syntax
    ("double-equals", ["train", "loss==poly"], {}, "cannot parse overrides: extraneous input '='"),
    ("no-equals", ["train", "loss"], {}, "cannot parse overrides: missing EQUAL"),
    ("sweep-without-m", ["train", "seed=1,2"], {}, "a sweep (a,b or range()) needs the -m flag"),
    ("unclosed-parenthesis", ["train", "loss=poly("], {}, "cannot parse overrides: no viable alternative at input"),
    ("override-without-key", ["train", "=3"], {}, "override '=3' has no key; write key=value"),
    ("plus-adds-unread-key", ["train", "+nope=1"], {}, "'+nope=1' adds a key shiftkit does not read: top-level"),
    ("plus-adds-unread-option", ["train", "loss=poly", "+loss.gamma=1"], {},
     "adds a key shiftkit does not read: loss 'poly' has no option 'gamma'; its options: alpha"),
    ("negative-checkpoint-interval", ["train", "checkpoint.interval=-1"], {}, "checkpoint.interval must be >= 0"),
    # tabular files
    ("tabular-no-path", ["train", "data=tabular"], {}, "tabular: set data.path=<a .csv or .parquet file>"),
    ("tabular-missing-file", ["train", "data=tabular", "data.path={dir}/absent.csv"], {}, "tabular: no file "),
    ("tabular-label-column-missing", ["train", "data=tabular", "data.path={dir}/t.csv", "data.label=target"],
     {"t.csv": _csv(_table)}, "no column 'target' in "),
    ("tabular-empty-file", ["train", "data=tabular", "data.path={dir}/t.csv"], {"t.csv": _text("")},
     "t.csv is empty; it needs a header line and data rows"),
    ("tabular-header-only", ["train", "data=tabular", "data.path={dir}/t.csv"], {"t.csv": _text("a,b,label\n")},
     "t.csv has a header but no data row"),
    ("tabular-text-in-numeric-column", ["train", "data=tabular", "data.path={dir}/t.csv"],
     {"t.csv": _csv(_with("a", 3, "1,5"))},
     "column 'a' of {dir}/t.csv holds numbers but 1 non-numeric value(s), the first '1,5' on line 5"),
    ("tabular-unknown-split-value", ["train", "data=tabular", "data.path={dir}/t.csv", "data.split=part"],
     {"t.csv": _csv(_with("part", 0, "tst"))}, "split column 'part' of {dir}/t.csv holds tst; use 0/1/2 or"),
    ("tabular-nan-feature", ["train", "data=tabular", "data.path={dir}/t.csv"], {"t.csv": _csv(_with("b", 7, np.nan))},
     "column 'b' of {dir}/t.csv has 1 missing value(s) (NaN), the first on line 9; clean the file or set data.nan=drop"),
    ("tabular-infinite-feature", ["train", "data=tabular", "data.path={dir}/t.csv"],
     {"t.csv": _csv(_with("b", 7, "inf"))},
     "column 'b' of {dir}/t.csv holds 1 infinite value(s), the first on line 9; replace them"),
    ("tabular-single-row", ["train", "data=tabular", "data.path={dir}/t.csv"], {"t.csv": _text("a,label\n0.5,1\n")},
     "label column 'label' of {dir}/t.csv holds a single class (1); a classifier needs at least 2"),
    ("tabular-single-class", ["train", "data=tabular", "data.path={dir}/t.csv"],
     {"t.csv": _csv(lambda: _table(label=0))}, "holds a single class (0); a classifier needs at least 2"),
    ("tabular-label-ids-skip-classes", ["train", "data=tabular", "data.path={dir}/t.csv"],
     {"t.csv": _csv(lambda: _table(label=np.arange(40) % 2 * 5))},
     "holds integer ids up to 5 but no row of class(es) 1, 2, 3, 4; number the classes 0..K-1"),
    ("tabular-class-absent-from-train", ["train", "data=tabular", "data.path={dir}/t.csv", "data.split=part"],
     {"t.csv": _csv(_no_train_class_1)}, "the training split has no example of class(es) [1] of 2"),
    ("tabular-too-few-rows-for-val", ["train", "data=tabular", "data.path={dir}/t.csv"],
     {"t.csv": _text("a,label\n0.1,0\n0.2,1\n0.3,0\n0.4,1\n")},
     "leaves no validation row; add rows or raise data.val_fraction (now 0.2)"),
    ("tabular-nan-drop-leaves-nothing", ["train", "data=tabular", "data.path={dir}/t.csv", "data.nan=drop"],
     {"t.csv": _text("a,label\n,0\n,1\n")}, "every row of {dir}/t.csv has a missing value; data.nan=drop leaves no row"),
    ("tabular-val-fraction-zero", ["train", "data=tabular", "data.path={dir}/t.csv", "data.val_fraction=0"],
     {"t.csv": _csv(_table)}, "leaves no validation row; set data.val_fraction > 0"),
    # image data: missing roots name the files expected; labels out of range
    ("idx-missing-root", ["train", "data=fmnist_binary", "data.root={dir}/nowhere"], {},
     "fashion-mnist: no data found (looked in {dir}/nowhere; expected train-images-idx3-ubyte"),
    ("cifar-missing-root", ["train", "data=cifar10_binary", "data.root={dir}/nowhere"], {},
     "cifar10: no data found (looked in {dir}/nowhere; expected data_batch_1"),
    ("celeba-missing-root", ["train", "data=celeba", "data.root={dir}/nowhere"], {},
     "celeba: no data found (looked in {dir}/nowhere; expected img_align_celeba). CelebA needs list_attr_celeba"),
    ("waterbirds-missing-root", ["train", "data=waterbirds", "data.root={dir}/nowhere"], {},
     "waterbirds: no data found (looked in {dir}/nowhere; expected metadata.csv)"),
    ("idx-label-out-of-range", ["train", "data=fmnist_lt", "data.root={dir}/fm", "data.n_max=8", "data.rho=2",
                                "data.val_per_class=2"],
     {"fm": _idx_with_label(12)}, "fm/train-labels-idx1-ubyte: label 12 at position 7 is outside 0..9"),
    # shapes
    ("image-model-on-tabular", ["train", "data=tabular", "data.path={dir}/t.csv", "model=cnn"],
     {"t.csv": _csv(_table)}, "model 'cnn' needs image input (C, H, W), got input_shape"),
    ("convnet-on-8x8-digits", ["train", "model=convnet"], {},
     "model 'convnet' needs images of at least 20x20 with >= 1 channel, got input_shape (1, 8, 8)"),
    # empty groups where a method needs every group
    ("vs-group-empty-train-group", ["train", "data=tabular", "data.path={dir}/t.csv", "data.split=part",
                                    "data.group=grp", "loss=vs_group"],
     {"t.csv": _csv(_no_train_group_3)},
     "loss 'vs_group': every entry of group_counts must be > 0, got [5, 10, 5, 0]: group(s) 3 have no training"),
    # devices
    ("device-cuda-unavailable", ["train", "device=cuda"], {}, "device 'cuda' is not available here"),
    ("device-unknown", ["train", "device=tpu"], {}, "device 'tpu' is not available here"),
    # report
    ("report-dir-without-runs", ["report", "{dir}"], {}, "no finished runs (run.json with a done marker) under"),
    ("report-missing-dir", ["report", "{dir}/nowhere"], {}, "no such directory: {dir}/nowhere"),
    ("report-not-a-record", ["report", "{dir}/runs"], {"runs/r": _not_a_record},
     "no finished runs (run.json with a done marker) under {dir}/runs; 1 damaged run(s) skipped, the first:"
     " {dir}/runs/r/run.json is not a shiftkit run record (a JSON list)"),
    ("report-cut-off-metrics", ["report", "{dir}/runs"], {"runs/r": _run_record},
     "1 damaged run(s) skipped, the first: {dir}/runs/r/metrics.jsonl: line 2 is not valid JSON"),
    ("report-unknown-metric", ["report", "{dir}", "--metrics", "test/worst_acc"], {},
     "unknown metric 'worst_acc'; choose one of: acc, balanced_acc"),
    ("report-bad-which", ["report", "{dir}", "--which", "best"], {}, "--which must be 'selected' or 'final'"),
    # reproduce
    ("reproduce-unknown-name", ["reproduce", "wang2022-fig9"], {}, "unknown reproduction 'wang2022-fig9'; choose one"),
    ("reproduce-unknown-set-key", ["reproduce", "wang2022-fig1", "--out", "{dir}/out", "--set", "seeds=3"], {},
     "--set takes key=value with a key among: alpha, checkpoints, epochs, lr, seed; got 'seeds=3'"),
    ("reproduce-set-wrong-type", ["reproduce", "wang2022-fig1", "--out", "{dir}/out", "--set", "epochs=many"], {},
     "--set epochs: expected "),
    ("reproduce-unknown-scale", ["reproduce", "wang2022-fig1", "--out", "{dir}/out", "--scale", "huge"], {},
     "unknown scale 'huge'; choose one of: tiny, quick, paper"),
]
# fmt: on

#: Rows that also run as a real ``shiftkit`` process.
SUBPROCESS = ["tabular-nan-feature", "device-cuda-unavailable", "report-dir-without-runs", "reproduce-unknown-set-key"]


def _argv(case: tuple, work: Path) -> list:
    _, argv, _, _ = case
    if argv[0] == "train":  # the row's own values win
        own = {a.split("=", 1)[0] for a in argv[1:]}
        argv = [argv[0], *(a for a in TRAIN if a.split("=", 1)[0] not in own), *argv[1:]]
    return [a.replace("{dir}", str(work)) for a in argv]


def _prepare(case: tuple, work: Path, monkeypatch) -> Dict[Path, float]:
    """Write the row's files into ``work`` (the working directory); return what ``work`` holds."""
    if case[0] == "device-cuda-unavailable" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("SHIFTKIT_CACHE", str(work.parent / "cache"))
    monkeypatch.delenv("SHIFTKIT_DATA", raising=False)
    for name, write in case[2].items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        write(work / name)
    return _snapshot(work)


def _snapshot(work: Path) -> Dict[Path, float]:
    return {p: p.stat().st_mtime_ns for p in work.rglob("*")}


def _check(case: tuple, work: Path, before: Dict[Path, float], code: int, stdout: str, stderr: str) -> None:
    fragment = case[3].replace("{dir}", str(work))
    assert code == 2, stderr
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("shiftkit: error: "), stderr
    assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    assert stdout == "", stdout
    assert _snapshot(work) == before, "files were written or changed"  # no out dir, run.json, done, report
    assert not (work / "out").exists()


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    before = _prepare(case, work, monkeypatch)
    code = main(_argv(case, work))
    out, err = capsys.readouterr()
    _check(case, work, before, code, out, err)


@pytest.mark.parametrize("name", SUBPROCESS)
def test_bad_input_as_a_process_exits_with_status_2(name, tmp_path, monkeypatch):
    case = next(c for c in CASES if c[0] == name)
    work = tmp_path / "work"
    before = _prepare(case, work, monkeypatch)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    res = subprocess.run(
        [sys.executable, "-m", "shiftkit.cli", *_argv(case, work)],
        cwd=work,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    _check(case, work, before, res.returncode, res.stdout, res.stderr)


def test_the_catalogue_is_large_and_distinct():
    ids = [c[0] for c in CASES]
    assert len(ids) >= 24 and len(set(ids)) == len(ids)
    assert len({c[3] for c in CASES}) == len(CASES)  # every row expects its own message
