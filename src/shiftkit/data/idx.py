"""IDX files (MNIST, Fashion-MNIST), gzipped or not, from any folder (docs/METHODS.md#datasets-offline).

A folder holds ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
``t10k-labels-idx1-ubyte``, each possibly with ``.gz``. Fashion-MNIST is found through ``root=``, then
``$SHIFTKIT_DATA/fashion-mnist``, then ``/usr/share/datasets/fashion-mnist`` (Debian's
``dataset-fashion-mnist``, installed by ``make data``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

from ..errors import ShiftkitError
from .roots import READ_ERRORS, find_root, maybe_gz, open_maybe_gz, unreadable

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_CODES = {np.dtype(dtype): code for code, dtype in _DTYPES.items()}
_CACHE: Dict[Tuple[str, str], np.ndarray] = {}


def read_idx(path: Path) -> np.ndarray:
    """One IDX array: magic ``0 0 <type> <ndim>``, ``ndim`` big-endian sizes, then the data.

    >>> import gzip, io, tempfile, os
    >>> raw = bytes([0, 0, 8, 1]) + (3).to_bytes(4, "big") + bytes([7, 8, 9])
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = open(os.path.join(d, "x-idx1-ubyte"), "wb").write(raw)
    ...     read_idx(Path(d) / "x-idx1-ubyte").tolist()
    [7, 8, 9]
    """
    file = maybe_gz(path)
    try:
        with open_maybe_gz(path) as fh:
            raw = fh.read()
    except READ_ERRORS as exc:
        raise ShiftkitError(unreadable(file, exc)) from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise ShiftkitError(f"{file} is not an IDX file (bad magic number)")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_DTYPES[raw[2]])
    expected = 4 + 4 * ndim + int(np.prod(dims)) * dtype.itemsize
    if len(raw) != expected:
        raise ShiftkitError(f"{file} is truncated or malformed: {len(raw)} bytes, expected {expected}")
    return np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim).reshape(dims)


def load_idx(
    name: str, root: Optional[str], how: str, system=(), num_classes: int = 10
) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """``{"train": (images uint8 [N, 1, H, W], labels int64 [N]), "test": ...}``, read once per folder.
    Float labels (IDX types 0x0D, 0x0E: casting would truncate 6.7 to class 6) and a label outside
    ``0..num_classes-1`` are refused, naming the file (and the position)."""
    folder = find_root(name, root, [f for pair in FILES.values() for f in pair], how, system)
    out = {}
    for split, (images_file, labels_file) in FILES.items():
        for f in (images_file, labels_file):
            key = (str(folder.resolve()), f)
            if key not in _CACHE:
                _CACHE[key] = read_idx(folder / f)
        images, labels = _CACHE[(str(folder.resolve()), images_file)], _CACHE[(str(folder.resolve()), labels_file)]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ShiftkitError(f"{folder}: {split} images {images.shape} and labels {labels.shape} do not match")
        if labels.dtype.kind == "f":
            raise ShiftkitError(
                f"{maybe_gz(folder / labels_file)} holds {labels.dtype.name} values (IDX type "
                f"0x{_CODES[labels.dtype]:02X}); labels must be integers (type 0x08 unsigned byte, as in MNIST)"
            )
        bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
        if len(bad):
            raise ShiftkitError(
                f"{maybe_gz(folder / labels_file)}: label {int(labels[bad[0]])} at position {int(bad[0])} is outside "
                f"0..{num_classes - 1} ({len(bad)} such label(s)); {name} has {num_classes} classes"
            )
        out[split] = (images[:, None, :, :], labels.astype(np.int64))
    return out
