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


def test_paired_p_matches_scipy_one_sided_ttest_rel():  # SPEC §9.1
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
    assert ("test", "worst_group_acc") not in [tuple(c) for c in json.loads((tmp_path / "report.json").read_text())["columns"]]
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
