"""The groups file of an ``image_folder`` dataset (:mod:`.image_folder`): a CSV with each image's path
relative to the root and its ``group``, an attribute column or its ``split``, checked against the images
found (every image one row, every row an image) and aligned with them.

>>> _relative("./cat//001.png", Path("/data"))
'cat/001.png'
"""

from __future__ import annotations

import posixpath
from pathlib import Path, PurePosixPath
from typing import List, Optional, Tuple

import numpy as np

from ..errors import ShiftkitError
from .base import dense_ids, quote
from .roots import read_csv

PATH_COLUMNS = ("path", "file", "filename", "img_filename")
_SPLIT_IDS = {"train": 0, "val": 1, "valid": 1, "validation": 1, "test": 2, "0": 0, "1": 1, "2": 2}
_SHOWN = 3  # files named in an error about many


def _values(cells: np.ndarray) -> np.ndarray:
    """Text cells as the values their user means: integers, other numbers, or text (sorted as such)."""
    import pandas as pd

    numbers = pd.to_numeric(pd.Series(cells), errors="coerce").to_numpy(dtype=np.float64)
    if not np.isnan(numbers).any():
        whole = (numbers == np.round(numbers)).all() and (np.abs(numbers) < 2.0**53).all()
        return numbers.astype(np.int64) if whole else numbers
    return cells


def value_ids(cells: np.ndarray) -> Tuple[np.ndarray, list]:
    """Ids ``0..G-1`` of the cells' values in sorted order, and the values."""
    ids, distinct = dense_ids(_values(cells))
    return ids, [v.item() if hasattr(v, "item") else v for v in distinct]


def csv_path(groups: str, root: Path) -> Path:
    file = Path(groups).expanduser()
    if not file.is_absolute() and not file.exists() and (root / file).is_file():
        file = root / file  # a file name inside root
    if not file.is_file():
        raise ShiftkitError(f"image_folder: no groups file {file} (data.groups is a path, or a file name inside root)")
    return file


def _relative(cell: str, root: Path) -> str:
    """A CSV path cell as a posix path relative to root (``./a/b.png``, ``a\\b.png``, absolute paths in root)."""
    text = cell.strip().replace("\\", "/")
    if PurePosixPath(text).is_absolute():
        try:
            text = Path(text).resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            return text
    return posixpath.normpath(text)


def _few(items: list) -> str:
    return quote(items[:_SHOWN], total=len(items))


def read_groups(file: Path, root: Path, files: List[str], attribute: Optional[str]) -> dict:
    """The CSV's cells aligned with ``files``, checked: ``{"split", "group", "values"}`` (text arrays, or None
    for a column not given or not used), ``"attribute"`` (the attribute column's name, or None) and ``"path"``."""
    table, columns, path = _table(file)
    attribute = _attribute_column(file, columns, path, attribute)
    used = [path] + [c for c in ("split", "group" if attribute is None else None, attribute) if c and c in columns]
    _check_cells(table, used, file)
    order = _row_order(file, root, files, [_relative(c, root) for c in table[path]])

    def pick(col: Optional[str]) -> Optional[np.ndarray]:
        return table[col].str.strip().to_numpy()[order] if col and col in columns else None

    return {"split": pick("split"), "group": pick("group") if attribute is None else None,
            "attribute": attribute, "values": pick(attribute), "path": path}


def _table(file: Path) -> tuple:
    """``(table, columns, path column)`` of the CSV, text cells; a file without a path column or rows is refused."""
    needs = (f"it needs a header line ({'/'.join(PATH_COLUMNS)}, then group, attribute or split columns) "
             "and a row per image")
    table = read_csv("image_folder", file, needs, dtype=str, keep_default_na=False)
    table.columns = [str(c).strip() for c in table.columns]
    columns = [c for c in table.columns if not c.startswith("Unnamed:")]
    path = next((c for c in PATH_COLUMNS if c in columns), None)
    if path is None:
        raise ShiftkitError(
            f"image_folder: {file} has no column {' or '.join(PATH_COLUMNS)} (each image's path relative to the "
            f"root); columns: {quote(columns)}"
        )
    if table.empty:
        raise ShiftkitError(f"image_folder: {file} has a header but no row; {needs}")
    return table, columns, path


def _attribute_column(file: Path, columns: List[str], path: str, attribute: Optional[str]) -> Optional[str]:
    """The attribute column: ``attribute``, else the only column besides path, split and group (none with
    a group column)."""
    others = [c for c in columns if c not in (path, "split", "group")]
    if attribute is not None and (attribute not in columns or attribute == path):
        raise ShiftkitError(f"image_folder: {file} has no attribute column '{attribute}'; columns: {quote(columns)}")
    if attribute is None and "group" not in columns:
        if len(others) > 1:
            raise ShiftkitError(
                f"image_folder: {file} has several attribute columns ({quote(others)}); choose one with "
                "data.attribute=NAME, or give a group column"
            )
        attribute = others[0] if others else None
    return attribute


def _check_cells(table, used: List[str], file: Path) -> None:
    """Every cell of the columns used holds a value."""
    for col in used:
        cells = table[col].str.strip().to_numpy()
        blank = np.flatnonzero(cells == "")
        if len(blank):
            raise ShiftkitError(
                f"image_folder: column '{quote(col)}' of {file} has {len(blank)} empty cell(s), the first on line "
                f"{int(blank[0]) + 2}; every image needs a value"
            )


def _row_order(file: Path, root: Path, files: List[str], paths: List[str]) -> np.ndarray:
    """The rows in the order of ``files``, after checking that each image has exactly one row and each row
    an image."""
    seen, repeated = set(), []
    for p in paths:
        if p in seen:
            repeated.append(p)
        seen.add(p)
    if repeated:
        raise ShiftkitError(f"image_folder: {file} lists {len(repeated)} image(s) twice: {_few(repeated)}")
    index = {f: i for i, f in enumerate(files)}
    extra = [p for p in paths if p not in index]
    if extra:
        raise ShiftkitError(
            f"image_folder: {len(extra)} row(s) of {file} name no image under {root}: {_few(extra)} (paths are "
            "relative to the root; hidden and non-image files are not read)"
        )
    missing = [f for f in files if f not in seen]
    if missing:
        raise ShiftkitError(
            f"image_folder: {len(missing)} image(s) under {root} have no row in {file}: {_few(missing)}"
        )
    return np.argsort([index[p] for p in paths])  # rows in the order of files


def split_ids(cells: np.ndarray, file: Path) -> np.ndarray:
    keys = [c.lower() for c in cells]
    unknown = sorted({c for c, k in zip(cells, keys) if k not in _SPLIT_IDS})
    if unknown:
        raise ShiftkitError(
            f"image_folder: column 'split' of {file} holds {quote(unknown)}; use train/val/test or 0/1/2"
        )
    return np.array([_SPLIT_IDS[k] for k in keys], dtype=np.int64)
