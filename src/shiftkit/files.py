"""Result files that are whole or absent, readable as any file the user makes, and one error when a write
fails.

Every result (``run.json``, ``done``, ``report.json``, figures) and every checkpoint is written to a
temporary file beside its target, flushed to the disk and renamed over the target, so that a reader (or a
rerun after ``kill -9``) sees the old file or the new one, never half of one. The temporary file is created
with mode 0666 minus the umask, as ``open()`` creates files, so results are as readable as
``metrics.jsonl`` (``tempfile.mkstemp`` would make them 0600). A temporary file left by a process killed
while saving is removed by :func:`tidy` when the run next starts. A write that fails (a full disk, a file
size limit, a read-only folder) raises :class:`WriteError` naming the file, and leaves no temporary file.

>>> import os, tempfile
>>> from pathlib import Path
>>> folder = Path(tempfile.mkdtemp())
>>> write_text(folder / "run.json", json_text({"loss": float("nan"), "acc": 0.5}))
>>> (folder / "run.json").read_text()
'{\\n  "loss": null,\\n  "acc": 0.5\\n}'
>>> sorted(p.name for p in folder.iterdir())
['run.json']
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
import signal
import threading
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import ShiftkitError

_TAG = ".tmp-"


class WriteError(ShiftkitError):
    """A file could not be written: the disk is full, a size limit was reached, or the folder is read-only."""


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    # torch.save reports a failed write as a RuntimeError from its zip writer
    return "the write failed (is the disk full or a file size limit reached?)"


def write_error(path: Path, exc: BaseException) -> WriteError:
    """The one-line error for a failed write of ``path``."""
    return WriteError(f"cannot write {path}: {_reason(exc)}")


def make_dirs(folder: Path) -> None:
    """``mkdir -p``, with a :class:`WriteError` naming the folder when it cannot be made."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(folder, exc) from None


@contextlib.contextmanager
def atomic(path: Path, binary: bool = False) -> Iterator[Any]:
    """A file object whose contents replace ``path`` when the block ends without an error (after an
    ``fsync``); on any error the temporary file is removed and ``path`` is left as it was. I/O errors
    (``OSError``, and the ``RuntimeError`` of ``torch.save``'s writer) become :class:`WriteError`."""
    path = Path(path)
    make_dirs(path.parent)
    tmp = path.with_name(f".{path.name}{_TAG}{secrets.token_hex(4)}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
        with os.fdopen(fd, "wb" if binary else "w") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(exc, (OSError, RuntimeError)):
            raise write_error(path, exc) from None
        raise


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (:func:`atomic`)."""
    with atomic(path) as handle:
        handle.write(text)


class _Writes:
    """A file object that keeps the exception its ``write`` raised: ``torch.save`` turns it into a
    ``RuntimeError`` of its own, losing the errno of a full disk and the ``KeyboardInterrupt`` of a signal
    that arrived while it wrote."""

    def __init__(self, handle):
        self.handle, self.error = handle, None

    def write(self, data) -> int:
        try:
            return self.handle.write(data)
        except BaseException as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.handle.flush()


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM for the block (in the main thread; elsewhere signals never arrive): a signal
    that came meanwhile goes, when the block ends, to the handler that was installed before. For code
    that an interrupt must not cut in two: torch's C++ turns an exception raised in one of its callbacks
    into a ``RuntimeError`` (or aborts), which would report an interrupted write as a failed one."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list = []
    before = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum))
              for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
        for signum in caught[:1]:
            handler = before[signum]
            if callable(handler):
                handler(signum, None)
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), signum)


def save_torch(obj: Any, path: Path) -> None:
    """``torch.save(obj)`` to ``path`` atomically (:func:`atomic`); a failed write raises what the file
    raised (an ``OSError``, as a :class:`WriteError`; an interrupt as itself)."""
    import torch

    with signals_held(), atomic(path, binary=True) as handle:
        writes = _Writes(handle)
        try:
            torch.save(obj, writes)
        except RuntimeError:
            if writes.error is not None:
                raise writes.error from None
            raise


def finite(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, ±inf) replaced by ``None``, in nested dicts and lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def json_text(value: Any, indent: int = 2) -> str:
    """Strict JSON (no ``NaN`` or ``Infinity``, which most JSON readers refuse): non-finite floats are
    written as ``null``."""
    return json.dumps(finite(value), indent=indent, allow_nan=False)


def json_line(value: Any) -> str:
    """One strict-JSON line (:func:`json_text`), keys in their given order."""
    return json.dumps(finite(value), allow_nan=False)


def tidy(folder: Path, names: Iterable[str]) -> None:
    """Remove the temporary files that an interrupted atomic write of one of ``names`` left in ``folder``
    (ours, ``.NAME.tmp-XXXXXXXX``, and those of earlier versions, ``.NAME.XXXXXXXX``)."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    pattern = re.compile(r"\.(%s)(\.tmp-[0-9a-f]{8}|\.[a-z0-9_]{8})" % "|".join(map(re.escape, names)))
    for path in folder.iterdir():
        if pattern.fullmatch(path.name):
            with contextlib.suppress(OSError):
                path.unlink()
