"""Where datasets live on disk: the ``root=`` argument, then ``$SHIFTKIT_DATA/<name>``, then known
system folders (Debian's ``dataset-fashion-mnist`` installs ``/usr/share/datasets/fashion-mnist``).
Nothing is ever downloaded; a missing root is one clear message naming the files expected, and so is a
metadata table that is empty or not UTF-8 (:func:`read_csv`)."""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Optional, Sequence

from ..errors import ShiftkitError
from .base import quote

#: What reading a damaged file raises: OSError (also a bad gzip header), EOFError (a gzip stream cut
#: off), zlib.error (corrupt compressed data).
READ_ERRORS = (OSError, EOFError, zlib.error)


def _has(folder: Path, name: str) -> bool:
    return (folder / name).exists() or (folder / f"{name}.gz").exists()


def find_root(
    name: str, root: Optional[str], required: Sequence[str], how: str, system: Sequence[str] = ()
) -> Path:
    """The first folder holding every file or folder in ``required`` (``x`` or ``x.gz``).

    An explicit ``root`` is the only place looked at; without one, ``$SHIFTKIT_DATA/<name>`` and then the
    ``system`` folders. ``how`` tells the user how to get the data.
    """
    if root:
        candidates = [Path(root).expanduser()]
    else:
        env = os.environ.get("SHIFTKIT_DATA")
        candidates = ([Path(env).expanduser() / name] if env else []) + [Path(p) for p in system]
    for folder in candidates:
        if folder.is_dir() and all(_has(folder, f) for f in required):
            return folder
    looked = ", ".join(str(c) for c in candidates) or "nowhere ($SHIFTKIT_DATA is not set)"
    raise ShiftkitError(f"{name}: no data found (looked in {looked}; expected {', '.join(required)}). {how}")


def maybe_gz(path: Path) -> Path:
    """``path``, or ``path.gz`` where only that exists: the file actually read, for messages."""
    path = Path(path)
    return path if path.exists() else path.with_name(path.name + ".gz")


def open_maybe_gz(path: Path):
    """Open ``path`` or ``path.gz`` for binary reading."""
    import gzip

    path = maybe_gz(path)
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def unreadable(file: Path, exc: BaseException) -> str:
    """Why ``file`` could not be read (``exc``, one of ``READ_ERRORS`` or a parser's ValueError), on one line."""
    if isinstance(exc, EOFError):
        return f"{file} is truncated (the gzip stream ends early)"
    if isinstance(exc, zlib.error):
        return f"cannot read {file}: not a valid gzip stream ({exc})"
    return f"cannot read {file}: {quote(' '.join(str(exc).split()))}"


def read_csv(name: str, file: Path, needs: str, **options):
    """``pandas.read_csv(file, **options)`` for dataset ``name``, with the file's own mistakes as one line
    naming it: empty (no line at all, or, read with ``header=None``, no row; ``needs`` says what it should
    hold), not UTF-8 text, cut off (a ``.gz``) or not parseable. Pandas raises these as several exception
    types whose messages do not name the file."""
    import pandas as pd

    try:
        table = pd.read_csv(file, **options)
    except pd.errors.EmptyDataError:
        table = None
    except UnicodeDecodeError as exc:
        why = f"byte 0x{exc.object[exc.start]:02x}: {exc.reason}"
        raise ShiftkitError(f"{name}: {file} is not UTF-8 text ({why}); save it as UTF-8") from None
    except (ValueError, *READ_ERRORS) as exc:
        raise ShiftkitError(f"{name}: {unreadable(file, exc)}") from None
    if table is None or (options.get("header", "infer") is None and table.empty):
        raise ShiftkitError(f"{name}: {file} is empty; {needs}")
    return table
