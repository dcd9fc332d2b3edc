"""Reports: statistics against scipy, grouping over seeds, curves, and the files written."""

import json

import pytest
from scipy import stats

from shiftkit import report
from shiftkit.errors import ShiftkitError


def _fake_run(root, method, seed, key, test_bal, epochs=(1, 2), data="toy"):
    run = root / method / f"seed{seed}"
    run.mkdir(parents=True)
    metrics = {"train": {"acc": 1.0}, "val": {"balanced_acc": 0.5}, "test": {"balanced_acc": test_bal, "deo": None}}
    record = {
        "method": method, "group_key": key, "config": {"seed": seed}, "started": seed,
        "data": {"name": data, "counts": {"train": {"class_counts": [5, 1], "group_counts": [5, 1]}}},
        "final": metrics, "selected": metrics,
    }
    (run / "run.json").write_text(json.dumps(record))
    lines = [json.dumps({"epoch": e, **{k: {"balanced_acc": test_bal * e / epochs[-1]} for k in ("train", "val", "test")}}) for e in epochs]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (run / "done").write_text("")


def test_mean_sem_matches_scipy():
    values = [0.61, 0.58, 0.64, 0.6]
    mean, sem = report.mean_sem(values)
    assert mean == pytest.approx(sum(values) / 4)
    assert sem == pytest.approx(stats.sem(values))
    assert report.mean_sem([0.3]) == (0.3, None)


def test_paired_p_matches_scipy_one_sided_ttest_rel():  # docs/METHODS.md#statistics
    a = {0: 0.61, 1: 0.66, 2: 0.62, 3: 0.70, 9: 0.5}
    b = {0: 0.60, 1: 0.61, 2: 0.63, 3: 0.64}
    expected = stats.ttest_rel([a[s] for s in range(4)], [b[s] for s in range(4)], alternative="greater").pvalue
    assert report.paired_p(a, b) == pytest.approx(expected)
    assert report.paired_p(b, a, lower_is_better=True) == pytest.approx(expected)
    assert report.paired_p({0: 1.0}, {0: 0.0}) is None
    assert report.paired_p({0: 1.0, 1: 1.0}, {0: 1.0, 1: 1.0}) == 0.5


def test_report_groups_seeds_writes_files_and_never_merges_different_configs(tmp_path):
    for seed, value in enumerate([0.6, 0.7, 0.8]):
        _fake_run(tmp_path, "ce", seed, "k1", value)
        _fake_run(tmp_path, "poly", seed, "k2", value + 0.1)
    _fake_run(tmp_path, "poly-other", 0, "k3", 0.2)
    (tmp_path / "poly-other" / "seed0" / "run.json").write_text(
        (tmp_path / "poly-other" / "seed0" / "run.json").read_text().replace('"poly-other"', '"poly"')
    )
    unfinished = tmp_path / "ce" / "seed7"
    unfinished.mkdir()
    (unfinished / "run.json").write_text("{}")  # no done marker: ignored
    tables = report.report(tmp_path, baseline="ce")["toy"]
    by_method = {row["method"]: row for row in tables}
    assert set(by_method) == {"ce", "poly [k2]", "poly [k3]"}
    assert by_method["ce"]["n"] == 3 and by_method["ce"]["test/balanced_acc"][0] == pytest.approx(0.7)
    assert by_method["poly [k2]"]["p"] == 0.0  # a constant positive difference
    columns = json.loads((tmp_path / "report.json").read_text())["columns"]["toy"]
    assert ("test", "worst_group_acc") not in [tuple(c) for c in columns]
    for png in ("report.png", "curves.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    lines = report.curves(report.load_runs(tmp_path))["toy"]["ce"]
    assert [round(p[1], 6) for p in lines] == [0.35, 0.7]


def test_report_errors(tmp_path):
    with pytest.raises(ShiftkitError, match="no finished runs"):
        report.report(tmp_path)
    _fake_run(tmp_path, "ce", 0, "k", 0.5)
    with pytest.raises(ShiftkitError, match="no method 'nope'"):
        report.report(tmp_path, baseline="nope")
    with pytest.raises(ShiftkitError, match="unknown metric"):
        report.parse_columns(["test/nope"])


def test_printed_tables_show_labels_with_brackets_verbatim(tmp_path):
    from rich.console import Console

    for key in ("fff4e1aa", "beef00aa"):  # hash suffixes rich would otherwise read as style tags
        _fake_run(tmp_path / key, "chain(schemes=[iw,group_dro])", 0, key, 0.5)
    console = Console(record=True, width=200)
    report.report(tmp_path, console=console, show_curves=True)
    text = console.export_text()
    for key in ("fff4e1", "beef00"):
        assert text.count(f"chain(schemes=[iw,group_dro]) [{key}]") == 2  # the table and the curves


def _composed_run(root, overrides, seed, test_bal, epochs=(1, 2), group_counts=(5, 1)):
    """A finished run's files with a real composed config (labels, folders and pairing read it)."""
    from omegaconf import OmegaConf

    from shiftkit.config import compose
    from shiftkit.runner import EXECUTION_KEYS, config_hash, run_dir
    from shiftkit import labels

    plain = OmegaConf.to_container(compose([*overrides, f"seed={seed}", f"out={root}"]), resolve=True)
    run = run_dir(plain)
    run.mkdir(parents=True)
    metrics = {"train": {"acc": 1.0}, "val": {"balanced_acc": 0.5},
               "test": {"balanced_acc": test_bal, "worst_group_acc": test_bal - 0.1, "deo": None}}
    record = {
        "method": labels.method(plain), "group_key": config_hash(plain, drop=(*EXECUTION_KEYS, "seed")),
        "config": plain, "started": seed, "final": metrics, "selected": metrics, "selected_epoch": epochs[-1],
        "data": {"name": plain["data"]["name"],
                 "counts": {"train": {"class_counts": [5, 1], "group_counts": list(group_counts)}}},
    }
    (run / "run.json").write_text(json.dumps(record))
    lines = [json.dumps({"epoch": e, "test": {"balanced_acc": test_bal * e / epochs[-1]}}) for e in epochs]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (run / "done").write_text("")
    return run


def test_runs_on_two_csv_files_land_in_two_folders_and_two_tables(tmp_path):
    for seed in range(2):
        for name in ("adult", "bank"):
            _composed_run(tmp_path, ["data=tabular", f"data.path=/data/{name}/train.csv"], seed, 0.6)
    folders = sorted(p.relative_to(tmp_path).parts[:2] for p in tmp_path.glob("*/*/seed*"))
    assert folders == [("tabular(path=adult_train.csv)", "ce+erm")] * 2 + [("tabular(path=bank_train.csv)", "ce+erm")] * 2
    tables = report.report(tmp_path)
    assert set(tables) == {"tabular(path=adult/train.csv)", "tabular(path=bank/train.csv)"}
    assert all(rows[0]["method"] == "ce+erm" and rows[0]["n"] == 2 for rows in tables.values())


def test_presets_and_scales_tell_runs_apart(tmp_path):
    for preset in ("wang_poly_iw", "wang_group_poly_iw", "wang_fig5_poly_iw"):
        _composed_run(tmp_path, [f"experiment={preset}", "train.epochs=2"], 0, 0.6)
    _composed_run(tmp_path, ["experiment=wang_poly_iw", "train.epochs=2", "scale=tiny"], 0, 0.6)
    rows = report.report(tmp_path)["digits_binary"]
    assert sorted(r["method"] for r in rows) == ["Poly+IW [wang_fig5_poly_iw]", "Poly+IW [wang_group_poly_iw]",
                                                 "Poly+IW [wang_poly_iw, tiny]", "Poly+IW [wang_poly_iw]"]
    assert (tmp_path / "digits_binary" / "Poly+IW@wang_poly_iw@tiny").is_dir()


def test_one_label_function_for_progress_launcher_and_report_lines(tmp_path):
    from omegaconf import OmegaConf

    from shiftkit import labels
    from shiftkit.sweep import _label
    from shiftkit.config import compose
    from shiftkit.launch import _line

    overrides = ["experiment=wang_poly_iw", "data.imbalance=100", "train.epochs=2"]
    cfg = compose(overrides)
    plain = OmegaConf.to_container(cfg, resolve=True)
    expected = "Poly+IW [wang_poly_iw] on digits_binary(imbalance=100)"
    assert labels.label(plain, with_data=True) == _label(cfg) == expected
    record = {"config": plain, "failed": "on purpose"}
    assert _line(record).startswith(f"{expected} seed 0: failed")
    run = _composed_run(tmp_path, overrides, 0, 0.5)
    assert report.report(tmp_path) == {"digits_binary(imbalance=100)": report.report(tmp_path)["digits_binary(imbalance=100)"]}
    assert run.parent.name == "Poly+IW@wang_poly_iw"


def test_labels_shared_by_different_configs_say_what_differs(tmp_path):
    for seed in range(2):
        _composed_run(tmp_path, ["name=mine", "train.epochs=30"], seed, 0.6)
        _composed_run(tmp_path, ["name=mine", "train.epochs=400"], seed, 0.7)
    methods = [r["method"] for r in report.report(tmp_path)["digits_binary"]]
    assert methods == ["mine [train.epochs=30]", "mine [train.epochs=400]"]


def test_baseline_pairs_only_runs_that_trained_alike_and_takes_a_prefix(tmp_path):
    from rich.console import Console

    for seed, value in enumerate([0.6, 0.7, 0.8]):
        _composed_run(tmp_path, ["name=ERM-long", "train.epochs=400"], seed, value)
        _composed_run(tmp_path, ["name=Poly", "loss=poly", "train.epochs=30"], seed, value + 0.1)
        _composed_run(tmp_path, ["name=IW", "weighting=iw", "train.epochs=400", "train.select=best:balanced_acc"],
                      seed, value + 0.05)
    console = Console(record=True, width=250)
    rows = {r["method"]: r for r in report.report(tmp_path, baseline="erm", console=console)["digits_binary"]}
    assert rows["ERM-long"]["baseline"] and rows["IW"]["p"] == 0.0  # the method may choose its epoch
    assert rows["Poly"]["p"] is None and rows["Poly"]["unpaired"] == "train.epochs 30 vs 400"
    text = console.export_text()
    assert "Poly is not paired with ERM-long: its training differs (train.epochs 30 vs 400)" in text
    assert "--pair-mismatched" in text
    rows = {r["method"]: r for r in report.report(tmp_path, baseline="ERM", pair_mismatched=True)["digits_binary"]}
    assert rows["Poly"]["p"] == 0.0 and "unpaired" not in rows["Poly"]
    _composed_run(tmp_path, ["name=ERM-short", "train.epochs=30"], 0, 0.5)
    with pytest.raises(ShiftkitError, match="'ERM' matches 2 methods in digits_binary: ERM-long, ERM-short; give more"):
        report.report(tmp_path, baseline="ERM")


def test_curves_show_every_methods_evaluations_and_columns_are_dropped_per_table(tmp_path):
    from rich.console import Console

    for seed in range(5):
        _composed_run(tmp_path, ["name=long"], seed, 0.7, epochs=tuple(range(10, 101, 10)), group_counts=(3, 2, 1))
    _composed_run(tmp_path, ["name=short"], 0, 0.6, epochs=(10, 20, 30), group_counts=(3, 2, 1))
    _composed_run(tmp_path, ["name=other", "data=digits_lt"], 0, 0.6)  # its groups are its classes
    console = Console(record=True, width=200)
    report.report(tmp_path, show_curves=True, console=console)
    text = console.export_text()
    assert "digits_binary: mean ± s.e.m. over 5 seeds (1 for short)" in text
    short = [line for line in text.splitlines() if line.startswith("│ short")][-1]  # its curve
    assert short.count("0.") == 3  # 10, 20 and 30: all of its evaluations
    columns = json.loads((tmp_path / "report.json").read_text())["columns"]
    assert ["test", "worst_group_acc"] in columns["digits_binary"]  # its groups are not its classes
    assert ["test", "worst_group_acc"] not in columns["digits_lt"]


def test_export_formats(tmp_path, capsys):
    for seed, value in enumerate([0.6, 0.7]):
        _composed_run(tmp_path, ["name=A_1"], seed, value)
        _composed_run(tmp_path, ["name=B", "loss=poly"], seed, value + 0.1)
    capsys.readouterr()
    report.report(tmp_path, baseline="A", fmt="csv")
    import csv

    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert [r["method"] for r in rows] == ["A_1", "B"] and rows[1]["p"] == "0.0"
    assert float(rows[0]["test/balanced_acc"]) == pytest.approx(0.65)
    assert float(rows[0]["test/balanced_acc_sem"]) == pytest.approx(0.05)
    report.report(tmp_path, fmt="markdown")
    text = capsys.readouterr().out
    assert "| method | test balanced acc |" in text and "| B | **0.750 ± 0.050** |" in text
    report.report(tmp_path, fmt="latex")
    text = capsys.readouterr().out
    assert r"A\_1 & $0.650 \pm 0.050$" in text and r"$\mathbf{0.750 \pm 0.050}$" in text and r"\toprule" in text
    assert r"mean $\pm$ s.e.m." in text and r"\mathbf{1.000" not in text  # a tie stands out nowhere
    with pytest.raises(ShiftkitError, match="--format must be one of"):
        report.report(tmp_path, fmt="html")


def test_curve_colours_are_never_reused():
    from shiftkit.plots import colours

    for n in (3, 10, 11, 20, 21, 40):
        assert len({tuple(c) for c in colours(n)}) == n


def test_finished_runs_are_logged_to_tensorboard_from_their_files(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = _composed_run(tmp_path, ["name=A"], 0, 0.6, epochs=(1, 2, 3))
    for _ in range(2):  # a repeated command leaves one copy
        report.report(tmp_path, log="tensorboard")
    below = tmp_path / "tensorboard" / run.relative_to(tmp_path)
    events = list(below.glob("events.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(below))
    acc.Reload()
    assert [round(e.value, 6) for e in acc.Scalars("test/balanced_acc")] == [0.2, 0.4, 0.6]


def test_finished_runs_are_logged_to_mlflow_once(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    for name in ("A", "B"):
        _composed_run(tmp_path, [f"name={name}"], 0, 0.6, epochs=(1, 2))
    runs = report.load_runs(tmp_path)
    assert report.log_runs(runs, tmp_path, "mlflow") == 2
    assert report.log_runs(runs, tmp_path, "mlflow") == 0  # already there
    client = MlflowClient(f"sqlite:///{(tmp_path / 'mlflow.db').as_posix()}")
    found = client.search_runs([client.get_experiment_by_name("shiftkit").experiment_id])
    assert sorted(r.info.run_name for r in found) == ["A seed 0", "B seed 0"]
    assert all(r.info.status == "FINISHED" and r.data.metrics["selected/test/balanced_acc"] == 0.6 for r in found)


def test_runs_of_an_earlier_version_pair_with_new_ones(tmp_path):
    """A record written before an option existed lacks it; at its old default it is no difference."""
    from shiftkit.report import differences

    for seed in range(2):
        old = _composed_run(tmp_path, ["name=old"], seed, 0.5)
        record = json.loads((old / "run.json").read_text())
        del record["config"]["model"]["freeze"], record["config"]["preset"]
        (old / "run.json").write_text(json.dumps(record))
        _composed_run(tmp_path, ["name=new", "loss=poly"], seed, 0.6)
    rows = {r["method"]: r for r in report.report(tmp_path, baseline="old")["digits_binary"]}
    assert rows["new"]["p"] == 0.0 and "unpaired" not in rows["new"]
    assert differences({"model": {"width": 8}}, {"model": {"width": 16}}) == ["model.width 8 vs 16"]
