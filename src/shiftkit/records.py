"""Run records: what a run directory's ``run.json`` holds (:class:`RunRecord`, the one schema that the
runner writes and the report, the command line, the launchers and the reproductions read), written
atomically with its ``done`` marker last; the record of a failed or interrupted run (no marker: never
read as a result); and a finished directory read back (:func:`finished_record`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, TypedDict

import torch

from . import data, distributed, files, labels, rundir, tracking
from .checkpoint import FILE as CHECKPOINT_FILE
from .divergence import NonFiniteLoss
from .environment import environment
from .errors import ShiftkitError
from .identity import EXECUTION_KEYS, config_hash
from .models import weights
from .selection import FitResult

__all__ = ["RunRecord", "divergence_hint", "failures", "finished_record", "identity", "save_weights",
           "write_failure", "write_record"]


class RunRecord(TypedDict, total=False):
    """The keys of ``run.json``. Every record: ``status`` (``finished``, ``failed``, ``interrupted``),
    ``method`` and ``label`` (:mod:`shiftkit.labels`), ``group_key`` (the identity without the seed: the
    runs of one method), ``config`` (resolved), ``started`` (Unix time), ``environment``, ``run_dir``. A
    finished run's: ``data`` (name, statistics, counts, info, pipeline), ``final`` and ``selected``
    (metrics per split, docs/METHODS.md#metrics), ``selected_epoch``, ``train_seconds``, ``steps``,
    ``device``, ``metrics_sha256`` (of ``metrics.jsonl``), and where they apply ``weights``,
    ``model_weights``, ``resumed_from_epoch`` / ``_phase`` / ``_batch``, ``ensemble_size``,
    ``interpolation_epoch`` and its procedure's entries (AutoBalance: ``search``, ``alpha``,
    ``alpha_history``). A failed run's: ``error`` and ``checkpoint`` (the file a rerun resumes from).
    Read back, a finished record carries ``skipped: true``; a sweep's failed run is ``{"failed": msg}``."""

    status: str
    method: str
    label: str
    group_key: str
    config: Dict[str, Any]
    started: float
    environment: Dict[str, Any]
    run_dir: str
    data: Dict[str, Any]
    final: Dict[str, Any]
    selected: Dict[str, Any]
    selected_epoch: int
    train_seconds: float
    steps: int
    device: str
    metrics_sha256: str
    weights: Dict[str, Any]
    model_weights: Dict[str, Any]
    resumed_from_epoch: int
    resumed_from_phase: str
    resumed_from_batch: int
    ensemble_size: int
    interpolation_epoch: Optional[int]
    error: str
    checkpoint: Optional[str]
    skipped: bool
    failed: str


def divergence_hint(exc: NonFiniteLoss, plain: Dict[str, Any]) -> NonFiniteLoss:
    """``exc`` with a hint that names this run's settings: a loss already non-finite at the first step,
    before any update, comes from the loss, the weighting or the data, never from the learning rate."""
    settings = [f"{g}.{c}" for g in ("loss", "weighting") for c in labels.changed(g, plain[g])]
    named = " or ".join(settings) if settings else f"loss={plain['loss']['name']} and weighting={plain['weighting']['name']}"
    if exc.at_start:
        return exc.with_hint(f"it was so before any update, so the learning rate is not the cause: look at {named}"
                             " and at the data")
    lower = f"try a lower optim.lr (now {plain['optim']['lr']:g})"
    return exc.with_hint(f"{lower}, or look at {', '.join(settings)}" if settings else lower)


def finished_record(out: Path, keep_checkpoints: bool = True) -> Optional[Dict[str, Any]]:
    """The record of a finished run directory (marked ``skipped``), or None. A directory marked done whose
    files are damaged (:func:`shiftkit.rundir.finished`) loses its marker, with one warning, and counts as
    unfinished: it trains again while the other runs of a sweep go on. A finished run's leftovers (the
    temporary files of an interrupted save, and its checkpoints unless ``keep_checkpoints``) are removed."""
    try:
        record = rundir.finished(out)
    except rundir.Damaged as exc:
        rundir.warn(f"{exc}; the run will be trained again")
        with contextlib.suppress(OSError):
            rundir.unfinish(out)
        return None
    if record is None:
        return None
    if distributed.is_primary():
        with contextlib.suppress(OSError):
            rundir.tidy(out, keep_checkpoints)
    record["skipped"] = True
    return record


def identity(plain: Dict[str, Any], out: Path, started: float) -> Dict[str, Any]:
    return {
        "method": labels.method(plain),
        "label": labels.label(plain),
        "group_key": config_hash(plain, drop=(*EXECUTION_KEYS, "seed")),
        "config": plain,
        "started": started,
        "environment": environment(),
        "run_dir": str(out),
    }


def write_failure(plain, out: Path, started: float, exc: BaseException, checkpoint: Optional[Path] = None) -> None:
    """``run.json`` of a run that stopped (no ``done`` marker: nothing reads it as a result), naming the
    checkpoint a rerun resumes from. Written when it can be: on a full disk the error line has to do."""
    if not distributed.is_primary():
        return
    checkpoint = checkpoint if checkpoint is not None else out / CHECKPOINT_FILE
    record = {
        **identity(plain, out, started),
        "status": "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed",
        "error": str(exc) or type(exc).__name__,
        "checkpoint": os.path.relpath(checkpoint, out) if checkpoint.exists() else None,
    }
    with contextlib.suppress(OSError, ShiftkitError):
        files.write_text(out / rundir.RUN_FILE, files.json_text(record))


@contextlib.contextmanager
def failures(members: List[tuple], started: float, trackers: List[tracking.Logger], checkpoint: Optional[Path] = None):
    """Record a failure of the block in every member's ``run.json`` (``members``: ``(plain, out)`` pairs;
    one for a plain run) and re-raise it: a divergence with a hint naming the run's settings, an I/O error
    as one line naming its file. Nothing is marked done."""
    try:
        yield
    except (Exception, KeyboardInterrupt) as exc:
        failure = exc
        if isinstance(exc, NonFiniteLoss):
            failure = divergence_hint(exc, members[0][0])
        elif isinstance(exc, OSError):
            failure = files.write_error(Path(exc.filename or members[0][1]), exc)
        for plain, out in members:
            write_failure(plain, out, started, failure, checkpoint)
        for tracker in trackers:
            with contextlib.suppress(Exception):
                tracker.finish("failed")
        if failure is exc:
            raise
        raise failure from None


def write_record(plain, out: Path, splits: data.Splits, result: FitResult, device: str, started: float, **extra):
    """``run.json`` (atomically, strict JSON, with the digest of ``metrics.jsonl``), then the ``done``
    marker; returns the record."""
    record = {
        "status": "finished",
        **identity(plain, out, started),
        "data": {
            "name": plain["data"]["name"],
            "statistics": splits.statistics(),
            "counts": splits.counts(),
            "info": splits.info,
            "pipeline": dataclasses.asdict(splits.pipeline),
        },
        "final": result.final,
        "selected": result.selected,
        "selected_epoch": result.selected_epoch,
        "train_seconds": round(result.seconds, 3),
        "steps": result.steps,
        "device": device,
        **extra,
    }
    if plain["model"].get("weights") is not None:
        record["model_weights"] = weights.describe(plain["model"]["name"], plain["model"]["weights"])
    if distributed.is_primary():
        record["metrics_sha256"] = rundir.digest(out / rundir.METRICS_FILE)
        record = files.finite(record)
        files.write_text(out / rundir.RUN_FILE, files.json_text(record))
        files.write_text(out / rundir.DONE_FILE, "")
    return record


def save_weights(plain: Dict[str, Any], out: Path, model: torch.nn.Module, result: FitResult) -> Dict[str, Any]:
    """Write the run's weights (``rundir.WEIGHTS_FILE``: the selected ones; ``FINAL_WEIGHTS_FILE`` too when
    an earlier evaluation was selected) unless ``save_weights`` is false, or unset and the state dict is
    larger than ``rundir.AUTO_WEIGHTS_BYTES``. Returns the ``run.json`` entry."""
    state = model.state_dict()
    size = sum(t.numel() * t.element_size() for t in state.values())
    wanted = plain["save_weights"]
    if wanted is False or (wanted is None and size > rundir.AUTO_WEIGHTS_BYTES) or not distributed.is_primary():
        return {}
    metadata = {"model": json.dumps(plain["model"], sort_keys=True)}  # what the weights depend on, no more
    weights.save(state, out / rundir.WEIGHTS_FILE, metadata)
    entry = {"file": rundir.WEIGHTS_FILE, "epoch": result.selected_epoch, "bytes": size}
    if result.final_state is not None:
        weights.save(result.final_state, out / rundir.FINAL_WEIGHTS_FILE, metadata)
        entry["final_file"] = rundir.FINAL_WEIGHTS_FILE
    return {"weights": entry}
