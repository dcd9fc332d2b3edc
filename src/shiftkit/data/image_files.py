"""The images of an ``image_folder`` dataset (:mod:`.image_folder`): finding them (class folders, or
``train/``, ``val/``, ``test/`` folders of them; image files by extension), decoding them with Pillow
into one ``uint8 [N, C, H, W]`` array cached under ``$SHIFTKIT_CACHE/images``, and their per-channel
statistics.

>>> is_image("cat.JPG"), is_image(".cat.png"), is_image("notes.txt")
(True, False, False)
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..errors import ShiftkitError
from .base import quote
from .images import cache_dir, in_threads, load_cached, read_cached, write_cached

#: Image extensions recognized (compared in lower case), torchvision's ``IMG_EXTENSIONS``.
EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
_VAL_FOLDERS = ("val", "valid", "validation")
#: Bumped whenever decoding changes, so that old cache files are never reused.
_CACHE_VERSION = 1
#: What a root must hold, as error messages say it.
LAYOUT = (
    "it needs one folder per class holding its images (root/<class>/<image>), or train/ (val/, test/) folders of them"
)


def is_image(name: str) -> bool:
    """Whether a file name is a visible image file (by its extension, in any case)."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in EXTENSIONS


def _images_under(folder: Path) -> List[Path]:
    """Every image file under ``folder``, at any depth, hidden folders skipped, links followed once."""
    found, seen = [], set()
    for top, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:  # a link back up the tree
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(top, n) for n in names if is_image(n))
    return found


def _scan(folder: Path, root: Path) -> Dict[str, List[str]]:
    """``{class: sorted image paths relative to root}`` of ``folder``'s class folders."""
    entries = [e for e in folder.iterdir() if not e.name.startswith(".")]
    if not entries:
        raise ShiftkitError(f"image_folder: {folder} is empty; {LAYOUT}")
    classes = sorted(e.name for e in entries if e.is_dir())
    if not classes:
        loose = sum(is_image(e.name) for e in entries)
        raise ShiftkitError(
            f"image_folder: {folder} has no class folder ({len(entries)} file(s) directly in it, {loose} of them "
            f"images); {LAYOUT}"
        )
    out, empty = {}, []
    for name in classes:
        files = sorted(p.relative_to(root).as_posix() for p in _images_under(folder / name))
        out[name] = files
        if not files:
            empty.append(name)
    if empty:
        raise ShiftkitError(
            f"image_folder: class folder(s) {quote(empty)} of {folder} hold no image ({' '.join(EXTENSIONS)}); "
            "add images or remove the folder"
        )
    return out


def discover(root: Path):
    """``(classes, files [N] relative to root, y [N], split [N] or None, layout)``."""
    if not (root / "train").is_dir():
        found = _scan(root, root)
        classes = list(found)
        files = [f for c in classes for f in found[c]]
        y = np.concatenate([np.full(len(found[c]), k, dtype=np.int64) for k, c in enumerate(classes)])
        return classes, files, y, None, "one tree of class folders"
    vals = [n for n in _VAL_FOLDERS if (root / n).is_dir()]
    if len(vals) > 1:
        raise ShiftkitError(f"image_folder: {root} has the folders {', '.join(vals)}; keep one validation folder")
    folders = {0: "train", 1: vals[0] if vals else None, 2: "test" if (root / "test").is_dir() else None}
    parts = {k: _scan(root / name, root) for k, name in folders.items() if name}
    classes = list(parts[0])
    files, y, split = [], [], []
    for k, found in parts.items():
        unknown = [c for c in found if c not in parts[0]]
        if unknown:
            raise ShiftkitError(
                f"image_folder: {root / folders[k]} has class folder(s) {quote(unknown)} that {root / 'train'} "
                "lacks; every class needs training images"
            )
        for c, names in found.items():
            files += names
            y += [classes.index(c)] * len(names)
            split += [k] * len(names)
    layout = "train/" + "".join(f", {folders[k]}/" for k in (1, 2) if folders[k]) + " folders"
    return classes, files, np.array(y, dtype=np.int64), np.array(split, dtype=np.int64), layout


def _shown(root: Path, name: str) -> str:
    return os.path.join(root, quote(name))


def _decode_one(path: Path, shown: str, size: Optional[int], channels: int) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB")
            if size is not None and img.size != (size, size):
                img = img.resize((size, size), Image.BILINEAR)
            array = np.asarray(img, dtype=np.uint8)
    except Exception as exc:  # Pillow raises OSError, ValueError or SyntaxError for broken files
        reason = quote(" ".join(str(exc).split()) or type(exc).__name__)
        raise ShiftkitError(f"image_folder: cannot decode image {shown}: {reason}") from None
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def _cache_file(root: Path, files: List[str], size: Optional[int], channels: int) -> Path:
    digest = hashlib.sha256(repr((_CACHE_VERSION, size, channels)).encode())
    base = root.resolve()
    for name in files:
        path = base / name
        try:
            stat = path.stat()
        except OSError as exc:
            raise ShiftkitError(f"image_folder: cannot read image {_shown(root, name)}: {exc.strerror}") from None
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return cache_dir() / "images" / f"folder-{digest.hexdigest()[:40]}.npy"


def _read_any_size(file: Path, n: int, channels: int) -> Optional[np.ndarray]:
    array = load_cached(file)
    if array is None:
        return None
    return array if array.dtype == np.uint8 and array.ndim == 4 and array.shape[:2] == (n, channels) else None


def decode_folder(root: Path, files: List[str], size: Optional[int], channels: int) -> np.ndarray:
    """All ``files`` (relative to ``root``) as one ``uint8 [N, channels, H, W]`` array, from the cache when
    it holds them (see the module docstring)."""
    file = _cache_file(root, files, size, channels)
    if size is not None:
        cached = read_cached(file, (len(files), channels, size, size))
    else:
        cached = _read_any_size(file, len(files), channels)
    if cached is not None:
        return cached
    paths = [root / name for name in files]
    first = _decode_one(paths[0], _shown(root, files[0]), size, channels)
    out = np.empty((len(files), *first.shape), dtype=np.uint8)
    out[0] = first

    def work(i: int) -> None:
        image = _decode_one(paths[i], _shown(root, files[i]), size, channels)
        if image.shape != first.shape:
            h, w = first.shape[1:]
            raise ShiftkitError(
                f"image_folder: the images differ in size ({_shown(root, files[0])} is {w}x{h}, "
                f"{_shown(root, files[i])} is {image.shape[2]}x{image.shape[1]}); set data.size=N to resize "
                "every image to N x N"
            )
        out[i] = image

    in_threads(work, range(1, len(files)))
    write_cached(file, out)
    return out


def channel_stats(x: np.ndarray) -> Tuple[List[float], List[float]]:
    """Per-channel mean and (population) std of ``uint8 [N, C, H, W]`` images scaled to [0, 1], in chunks.

    >>> channel_stats(np.array([[[[0, 255]]]], dtype=np.uint8))
    ([0.5], [0.5])
    """
    total = np.zeros(x.shape[1])
    squares = np.zeros(x.shape[1])
    for start in range(0, len(x), 512):
        chunk = x[start : start + 512].astype(np.float64) / 255.0
        total += chunk.sum(axis=(0, 2, 3))
        squares += np.square(chunk).sum(axis=(0, 2, 3))
    count = x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    std = np.where(std > 1e-6, std, 1.0)  # constant images stay finite
    return [round(float(m), 6) for m in mean], [round(float(s), 6) for s in std]

