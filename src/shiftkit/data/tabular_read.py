"""Reading the file of a ``tabular`` dataset (:mod:`.tabular`): a CSV, TSV or Parquet file whose column
names are checked as the file spells them, and the checks of its feature values (infinite numbers, text
in a column of numbers), each error naming the column and where the value sits.

>>> where(Path("rows.csv"), 0), where(Path("rows.parquet"), 0)
('line 2', 'row 1')
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import List, Optional

import numpy as np

from ..errors import ShiftkitError
from .base import quote
from .roots import read_csv, unreadable


def read_table(path: Optional[str]):
    """``(file, table)``; ``file`` is ``path`` with ``~`` expanded. The column names are checked as the
    file spells them, before the table is read: pandas would make a repeated name unique."""
    import pandas as pd

    if not path:
        raise ShiftkitError("tabular: set data.path=<a .csv or .parquet file>")
    file = Path(path).expanduser()
    if not file.is_file():
        raise ShiftkitError(f"tabular: no file {file}")
    if file.suffix in (".parquet", ".pq"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ShiftkitError("tabular: reading Parquet needs pyarrow: pip install pyarrow") from None
        _check_names(file, _parquet(file, lambda: pq.read_schema(file).names))
        return file, _parquet(file, lambda: pd.read_parquet(file))
    options = dict(sep="\t" if ".tsv" in file.suffixes else ",")
    needs = "it needs a header line and data rows"
    header = read_csv("tabular", file, needs, header=None, nrows=1, dtype=str, keep_default_na=False, **options)
    _check_names(file, header.iloc[0].tolist())
    return file, read_csv("tabular", file, needs, **options)


def _parquet(file: Path, read):
    """``read()`` of the Parquet ``file``, a failure (pyarrow's ArrowInvalid is a ValueError) as one line."""
    try:
        return read()
    except (ValueError, OSError) as exc:
        raise ShiftkitError(f"tabular: {unreadable(file, exc)}") from None


def _check_names(file: Path, names: List[str]) -> None:
    """Refuse a column name the header repeats (an empty name is pandas' ``Unnamed: k``, not repeated)."""
    counts = Counter(names)
    repeated = [name for name in counts if name and counts[name] > 1]
    if repeated:
        raise ShiftkitError(
            f"tabular: {file} names the column(s) {quote(repeated)} more than once; give every column its own name"
        )


def where(file: Path, row: int) -> str:
    """Where data row ``row`` (0-based, header excluded) sits in ``file``, as its user finds it."""
    return f"row {row + 1}" if file.suffix in (".parquet", ".pq") else f"line {row + 2}"


def check_values(table, features: List[str], file: Path) -> None:
    """Refuse infinite numbers, and text in a column whose values are otherwise numbers (a typo would
    silently turn the column into categories), naming the column, the value and where it is."""
    import pandas as pd

    for col in features:
        column = table[col]
        if pd.api.types.is_bool_dtype(column):
            continue
        if pd.api.types.is_numeric_dtype(column):
            values = column.to_numpy(dtype=np.float64)
            bad = np.flatnonzero(np.isinf(values))
            if len(bad):
                raise ShiftkitError(
                    f"tabular: column '{quote(col)}' of {file} holds {len(bad)} infinite value(s), the first on "
                    f"{where(file, int(bad[0]))}; replace them with finite numbers or list the column in data.ignore=[...]"
                )
        elif pd.api.types.is_object_dtype(column) or pd.api.types.is_string_dtype(column):
            present = column.notna().to_numpy()
            numbers = pd.to_numeric(column, errors="coerce").notna().to_numpy()
            text = np.flatnonzero(present & ~numbers)
            if len(text) and numbers.sum() > present.sum() / 2:
                first = int(text[0])
                raise ShiftkitError(
                    f"tabular: column '{quote(col)}' of {file} holds numbers but {len(text)} non-numeric value(s), "
                    f"the first '{quote(column.iloc[first])}' on {where(file, first)}; fix them (leave a missing "
                    "value empty) or list the column in data.ignore=[...]"
                )

