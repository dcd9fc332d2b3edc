"""Seeded random hyperparameter search (shiftkit.hparams, ``shiftkit sweep``) and model selection across
runs (shiftkit.report_select, ``shiftkit report --select``)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from shiftkit import hparams
from shiftkit.cli import main
from shiftkit.config_schema import GROUPS
from shiftkit.errors import ShiftkitError
from shiftkit.registry import hyperparameters
from shiftkit.report_select import criterion, select

TINY = ["train.epochs=2", "train.eval_every=1", "model.width=8", "device=cpu"]


# ---- the space's forms ------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_every_form_draws_inside_its_range(seed):
    rng = np.random.RandomState(seed)
    assert 1e-3 <= hparams.parse("loguniform(1e-3, 1e-1)")(rng) <= 1e-1
    assert -1 <= hparams.parse("uniform(-1, 2)")(rng) <= 2
    value = hparams.parse("intuniform(2, 4)")(rng)
    assert isinstance(value, int) and 2 <= value <= 4
    value = hparams.parse("intloguniform(1, 100)")(rng)
    assert isinstance(value, int) and 1 <= value <= 100
    assert hparams.parse("choice('a', 'b')")(rng) in ("a", "b")


def test_log_uniform_is_uniform_in_the_exponent():
    rng = np.random.RandomState(0)
    exponents = [math.log10(hparams.parse("loguniform(1e-4, 1)")(rng)) for _ in range(4000)]
    assert abs(np.mean(exponents) - (-2.0)) < 0.05
    assert abs(np.mean([e < -3 for e in exponents]) - 0.25) < 0.03


def test_intuniform_reaches_both_ends():
    rng = np.random.RandomState(1)
    assert {hparams.parse("intuniform(1, 3)")(rng) for _ in range(200)} == {1, 2, 3}


@pytest.mark.parametrize("spec", ["normal(0, 1)", "uniform(2, 1)", "loguniform(0, 1)", "uniform(1)", "choice()",
                                  "uniform(a, b)", "loguniform(1, 2", ""])
def test_a_malformed_space_is_one_line(spec):
    with pytest.raises(ShiftkitError, match="search space"):
        hparams.parse(spec)


# ---- every declared space is valid: a contract over every registered name --------------------------
DECLARED = [(g, n) for g, reg in GROUPS.items() for n in reg.names() if getattr(reg.get(n), "search_space", None)]


def test_the_methods_users_compare_declare_spaces():
    declared = {n for _, n in DECLARED}
    assert {"sgd", "adam", "iw", "la", "vs", "ldam"} <= declared


@pytest.mark.parametrize("group,name", DECLARED, ids=[f"{g}-{n}" for g, n in DECLARED])
def test_a_declared_space_names_real_options_and_its_draws_build(group, name):
    registry = GROUPS[group]
    declared = registry.get(name).search_space
    assert set(declared) <= set(hyperparameters(registry.get(name))), "a searched option the class does not have"
    space = hparams.space(group, name)
    for trial in range(1, 6):
        drawn = hparams.draw(space, name, trial)
        options = {k.split(".", 1)[1]: v for k, v in drawn.items()}
        if group in ("loss", "weighting", "sampler"):
            registry.build(name, **options, class_counts=[30, 10], group_counts=[20, 10, 5, 5])
        elif group == "optim":
            registry.build(name, **options)
        else:  # a procedure: its own checks of the values, on a whole config
            from omegaconf import OmegaConf

            from shiftkit.config import compose

            plain = OmegaConf.to_container(compose([f"procedure={name}", *hparams.trial_overrides(drawn)]), resolve=True)
            registry.build(name, **options).validate(plain)


# ---- draws --------------------------------------------------------------------------------------------
SPACE = {"loss.tau": "uniform(0.5, 3)", "optim.lr": "loguniform(0.001, 0.1)"}


def test_trial_zero_is_the_defaults_and_later_trials_differ():
    assert hparams.draw(SPACE, "la", 0) == {}
    trials = [hparams.draw(SPACE, "la", t) for t in range(1, 6)]
    assert len({tuple(sorted(t.items())) for t in trials}) == 5


def test_a_keys_draw_does_not_depend_on_the_other_keys_or_the_search_seed_alone():
    alone = hparams.draw({"optim.lr": SPACE["optim.lr"]}, "la", 3)
    assert hparams.draw(SPACE, "la", 3)["optim.lr"] == alone["optim.lr"]
    assert hparams.draw(SPACE, "la", 3, seed=1) != hparams.draw(SPACE, "la", 3, seed=0)
    assert hparams.draw(SPACE, "la", 3) != hparams.draw(SPACE, "vs", 3)


def test_more_trials_extend_a_search():
    short = hparams.plan(["la"], 3, [0, 1], TINY)
    longer = hparams.plan(["la"], 6, [0, 1], TINY)
    assert longer[: len(short)] == short


def test_every_seed_of_a_trial_shares_its_values_and_given_keys_are_not_searched():
    runs = hparams.plan(["la", "poly+iw"], 4, [0, 1, 2], [*TINY, "optim.lr=0.05"])
    assert len(runs) == 2 * 4 * 3
    for run in runs:
        assert "optim.lr" not in run["values"] and "optim.lr=0.05" in run["overrides"]
        assert run["overrides"][-1] == f"seed={run['seed']}"
    by_trial = {}
    for run in runs:
        by_trial.setdefault((run["method"], run["trial"]), set()).add(tuple(sorted(run["values"].items())))
    assert all(len(v) == 1 for v in by_trial.values())
    assert set(runs[-1]["values"]) == {"loss.alpha", "optim.weight_decay", "weighting.exponent"}  # poly+iw: poly's and iw's


def test_tune_method_leaves_the_optimizer_alone():
    runs = hparams.plan(["la"], 2, [0], TINY, tune="method")
    assert set(runs[-1]["values"]) == {"loss.tau"}


@pytest.mark.parametrize("method,overrides", [
    ("group_dro", ["weighting=group_dro"]),
    ("poly+iw", ["loss=poly", "weighting=iw"]),
    ("autobalance", ["experiment=autobalance"]),
    ("loss=vs+weighting=group_dro", ["loss=vs", "weighting=group_dro"]),
    ("balanced", ["sampler=balanced"]),
])
def test_method_names_resolve_to_overrides(method, overrides):
    assert hparams.method_overrides(method) == overrides


@pytest.mark.parametrize("methods,trials,seeds,overrides,message", [
    (["nope"], 2, [0], [], "cannot tell which method 'nope'"),
    (["la+"], 2, [0], [], "not a method name"),
    (["la"], 0, [0], [], "--trials must be >= 1"),
    (["la"], 2, [], [], "--seeds"),
    ([], 2, [0], [], "--methods"),
    (["la"], 2, [0], ["seed=3"], "sets seed itself"),
    (["ce+ce"], 2, [0], [], "chooses loss more than once"),
])
def test_bad_searches_are_refused(methods, trials, seeds, overrides, message):
    with pytest.raises(ShiftkitError, match=message):
        hparams.plan(methods, trials, seeds, overrides)


def test_seeds_take_a_count_or_a_list():
    assert hparams.seeds_of("3") == [0, 1, 2] and hparams.seeds_of("0,5") == [0, 5]
    for bad in ("x", "0", "-1"):
        with pytest.raises(ShiftkitError, match="--seeds"):
            hparams.seeds_of(bad)


# ---- selection across runs ------------------------------------------------------------------------------
def _record(method: dict, seed: int, val: float, test: float, model="mlp", key=None) -> dict:
    config = {"data": {"name": "digits_binary"}, "model": {"name": model}, "loss": {"name": "la", **method},
              "weighting": {"name": "erm"}, "sampler": {"name": "none"}, "procedure": {"name": "plain"},
              "optim": {"name": "sgd", "lr": 0.01}, "seed": seed, "train": {"epochs": 3}}
    metrics = {"val": {"worst_group_acc": val, "ece": val}, "test": {"worst_group_acc": test, "ece": test}}
    return {"config": config, "group_key": key or f"{model}-{method}", "selected": metrics, "final": metrics,
            "data": {"name": "digits_binary"}}


def test_the_setting_with_the_best_mean_validation_score_is_chosen():
    runs = [_record({"tau": 1.0}, s, v, t) for s, v, t in ((0, 0.6, 0.9), (1, 0.6, 0.9))]
    runs += [_record({"tau": 2.0}, s, v, t) for s, v, t in ((0, 0.9, 0.5), (1, 0.5, 0.5))]  # mean 0.70
    runs += [_record({"tau": 3.0}, s, v, t) for s, v, t in ((0, 0.65, 0.7), (1, 0.65, 0.7))]
    chosen, notes = select(runs, "val/worst_group_acc")
    assert [r["config"]["loss"]["tau"] for r in chosen] == [2.0, 2.0]
    assert notes[0]["chosen"] == "loss.tau=2" and notes[0]["candidates"] == 3 and notes[0]["score"] == pytest.approx(0.7)
    assert chosen[0]["_label"] == "la+erm [selected]"
    oracle, notes = select(runs, "oracle/worst_group_acc")
    assert {r["config"]["loss"]["tau"] for r in oracle} == {1.0} and oracle[0]["_label"].endswith("[oracle]")
    lower, _ = select(runs, "val/ece")  # lower is better
    assert {r["config"]["loss"]["tau"] for r in lower} == {1.0}


def test_ties_go_to_more_seeds_then_to_the_first():
    runs = [_record({"tau": 1.0}, 0, 0.5, 0.1), _record({"tau": 2.0}, 0, 0.5, 0.2), _record({"tau": 2.0}, 1, 0.5, 0.2)]
    assert {r["config"]["loss"]["tau"] for r in select(runs, "val/worst_group_acc")[0]} == {2.0}
    runs = [_record({"tau": 1.0}, 0, 0.5, 0.1), _record({"tau": 2.0}, 0, 0.5, 0.2)]
    assert {r["config"]["loss"]["tau"] for r in select(runs, "val/worst_group_acc")[0]} == {1.0}


def test_runs_that_differ_beyond_the_searched_options_are_not_candidates_of_each_other():
    runs = [_record({"tau": 1.0}, 0, 0.9, 0.9, model="mlp"), _record({"tau": 2.0}, 0, 0.1, 0.1, model="cnn")]
    chosen, notes = select(runs, "val/worst_group_acc")
    assert len(chosen) == 2 and [n["candidates"] for n in notes] == [1, 1]


@pytest.mark.parametrize("text", ["worst_group_acc", "val/nope", "test/acc", "oracle/"])
def test_a_bad_criterion_is_one_line(text):
    with pytest.raises(ShiftkitError, match="--select"):
        criterion(text)


# ---- the command line, end to end ---------------------------------------------------------------------------
def test_sweep_then_report_select_end_to_end(tmp_path, capsys):
    out = tmp_path / "runs"
    args = ["sweep", "--methods", "erm,la", "--trials", "2", "--seeds", "2", *TINY, f"out={out}"]
    assert main(args) == 0
    records = [json.loads(p.read_text()) for p in out.rglob("run.json")]
    assert len(records) == 8
    capsys.readouterr()
    assert main(args) == 0  # the same search again: every run is already done
    assert capsys.readouterr().err.count("already done, skipped") == 8
    assert main(["report", str(out), "--select", "val/balanced_acc", "--format", "csv"]) == 0
    table = capsys.readouterr().out
    assert "chosen" in table.splitlines()[0] and table.count("[selected]") == 2
    expected = {}
    for r in records:
        family = r["config"]["loss"]["name"]
        expected.setdefault(family, {}).setdefault(r["group_key"], []).append(r["selected"]["val"]["balanced_acc"])
    saved = json.loads((out / "report.json").read_text())["select"]["methods"]
    for note in saved:
        family = "la" if note["method"].startswith("la") else "ce"
        assert note["score"] == pytest.approx(max(np.mean(v) for v in expected[family].values()))


def test_sweep_show_prints_the_trials_without_training(tmp_path, capsys):
    assert main(["sweep", "--methods", "la", "--trials", "3", "--seeds", "2", "--show", f"out={tmp_path}"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "la trial 0: defaults" and len(lines) == 3 and "loss.tau=" in lines[1]
    assert not any(Path(tmp_path).iterdir())


def test_sweep_bad_input_exits_2_with_one_line(tmp_path, capsys):
    assert main(["sweep", "--methods", "nope", f"out={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0]


# ---- diverged trials: an outcome of a search, never a result ---------------------------------------------
def test_a_search_with_a_diverging_setting_ends_well_and_selects_among_the_others(tmp_path, capsys):
    """A learning rate that explodes the loss is a setting the search drew, not a broken search: the run is
    recorded as failed (no done marker), the command exits 0 with one line about it, and selection skips it."""
    out = tmp_path / "runs"
    common = [*TINY, f"out={out}"]
    assert main(["sweep", "--methods", "erm", "--trials", "1", "--seeds", "2", *common]) == 0
    assert main(["sweep", "--methods", "erm", "--trials", "1", "--seeds", "2", "optim.lr=1e6", *common]) == 0
    err = capsys.readouterr().err
    assert "2 of 2 runs diverged" in err and "no results" in err
    failed = [json.loads(p.read_text()) for p in out.rglob("run.json") if not (p.parent / "done").exists()]
    assert len(failed) == 2 and all(r["status"] == "failed" for r in failed)
    assert main(["report", str(out), "--select", "val/acc"]) == 0
    saved = json.loads((out / "report.json").read_text())["select"]["methods"]
    assert [n["candidates"] for n in saved] == [1]  # the diverged setting is no candidate


def test_a_plain_sweep_still_fails_when_a_run_diverges(tmp_path):
    from shiftkit.sweep import conclude

    records = [{"run_dir": "a"}, {"failed": "the training loss became non-finite", "diverged": True}]
    said = []
    assert conclude(records, said.append, diverged_ok=True) == records and "1 of 2 runs diverged" in said[0]
    with pytest.raises(ShiftkitError, match="1 of 2 runs failed"):
        conclude(records, said.append)
    with pytest.raises(ShiftkitError, match="1 of 2 runs failed"):  # another failure is an error in a search too
        conclude([{"run_dir": "a"}, {"failed": "disk full"}], said.append, diverged_ok=True)
