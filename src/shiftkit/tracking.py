"""Experiment tracking: each run's evaluations streamed to TensorBoard or MLflow while it trains.

``logger=NAME`` picks a logger and ``logger.<option>=...`` sets its options (docs/TRACKING.md). The run
directory stays the record of a run (``shiftkit report`` reads only it); a logger is a live view beside it.
The runner calls :meth:`Logger.start` once, :meth:`Logger.log` with every evaluation record and
:meth:`Logger.finish` once at the end, so logging costs nothing inside an epoch (docs/PERFORMANCE.md).

What a record becomes, at step ``epoch``: each split's scalar metrics
(:data:`shiftkit.metrics.SCALAR_METRICS`) as ``<split>/<metric>`` (``val/balanced_acc``), ``train_loss``,
``lr`` and its diagnostics as ``diagnostics/<name>``; lists (per-class and per-group accuracies), counts
and ``None`` (a metric that does not apply) are left out. AutoBalance's records carry a ``phase``, which
prefixes every tag so that the search and the retraining keep separate curves.

>>> record = {"epoch": 3, "step": 30, "lr": 0.1, "train_loss": 0.25, "phase": "search",
...           "val": {"n": 4, "acc": 0.5, "deo": None, "per_group_acc": [1.0, 0.0]}, "diagnostics": {"weight_norm": 2}}
>>> scalars(record)
{'search/train_loss': 0.25, 'search/lr': 0.1, 'search/val/acc': 0.5, 'search/diagnostics/weight_norm': 2.0}
>>> flatten({"loss": {"name": "poly", "alpha": 2.0}, "train": {"select": None, "milestones": [30, 60]}})
{'loss.name': 'poly', 'loss.alpha': 2.0, 'train.select': 'null', 'train.milestones': '[30, 60]'}
"""

from __future__ import annotations

import importlib
import json
import logging
import numbers
import os
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, Optional, Union
from urllib.parse import urlparse

from .errors import ShiftkitError
from .metrics import SCALAR_METRICS
from .registry import Registry

LOGGERS = Registry("logger")
register = LOGGERS.register
names = LOGGERS.names

#: The splits an evaluation record measures.
SPLITS = ("train", "val", "test")
#: Tracking URI schemes served by an MLflow server, which chooses its own artifact location.
_SERVERS = ("http", "https", "databricks")
#: Loggers that announce creating and migrating a fresh MLflow database at INFO level.
_NOISY = ("mlflow.store.db.utils", "alembic")


def build(name: str, **kwargs) -> "Logger":
    return LOGGERS.build(name, **kwargs)


def _numbers(values: Dict[str, Any]) -> Dict[str, float]:
    return {k: float(v) for k, v in values.items() if isinstance(v, numbers.Real) and not isinstance(v, bool)}


def _split_metrics(splits: Dict[str, Any]) -> Dict[str, Any]:
    return {f"{split}/{m}": splits[split].get(m) for split in SPLITS if split in splits for m in SCALAR_METRICS}


def scalars(record: Dict[str, Any]) -> Dict[str, float]:
    """``{tag: value}`` of an evaluation record: its splits' scalar metrics, ``train_loss``, ``lr`` and
    its diagnostics, tags prefixed by the record's ``phase`` where it has one."""
    prefix = f"{record['phase']}/" if record.get("phase") else ""
    found = {"train_loss": record.get("train_loss"), "lr": record.get("lr"), **_split_metrics(record)}
    found.update({f"diagnostics/{name}": value for name, value in record.get("diagnostics", {}).items()})
    return {prefix + tag: value for tag, value in _numbers(found).items()}


def selected(record: Dict[str, Any]) -> Dict[str, float]:
    """The selected metrics of a ``run.json`` record as ``selected/<split>/<metric>``."""
    return {f"selected/{tag}": value for tag, value in _numbers(_split_metrics(record["selected"])).items()}


def flatten(config: Dict[str, Any], prefix: str = "") -> Dict[str, Union[bool, int, float, str]]:
    """A nested config as ``{"group.key": value}``; values that are not scalars (lists, ``None``) become
    their JSON text, as written on the command line."""
    flat: Dict[str, Union[bool, int, float, str]] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value if isinstance(value, (bool, int, float, str)) else json.dumps(value)
    return flat


def below_out(run_dir: Path, out: Path) -> Path:
    """A run directory's path below the results root ``out`` (its own name if it lies elsewhere)."""
    run, root = Path(run_dir).resolve(), Path(out).resolve()
    return run.relative_to(root) if run.is_relative_to(root) else Path(run.name)


def _require(module: str, extra: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ShiftkitError(f"logger={extra} needs {extra}: pip install 'shiftkit[{extra}]'") from None


class Logger:
    """Base class; every method does nothing.

    ``start(run_dir, out, name, config)`` opens the run: ``run_dir`` is its run directory, ``out`` the
    results root, ``name`` its label (method and seed), ``config`` the resolved plain config, logged as
    flattened parameters. ``log(record)`` takes one evaluation record (:func:`shiftkit.train.fit`).
    ``finish(status, record)`` closes it: ``status`` is ``"finished"`` or ``"failed"``; a finished run's
    ``run.json`` record gives its selected metrics. ``finish`` may follow a failed ``start`` and may be
    called again: it then does nothing.
    """

    def start(self, run_dir: Path, out: Path, name: str, config: Dict[str, Any]) -> None:
        """Open the run."""

    def log(self, record: Dict[str, Any]) -> None:
        """Log one evaluation."""

    def finish(self, status: str, record: Optional[Dict[str, Any]] = None) -> None:
        """Close the run."""

    def logged(self, run_dir: Path, out: Path) -> bool:
        """Whether this tracker already holds the finished run of ``run_dir`` (``shiftkit report --log``
        then leaves it)."""
        return False


@register("none")
class NoLogger(Logger):
    """Logs nothing (the default): a run writes only its run directory."""


@register("tensorboard")
class TensorBoard(Logger):
    """TensorBoard event files: the scalars of every evaluation, the flattened config as hparams (the
    HPARAMS tab compares runs by them) and, when the run finishes, its selected metrics at the selected
    epoch. ``dir=None`` writes ``<run_dir>/tensorboard``, so ``tensorboard --logdir <out>`` shows every
    run under the results root; a ``dir`` gathers the event files in a tree of their own, one directory
    per run at the run's path below ``out`` (its directory name if it lies elsewhere). That path is also
    the run's trial id in the HPARAMS tab: unique, where the run's label is not."""

    def __init__(self, dir: Optional[str] = None):
        self.dir = dir
        self._writer_class = _require("torch.utils.tensorboard", "tensorboard").SummaryWriter
        self._hparams_pb = _require("tensorboard.plugins.hparams.summary_v2", "tensorboard").hparams_pb
        self.writer = None

    def start(self, run_dir: Path, out: Path, name: str, config: Dict[str, Any]) -> None:
        below = below_out(run_dir, out)
        self.writer = self._writer_class(str(run_dir / "tensorboard" if self.dir is None else Path(self.dir) / below))
        self.writer.file_writer.add_summary(self._hparams_pb(flatten(config), trial_id=below.as_posix()))

    def log(self, record: Dict[str, Any]) -> None:
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, global_step=record["epoch"])
        self.writer.flush()  # evaluations are rare: show each one at once

    def finish(self, status: str, record: Optional[Dict[str, Any]] = None) -> None:
        writer, self.writer = self.writer, None
        if writer is None:
            return
        try:
            if status == "finished" and record is not None:
                for tag, value in selected(record).items():
                    writer.add_scalar(tag, value, global_step=record["selected_epoch"])
        finally:
            writer.close()


def _client(uri: str):
    """An ``MlflowClient`` for ``uri``, quiet about creating a fresh database's tables."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return MlflowClient(uri)
    except MlflowException as exc:
        reason = exc.message.strip().splitlines()[0]
        raise ShiftkitError(f"MLflow cannot use logger.tracking_uri '{uri}': {reason}") from None


@register("mlflow")
class MLflow(Logger):
    """An MLflow run per shiftkit run, in experiment ``experiment``: the flattened config as params, the
    scalars of every evaluation as metrics, the selected metrics at the selected epoch and the status
    ``FINISHED`` or ``FAILED``; the run is named by the method and seed and tagged with its run
    directory. ``tracking_uri=None`` is ``$MLFLOW_TRACKING_URI`` where that is set (MLflow's own
    convention, for a team's server), else a local SQLite store, ``sqlite:///<out>/mlflow.db`` (MLflow 3
    refuses its old file store by default); any other URI (a database, ``http://host:5000``) is used as
    given. An experiment created here keeps its artifacts under ``<out>/mlartifacts`` unless a server
    stores them, so that nothing is written to the current directory."""

    def __init__(self, tracking_uri: Optional[str] = None, experiment: str = "shiftkit"):
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        _require("mlflow", "mlflow")
        self.client = None
        self.run_id: Optional[str] = None

    def start(self, run_dir: Path, out: Path, name: str, config: Dict[str, Any]) -> None:
        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

        uri = self._uri(out)
        client = _client(uri)
        experiment_id = self._experiment_id(client, uri, out)
        self._close_killed(client, experiment_id, run_dir)
        run = client.create_run(experiment_id, run_name=name, tags={"shiftkit.run_dir": str(run_dir)})
        self.client, self.run_id = client, run.info.run_id  # from here on, finish() closes the run
        params = [Param(key, str(value)[:MAX_PARAM_VAL_LENGTH]) for key, value in flatten(config).items()]
        for i in range(0, len(params), MAX_PARAMS_TAGS_PER_BATCH):
            client.log_batch(self.run_id, params=params[i : i + MAX_PARAMS_TAGS_PER_BATCH])

    def _uri(self, out: Path) -> str:
        return (self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
                or f"sqlite:///{(out / 'mlflow.db').resolve().as_posix()}")

    def logged(self, run_dir: Path, out: Path) -> bool:
        if "'" in str(run_dir):
            return False
        client = _client(self._uri(out))
        found = client.get_experiment_by_name(self.experiment)
        if found is None:
            return False
        where = f"tags.`shiftkit.run_dir` = '{run_dir}' and attributes.status = 'FINISHED'"
        return bool(client.search_runs([found.experiment_id], filter_string=where, max_results=1))

    @staticmethod
    def _close_killed(client, experiment_id: str, run_dir: Path) -> None:
        """Mark ``KILLED`` the MLflow runs of this run directory that a killed process left ``RUNNING``: the
        run starting now (resumed from its checkpoint, its curve replayed) replaces them."""
        if "'" in str(run_dir):  # not expressible in MLflow's filter syntax; leave them
            return
        where = f"tags.`shiftkit.run_dir` = '{run_dir}' and attributes.status = 'RUNNING'"
        for stale in client.search_runs([experiment_id], filter_string=where):
            client.set_terminated(stale.info.run_id, status="KILLED")

    def _experiment_id(self, client, uri: str, out: Path) -> str:
        from mlflow.exceptions import MlflowException

        found = client.get_experiment_by_name(self.experiment)
        if found is None:
            local = urlparse(uri).scheme not in _SERVERS
            location = (out / "mlartifacts").resolve().as_uri() if local else None
            try:
                return client.create_experiment(self.experiment, artifact_location=location)
            except MlflowException:  # another run of a parallel sweep may have created it first
                found = client.get_experiment_by_name(self.experiment)
                if found is None:
                    raise
        if found.lifecycle_stage == "deleted":
            raise ShiftkitError(
                f"MLflow experiment '{self.experiment}' is deleted: restore it (mlflow experiments restore)"
                " or choose another with logger.experiment=..."
            )
        return found.experiment_id

    def _metrics(self, values: Dict[str, float], step: int) -> list:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        return [Metric(tag, value, now, step) for tag, value in values.items()]

    def log(self, record: Dict[str, Any]) -> None:
        self.client.log_batch(self.run_id, metrics=self._metrics(scalars(record), record["epoch"]))

    def finish(self, status: str, record: Optional[Dict[str, Any]] = None) -> None:
        client, run_id = self.client, self.run_id
        self.client, self.run_id = None, None
        if run_id is None:
            return
        try:
            if status == "finished" and record is not None:
                client.log_batch(run_id, metrics=self._metrics(selected(record), record["selected_epoch"]))
        finally:
            client.set_terminated(run_id, status.upper())
