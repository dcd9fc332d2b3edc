"""Where datasets live on disk: the ``root=`` argument, then ``$SHIFTKIT_DATA/<name>``, then known
system folders (Debian's ``dataset-fashion-mnist`` installs ``/usr/share/datasets/fashion-mnist``).
Nothing is ever downloaded; a missing root is one clear message naming the files expected."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

from ..errors import ShiftkitError


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


def open_maybe_gz(path: Path):
    """Open ``path`` or ``path.gz`` for binary reading."""
    import gzip

    path = Path(path)
    if path.exists():
        return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    return gzip.open(path.with_name(path.name + ".gz"), "rb")
