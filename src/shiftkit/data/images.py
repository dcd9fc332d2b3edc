"""Image files decoded once into one ``uint8`` array ``[N, 3, H, W]``, cached on disk (docs/PERFORMANCE.md).

Each image is opened with Pillow, converted to RGB and transformed exactly as torchvision does on PIL
images, then stacked: an optional center crop to the shorter side (CelebA's ``CenterCrop(178)``,
docs/METHODS.md#data-celeba), a bilinear resize to ``size = (H, W)`` (``Resize((H, W))``), and an optional center crop to
``crop = (h, w)`` (Waterbirds' ``Resize(256/224 · res)`` then ``CenterCrop(res)``, docs/METHODS.md#data-waterbirds).
Normalization is not applied here: it runs batched on the training device (:mod:`.pipeline`).

Decoding is the only per-example Python work of an image dataset, so it happens once: the array is
saved under ``$SHIFTKIT_CACHE/images`` (default ``~/.cache/shiftkit/images``) as one ``.npy`` named by a
hash of the resolved paths, their sizes and modification times, and the transform, and written
atomically (temporary file, then ``os.replace``), so an interrupted build never leaves a torn cache
file. A missing or undecodable image is one :class:`~shiftkit.errors.ShiftkitError` naming the file.

>>> center_box(178, 218, (178, 178))   # left, top, right, bottom of CelebA's center crop
(0, 20, 178, 198)
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Tuple

import numpy as np
import torch

from ..errors import ShiftkitError
from .base import quote

#: Bumped whenever decoding changes, so that old cache files are never reused.
_CACHE_VERSION = 1


def cache_dir() -> Path:
    """``$SHIFTKIT_CACHE`` or ``~/.cache/shiftkit``: where decoded arrays are kept."""
    return Path(os.environ.get("SHIFTKIT_CACHE") or Path.home() / ".cache" / "shiftkit").expanduser()


def center_box(width: int, height: int, crop: Tuple[int, int]) -> Tuple[int, int, int, int]:
    """The box of torchvision's ``CenterCrop(crop)`` on a ``width x height`` image (same rounding)."""
    h, w = crop
    top = int(round((height - h) / 2.0))
    left = int(round((width - w) / 2.0))
    return left, top, left + w, top + h


def _shown(path: Path) -> str:
    """``path`` for a message, its file name (from a metadata file, so data) capped by :func:`~.base.quote`."""
    return os.path.join(path.parent, quote(path.name))


def _decode_one(path: Path, size: Tuple[int, int], square: bool, crop: Optional[Tuple[int, int]]) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if square:
                side = min(img.size)
                img = img.crop(center_box(img.width, img.height, (side, side)))
            img = img.resize((size[1], size[0]), Image.BILINEAR)
            if crop is not None:
                img = img.crop(center_box(img.width, img.height, crop))
            return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)
    except Exception as exc:  # Pillow raises OSError, ValueError or SyntaxError for broken files
        reason = quote(" ".join(str(exc).split()) or type(exc).__name__)
        raise ShiftkitError(f"cannot decode image {_shown(path)}: {reason}") from None


def _cache_key(paths: Sequence[Path], size, square: bool, crop) -> str:
    digest = hashlib.sha256(repr((_CACHE_VERSION, tuple(size), square, crop and tuple(crop))).encode())
    for path in paths:
        try:
            stat = path.stat()
        except OSError:
            raise ShiftkitError(f"missing image file {_shown(path)}") from None
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:40]


def load_cached(file: Path) -> Optional[np.ndarray]:
    """The array cached in ``file``; None if absent or damaged (then it is rebuilt, never trusted)."""
    if not file.exists():
        return None
    try:
        return np.load(file, allow_pickle=False)
    except (OSError, ValueError):
        return None


def read_cached(file: Path, shape: tuple, dtype=np.uint8) -> Optional[np.ndarray]:
    """The array cached in ``file`` if it has this shape and dtype; None if absent or damaged."""
    array = load_cached(file)
    return array if array is not None and array.shape == shape and array.dtype == dtype else None


def write_cached(file: Path, array: np.ndarray, what: str = "decoded images") -> None:
    """Write ``array`` to ``file`` atomically; a failure is a warning (the next build recomputes it)."""
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=file.stem, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                np.save(handle, array)
            os.replace(tmp, file)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as exc:  # a read-only cache costs speed on the next build, not correctness
        warnings.warn(f"shiftkit: could not cache {what} in {file.parent}: {exc}", stacklevel=3)


def in_threads(work: Callable[[int], None], indices: Iterable[int]) -> None:
    """``work(i)`` for every index on a few threads: Pillow releases the GIL while decoding and resizing,
    so a one-off decode runs in parallel. The first error stops the rest and is raised."""
    pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))
    try:
        for _ in pool.map(work, indices):
            pass
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def decode_images(
    paths: Sequence[os.PathLike],
    size: Tuple[int, int],
    square: bool = False,
    crop: Optional[Tuple[int, int]] = None,
    cache: bool = True,
) -> torch.Tensor:
    """Decode ``paths`` into a ``uint8`` tensor ``[N, 3, H, W]`` (see the module docstring).

    ``size``: the ``(H, W)`` of the bilinear resize; ``square``: center-crop to the shorter side first;
    ``crop``: center-crop ``(h, w)`` after resizing, so the output is ``[N, 3, h, w]``; ``cache``: read
    and write the on-disk cache.
    """
    paths = [Path(p).resolve() for p in paths]
    size = (int(size[0]), int(size[1]))
    crop = None if crop is None else (int(crop[0]), int(crop[1]))
    height, width = crop or size
    if min(size) < 1 or (crop is not None and (crop[0] > size[0] or crop[1] > size[1] or min(crop) < 1)):
        raise ShiftkitError(f"image size {size} and crop {crop} must be positive, the crop within the size")
    shape = (len(paths), 3, height, width)
    file = cache_dir() / "images" / f"{_cache_key(paths, size, square, crop)}.npy"
    cached = read_cached(file, shape) if cache else None
    if cached is not None:
        return torch.from_numpy(cached)
    out = np.empty(shape, dtype=np.uint8)

    def work(i: int) -> None:
        out[i] = _decode_one(paths[i], size, square, crop)

    in_threads(work, range(len(paths)))
    if cache:
        write_cached(file, out)
    return torch.from_numpy(out)


class DecodedOnDemand:
    """Image files as a source's inputs (:class:`~.sources.Part`): ``self[index]`` decodes the files ``index``
    with :func:`decode_images` (``size``, ``crop``), so only the images a protocol keeps are decoded."""

    def __init__(self, paths: Sequence[os.PathLike], size: Tuple[int, int], crop: Optional[Tuple[int, int]] = None):
        self.paths, self.size, self.crop = list(paths), size, crop

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: Sequence[int]) -> torch.Tensor:
        return decode_images([self.paths[int(i)] for i in index], self.size, crop=self.crop)
