"""Experiment tracking loggers: the contract over every registered name, then what TensorBoard and MLflow
hold when read back with their own readers."""

import logging
import shutil
import sys

import pytest
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata

from shiftkit import tracking
from shiftkit.errors import ShiftkitError

# MLflow 3.17 still asks SQLAlchemy 2.1 for a deprecated loader strategy; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")

CONFIG = {
    "loss": {"name": "poly", "alpha": 2.0},
    "weighting": {"name": "iw", "exponent": 1.5},
    "train": {"epochs": 2, "select": "best:balanced_acc", "milestones": [30, 60]},
    "search": {"start_epoch": None, "objective_options": {}},
    "seed": 0,
}
NAME = "poly(alpha=2)+iw(exponent=1.5) seed0"


def _metrics(acc):
    return {"n": 40, "acc": acc, "balanced_acc": acc - 0.25, "deo": None, "per_group_acc": [acc, None]}


def _record(epoch, acc, **extra):
    """An evaluation record as fit() writes it: ``lr`` and ``train_loss`` depend on the epoch."""
    splits = {split: _metrics(acc) for split in ("train", "val", "test")}
    return {"epoch": epoch, "step": 10 * epoch, "lr": 0.1 / epoch, "train_loss": 1.0 / epoch, **splits, **extra}


RECORDS = [
    _record(1, 0.5, phase="search"),
    _record(1, 0.625, diagnostics={"weight_norm": 3.0, "min_margin": [0.1, -0.2]}),
    _record(2, 0.75, diagnostics={"weight_norm": 4.0, "min_margin": [0.3, 0.1]}),
]
FINAL = {"selected": {split: _metrics(0.75) for split in ("train", "val", "test")}, "selected_epoch": 2}


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    """``(run_dir, out)`` with the results root in the layout the runner uses; the current directory is
    an empty one, so that a test can check nothing was written there."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "results"
    return out / "digits_binary" / "poly+iw" / "seed0-0123456789", out


@pytest.fixture(scope="session")
def first_store(tmp_path_factory):
    """The store the ``mlflow`` logger makes for a first run, in an empty current directory: the database,
    what was left in the current directory and the log records MLflow and Alembic let through. Making a
    store takes seconds, so the other MLflow tests start from copies of this one."""
    root = tmp_path_factory.mktemp("first")
    cwd, out = root / "cwd", root / "results"
    cwd.mkdir()
    heard = []
    listener = logging.Handler()
    listener.emit = heard.append
    sources = [logging.getLogger(name) for name in ("mlflow", "alembic")]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        for source in sources:
            source.addHandler(listener)
        try:
            logger = tracking.build("mlflow", experiment="first")
            logger.start(out / "run", out, NAME, CONFIG)
            logger.finish("finished")
        finally:
            for source in sources:
                source.removeHandler(listener)
    return out, list(cwd.iterdir()), heard


@pytest.fixture
def store(dirs, first_store):
    """``(run_dir, out)`` with a copy of the first store where the default ``mlflow`` logger looks."""
    dirs[1].mkdir()
    shutil.copy(first_store[0] / "mlflow.db", dirs[1] / "mlflow.db")
    return dirs


def _run(logger, dirs, status="finished"):
    run_dir, out = dirs
    logger.start(run_dir, out, NAME, CONFIG)
    for record in RECORDS:
        logger.log(record)
    logger.finish(status, FINAL if status == "finished" else None)


@pytest.mark.parametrize("name", tracking.names())
def test_contract_start_log_finish_and_finish_again(name, store, capfd):
    logger = tracking.build(name)
    _run(logger, store)
    logger.finish("finished", FINAL)
    logger.finish("failed")
    assert list((store[1].parent / "cwd").iterdir()) == []
    assert capfd.readouterr() == ("", "")


@pytest.mark.parametrize("name", tracking.names())
def test_contract_finish_without_start(name):
    logger = tracking.build(name)
    logger.finish("failed")
    logger.finish("finished", FINAL)


@pytest.mark.parametrize("name, module", [("tensorboard", "torch.utils.tensorboard"), ("mlflow", "mlflow")])
def test_missing_package_names_the_extra(name, module, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # makes the import fail as if not installed
    with pytest.raises(ShiftkitError, match=rf"pip install 'shiftkit\[{name}\]'"):
        tracking.build(name)


def test_scalars_skip_lists_none_counts_and_indices_and_prefix_the_phase():
    tags = tracking.scalars(RECORDS[0])
    assert tags["search/val/balanced_acc"] == 0.25 and tags["search/lr"] == 0.1
    assert not any(t.endswith(("deo", "per_group_acc", "/n", "epoch", "step")) for t in tags)
    assert tracking.scalars(RECORDS[1])["diagnostics/weight_norm"] == 3.0
    assert "diagnostics/min_margin" not in tracking.scalars(RECORDS[1])


def _events(path):
    acc = EventAccumulator(str(path))
    acc.Reload()
    return acc


def _series(acc, tag):
    return [(e.step, pytest.approx(e.value)) for e in acc.Scalars(tag)]


def test_tensorboard_event_file_holds_scalars_selected_and_hparams(dirs):
    _run(tracking.build("tensorboard"), dirs)
    acc = _events(dirs[0] / "tensorboard")
    assert _series(acc, "val/acc") == [(1, 0.625), (2, 0.75)]
    assert _series(acc, "search/val/acc") == [(1, 0.5)]
    assert _series(acc, "train_loss") == [(1, 1.0), (2, 0.5)]
    assert _series(acc, "lr") == [(1, 0.1), (2, 0.05)]
    assert _series(acc, "diagnostics/weight_norm") == [(1, 3.0), (2, 4.0)]
    assert _series(acc, "selected/test/balanced_acc") == [(2, 0.5)]
    assert not any(t.endswith(("deo", "per_group_acc", "/n", "min_margin")) for t in acc.Tags()["scalars"])
    content = acc.PluginTagToContent("hparams")[metadata.SESSION_START_INFO_TAG]
    start = metadata.parse_session_start_info_plugin_data(content)
    assert start.group_name == "digits_binary/poly+iw/seed0-0123456789"
    assert start.hparams["loss.name"].string_value == "poly"
    assert start.hparams["weighting.exponent"].number_value == 1.5
    assert start.hparams["train.milestones"].string_value == "[30, 60]"


def test_tensorboard_dir_mirrors_the_run_path_below_out_and_a_failed_run_has_no_selected(dirs, tmp_path):
    _run(tracking.build("tensorboard", dir=str(tmp_path / "tb")), dirs, status="failed")
    acc = _events(tmp_path / "tb" / dirs[0].relative_to(dirs[1]))
    assert _series(acc, "val/acc") == [(1, 0.625), (2, 0.75)]
    assert not any(t.startswith("selected/") for t in acc.Tags()["scalars"])
    assert not (dirs[0] / "tensorboard").exists()


def _mlflow_run(out, experiment="shiftkit", uri=None):
    """The client and the one run of ``experiment`` in the store at ``uri`` (default: ``out``'s)."""
    client = MlflowClient(uri or f"sqlite:///{out / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return client, run


def test_mlflow_first_run_makes_its_store_under_out_quietly(first_store):
    out, left_in_cwd, heard = first_store
    assert (out / "mlflow.db").is_file() and left_in_cwd == []
    assert [f"{r.name}: {r.getMessage()}" for r in heard] == []  # no "Creating initial MLflow database tables"
    location = MlflowClient(f"sqlite:///{out / 'mlflow.db'}").get_experiment_by_name("first").artifact_location
    assert location == (out / "mlartifacts").as_uri()


def test_mlflow_default_store_under_out_holds_params_metrics_and_status(store):
    run_dir, out = store
    _run(tracking.build("mlflow"), store)
    client, run = _mlflow_run(out)
    assert run.info.status == "FINISHED" and run.info.run_name == NAME
    assert run.data.tags["shiftkit.run_dir"] == str(run_dir)
    assert run.data.params["loss.name"] == "poly" and run.data.params["weighting.exponent"] == "1.5"
    assert run.data.params["train.milestones"] == "[30, 60]" and run.data.params["search.start_epoch"] == "null"
    history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val/acc")]
    assert history == [(1, 0.625), (2, 0.75)]
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "search/val/acc")] == [(1, 0.5)]
    assert run.data.metrics["diagnostics/weight_norm"] == 4.0 and run.data.metrics["lr"] == 0.05
    assert run.data.metrics["selected/val/balanced_acc"] == 0.5
    assert not any(k.endswith(("deo", "per_group_acc", "/n", "min_margin")) for k in run.data.metrics)
    assert client.get_experiment_by_name("shiftkit").artifact_location == (out / "mlartifacts").as_uri()


def test_mlflow_honours_a_tracking_uri_and_experiment(dirs, first_store, tmp_path):
    shutil.copy(first_store[0] / "mlflow.db", tmp_path / "elsewhere.db")
    uri = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    _run(tracking.build("mlflow", tracking_uri=uri, experiment="sweep"), dirs)
    assert not (dirs[1] / "mlflow.db").exists()
    assert _mlflow_run(None, "sweep", uri)[1].data.metrics["val/acc"] == 0.75


def test_mlflow_failed_run_is_failed_without_selected_metrics(store):
    _run(tracking.build("mlflow"), store, status="failed")
    _, run = _mlflow_run(store[1])
    assert run.info.status == "FAILED" and run.data.metrics["val/acc"] == 0.75
    assert not any(k.startswith("selected/") for k in run.data.metrics)


def test_mlflow_logs_long_and_many_params(store):
    config = {"many": {f"p{i:03d}": i for i in range(150)}, "long": "x" * (MAX_PARAM_VAL_LENGTH + 10)}
    logger = tracking.build("mlflow")
    logger.start(*store, NAME, config)
    logger.finish("finished")
    params = _mlflow_run(store[1])[1].data.params
    assert len(params) == 151 and params["many.p149"] == "149"
    assert params["long"] == "x" * MAX_PARAM_VAL_LENGTH


def test_mlflow_runs_share_the_experiment_even_one_made_meanwhile(store, monkeypatch):
    run_dir, out = store
    _run(tracking.build("mlflow"), store)
    lookup, calls = MlflowClient.get_experiment_by_name, []

    def late(client, name):  # the first look misses it, as when a parallel run creates it just then
        calls.append(name)
        return None if len(calls) == 1 else lookup(client, name)

    with monkeypatch.context() as patch:
        patch.setattr(MlflowClient, "get_experiment_by_name", late)
        _run(tracking.build("mlflow"), (run_dir.with_name("seed1-0123456789"), out))
    assert len(calls) == 2
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("shiftkit").experiment_id])
    expected = [str(run_dir), str(run_dir.with_name("seed1-0123456789"))]
    assert sorted(r.data.tags["shiftkit.run_dir"] for r in runs) == expected


def test_mlflow_bad_uri_is_a_clear_error_and_finish_after_it_is_safe(dirs):
    logger = tracking.build("mlflow", tracking_uri="nope://host")
    with pytest.raises(ShiftkitError, match="nope://host"):
        logger.start(*dirs, NAME, CONFIG)
    logger.finish("failed")
    logger.finish("failed")


def test_mlflow_deleted_experiment_is_a_clear_error(store):
    _run(tracking.build("mlflow"), store)
    client = MlflowClient(f"sqlite:///{store[1] / 'mlflow.db'}")
    client.delete_experiment(client.get_experiment_by_name("shiftkit").experiment_id)
    with pytest.raises(ShiftkitError, match="is deleted"):
        tracking.build("mlflow").start(*store, NAME, CONFIG)


def _train(out, *overrides):
    from shiftkit.config import compose
    from shiftkit.runner import run

    return run(compose(["train.epochs=6", "train.eval_every=2", "device=cpu", f"out={out}", *overrides]))


def test_a_run_with_logger_tensorboard_streams_every_evaluation_beside_its_metrics(tmp_path):
    record = _train(tmp_path, "logger=tensorboard")
    acc = _events(tmp_path.joinpath(record["run_dir"]) / "tensorboard")
    assert [s for s, _ in _series(acc, "val/balanced_acc")] == [2, 4, 6]
    assert _series(acc, "selected/test/balanced_acc") == [(6, record["selected"]["test"]["balanced_acc"])]
    assert record["run_dir"] == _train(tmp_path, "logger=none")["run_dir"]  # the logger is not in the run's identity


def test_a_run_with_logger_mlflow_lands_in_the_results_store_and_a_failed_run_is_failed(store):
    _, out = store
    record = _train(out, "logger=mlflow")
    client, run = _mlflow_run(out)
    assert run.info.status == "FINISHED" and run.data.tags["shiftkit.run_dir"] == record["run_dir"]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "test/acc")] == [2, 4, 6]
    with pytest.raises(ShiftkitError, match="non-finite"):
        _train(out, "logger=mlflow", "logger.experiment=diverged", "optim.lr=1e30")
    assert _mlflow_run(out, "diverged")[1].info.status == "FAILED"


def test_mlflow_without_a_tracking_uri_follows_mlflow_tracking_uri(store, tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'team.db'}"
    shutil.copy(store[1] / "mlflow.db", tmp_path / "team.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    _run(tracking.build("mlflow"), store)
    assert _mlflow_run(None, uri=uri)[1].info.status == "FINISHED"


def test_mlflow_a_rerun_of_a_killed_run_marks_the_run_it_left_running_killed(store):
    run_dir, out = store
    killed = tracking.build("mlflow")
    killed.start(run_dir, out, NAME, CONFIG)
    killed.log(RECORDS[1])  # the process dies here: no finish()
    _run(tracking.build("mlflow"), store)
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("shiftkit").experiment_id])
    assert sorted(r.info.status for r in runs) == ["FINISHED", "KILLED"]
