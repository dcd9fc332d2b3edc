"""A run directory's files, and whether they still hold a result.

A finished run's directory holds ``run.json`` (its record, with ``"status": "finished"``), ``metrics.jsonl``
(one line per evaluation; the record keeps its SHA-256 in ``metrics_sha256``) and an empty ``done``
marker, written last. What reads results (a rerun of a sweep, ``shiftkit report``, a launcher planning a
sweep) asks :func:`finished` and gets the record, ``None`` for a run that has not finished, or
:class:`Damaged` naming what is wrong with a directory marked ``done`` whose files are not whole (a
truncated or deleted ``run.json``, a record that is not an object, a ``metrics.jsonl`` cut short or
edited). A damaged run is never read as a result: a rerun trains it again, a report skips it with one
warning line.

>>> import tempfile
>>> from pathlib import Path
>>> folder = Path(tempfile.mkdtemp())
>>> finished(folder) is None
True
>>> (folder / DONE_FILE).write_text("")
0
>>> finished(folder)
Traceback (most recent call last):
...
shiftkit.rundir.Damaged: ... has a done marker but no readable run.json (No such file or directory)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

from . import files
from .checkpoint import ENSEMBLE_FILE
from .checkpoint import FILE as CHECKPOINT_FILE
from .errors import ShiftkitError, ShiftkitWarning

RUN_FILE, DONE_FILE, METRICS_FILE = "run.json", "done", "metrics.jsonl"
#: The trained model's state dict at its selected evaluation (``train.select``; the last one by default) and,
#: when an earlier one was selected, at its last epoch: written unless ``save_weights=false`` (by default
#: when the state dict is at most ``AUTO_WEIGHTS_BYTES``), read by ``shiftkit.load`` and ``model.weights=``.
WEIGHTS_FILE, FINAL_WEIGHTS_FILE = "weights.safetensors", "weights-final.safetensors"
AUTO_WEIGHTS_BYTES = 64 * 2**20
#: Every file shiftkit writes atomically into a run directory (their interrupted temporaries are tidied).
WRITTEN = (RUN_FILE, DONE_FILE, CHECKPOINT_FILE, ENSEMBLE_FILE, "model.pt", "alpha.png", WEIGHTS_FILE, FINAL_WEIGHTS_FILE)

#: What a finished run's record must hold: key -> the keys it needs inside it.
RECORD_KEYS = {
    "method": (),
    "group_key": (),
    "config": ("seed",),
    "data": ("name", "counts"),
    "selected": ("train", "val", "test"),
    "final": ("train", "val", "test"),
}
_MAX_QUOTE = 200


class Damaged(ShiftkitError):
    """A run directory marked ``done`` whose files do not hold a whole result."""


def warn(message: str) -> None:
    """One warning line (the command line prints ``shiftkit: warning: <message>``)."""
    warnings.warn(message, ShiftkitWarning, stacklevel=2)


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_record(folder: Path) -> Dict[str, Any]:
    """The record in ``folder/run.json``, checked to be a finished run's; else :class:`Damaged`."""
    path = Path(folder) / RUN_FILE
    try:
        record = json.loads(path.read_text())
    except OSError as exc:
        raise Damaged(f"{folder} has a done marker but no readable {RUN_FILE} ({exc.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise Damaged(f"{path} is not valid JSON (cut off or overwritten)") from None
    if not isinstance(record, dict):
        raise Damaged(f"{path} is not a shiftkit run record (a JSON {type(record).__name__})")
    for key, inner in RECORD_KEYS.items():
        value = record.get(key)
        if value is None or (inner and not isinstance(value, dict)):
            raise Damaged(f"{path} is not a shiftkit run record (no '{key}')")
        for k in inner:
            if k not in value:
                raise Damaged(f"{path} is not a shiftkit run record (no '{key}.{k}')")
    if record.get("status", "finished") != "finished":
        raise Damaged(f"{path} records a run that {record['status']}, beside a done marker")
    return record


def read_metrics(folder: Path, expected: Optional[str] = None, parse: bool = True) -> Optional[List[dict]]:
    """The evaluation records of ``folder/metrics.jsonl``, read once: with ``expected`` (the record's
    ``metrics_sha256``) the file must have that digest, and it is parsed only if ``parse``; without it every
    line must parse. :class:`Damaged` names what is wrong (the first bad line)."""
    path = Path(folder) / METRICS_FILE
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise Damaged(f"cannot read {path}: {exc.strerror}") from None
    if expected is not None and hashlib.sha256(raw).hexdigest() != expected:
        raise Damaged(f"{path} is not the file its run wrote (cut off or changed)")
    if expected is not None and not parse:
        return None
    try:
        text = raw.decode()
    except UnicodeDecodeError as exc:
        raise Damaged(f"cannot read {path}: {exc}") from None
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise Damaged(f"{path}: line {number} is not valid JSON ({line[:_MAX_QUOTE]!r})") from None
        if not isinstance(record, dict) or "epoch" not in record:
            raise Damaged(f"{path}: line {number} is not an evaluation record (no 'epoch')")
        records.append(record)
    if text and not text.endswith("\n"):
        raise Damaged(f"{path} is cut off in line {len(records)}")
    return records


def finished(folder: Path, with_metrics: bool = False):
    """The record of the finished run in ``folder`` (with ``with_metrics``: ``(record, its evaluation
    records)``, the file read once); ``None`` without a ``done`` marker; :class:`Damaged` if the marker is
    there but ``run.json`` or ``metrics.jsonl`` is not whole (the record's ``metrics_sha256`` must match;
    records written before it existed need every line to parse)."""
    folder = Path(folder)
    if not (folder / DONE_FILE).exists():
        return None
    record = read_record(folder)
    lines = read_metrics(folder, record.get("metrics_sha256"), parse=with_metrics)
    return (record, lines) if with_metrics else record


def unfinish(folder: Path) -> None:
    """Take a damaged run's ``done`` marker away, so that every reader sees a run still to train."""
    (Path(folder) / DONE_FILE).unlink(missing_ok=True)


def tidy(folder: Path, keep_checkpoints: bool = True) -> None:
    """Remove what interrupted writes left in a run directory (their temporary files) and, unless
    ``keep_checkpoints``, the checkpoints of a run that has finished."""
    files.tidy(folder, WRITTEN)
    if not keep_checkpoints:
        for name in (CHECKPOINT_FILE, ENSEMBLE_FILE):
            (Path(folder) / name).unlink(missing_ok=True)


class MetricsLog:
    """A run's ``metrics.jsonl``, opened fresh with ``history`` (the evaluations of the checkpoint a run
    resumes from) and appended one strict-JSON line per evaluation, flushed as training goes; a failed
    write is a :class:`~shiftkit.files.WriteError` naming the file. ``write=False`` (a process that does
    not write results, under ``torchrun``) makes it a no-op."""

    def __init__(self, folder: Path, history: List[dict] = (), write: bool = True):
        self.path, self.handle = Path(folder) / METRICS_FILE, None
        if not write:
            return
        files.make_dirs(folder)
        try:
            (Path(folder) / DONE_FILE).unlink(missing_ok=True)
            self.handle = open(self.path, "w")
        except OSError as exc:
            raise files.write_error(self.path, exc) from None
        for record in history:
            self.write(record)

    def write(self, record: dict) -> None:
        if self.handle is None:
            return
        try:
            self.handle.write(files.json_line(record) + "\n")
            self.handle.flush()
        except OSError as exc:
            raise files.write_error(self.path, exc) from None

    def close(self) -> None:
        if self.handle is not None:
            handle, self.handle = self.handle, None
            try:
                handle.close()
            except OSError as exc:
                raise files.write_error(self.path, exc) from None

    def __enter__(self) -> "MetricsLog":
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()
        else:  # the error that ends the block is the one to report
            with contextlib.suppress(OSError, files.WriteError):
                self.close()
