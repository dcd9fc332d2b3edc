"""Your own images, laid out as torchvision's ``ImageFolder`` reads them (docs/METHODS.md#data-image_folder).

Layout (``root``):

- ``root/<class>/<image>``: one folder per class, any number of classes (at least 2). The classes are the
  sorted folder names and a label is the index of its class in that list, as torchvision's
  ``ImageFolder`` numbers them (``info["classes"]``). Images in subfolders of a class folder belong to that
  class (all depths, as torchvision). Image files are recognized by their extension, in any case
  (:data:`EXTENSIONS`); hidden files and folders (names starting with ``.``) and other files are
  ignored, and so are files directly in ``root``. The splits are drawn at random (below).
- ``root/train/<class>/...`` with optional ``root/val/`` (or ``valid/``, ``validation/``) and
  ``root/test/``, each laid out as above: the folders are the splits (chosen whenever ``root/train/``
  exists, so a class must not be called ``train``). The classes are ``train/``'s; ``val/`` and ``test/``
  may lack some but hold no other.

The splits the layout does not give are drawn from the training images (all images without a
``train/`` folder): within each (class, group) cell one permutation by ``default_rng(split_seed)``, the
first ``round(test_fraction · n)`` images to test, the next ``round(val_fraction · n)`` to validation,
at least one left for training (:func:`~.tabular.stratified_split`, as ``data=tabular`` draws rows).
Every split must end up non-empty: the training loop selects models and reports metrics on validation and
test images, as every dataset of the library has them.

Groups (``groups=FILE.csv``): a CSV with a header, a column ``path`` (or ``file``, ``filename``,
``img_filename``) holding each image's path relative to ``root`` (``cat/001.png``, or ``train/cat/001.png``
in the split layout), one row per image, and any of:

- ``group``: the group of each image, used as it is (``num_groups`` = the distinct values);
- attribute columns: ``g = y · A + a``, the (class, attribute) cells like Waterbirds' ``2·y + place``
  (``A`` = the attribute's distinct values, ``K · A`` groups, some possibly empty). The attribute is the
  column named by ``attribute``, else the only column besides ``path``/``split``/``group``;
  ``attribute`` wins over a ``group`` column;
- ``split``: ``train``/``val``/``test`` (or ``valid``, ``validation``) or ``0``/``1``/``2`` as in Waterbirds'
  ``metadata.csv``; it then gives the splits (not with a ``train/`` folder: one source of splits), and
  a split it leaves empty is drawn as above.

Values may be integers or text; either way the sorted distinct values become ids ``0..G-1``
(``info["group_values"]`` / ``info["attribute_values"]`` map ids back). Without a CSV, the groups are
the classes. Every image must have exactly one row and every row an image: a missing or extra one is one
error naming the first few. Columns named ``Unnamed: ...`` (a pandas index) are ignored.

Images: each is opened with Pillow, converted to RGB (``channels=3``) or grayscale (``channels=1``)
and resized bilinearly to ``size x size`` (the aspect ratio is not kept; ``size=None`` keeps the images'
own size, which they must then share). The decoded ``uint8 [N, C, H, W]`` array of all the images is
cached under ``$SHIFTKIT_CACHE/images`` as one ``.npy`` named by a hash of the files' paths, sizes and
modification times and of ``size`` / ``channels``, written atomically (:mod:`.images`): a second build
reads it without decoding, a changed file decodes again. A corrupt image is one error naming the file.
Normalization runs on the training device (:class:`~.pipeline.Pipeline`): ``normalize="train"`` with
the training split's per-channel mean and std (``info["mean"]``, ``info["std"]``), ``"imagenet"``
with ImageNet's (for pretrained weights; their channel average for grayscale), ``"none"`` scales to
``[0, 1]`` only. ``augment`` adds a random resized crop (scale 0.7-1, ratio 3/4-4/3) and horizontal
flips to training batches.

>>> sorted(["dog", "cat", "Zebra"])   # the class order: Python's sort of the folder names
['Zebra', 'cat', 'dog']
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from pathlib import Path, PurePosixPath
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from ..errors import ShiftkitError
from . import register
from .base import Split, Splits, dense_ids, optional_root, quote
from .celeba import IMAGENET_MEAN, IMAGENET_STD
from .images import cache_dir, in_threads, load_cached, read_cached, write_cached
from .pipeline import Pipeline
from .roots import read_csv
from .tabular import stratified_split

#: Image extensions recognized (compared in lower case), torchvision's ``IMG_EXTENSIONS``.
EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
NORMALIZE = ("train", "imagenet", "none")
#: The training augmentation: ``RandomResizedCrop(scale=(0.7, 1.0), ratio=(3/4, 4/3))`` then flips.
AUGMENT_CROP = [0.7, 1.0, 0.75, 4.0 / 3.0]
PATH_COLUMNS = ("path", "file", "filename", "img_filename")
_VAL_FOLDERS = ("val", "valid", "validation")
_SPLIT_IDS = {"train": 0, "val": 1, "valid": 1, "validation": 1, "test": 2, "0": 0, "1": 1, "2": 2}
_SPLIT_NAMES = ("training", "validation", "test")
#: Bumped whenever decoding changes, so that old cache files are never reused.
_CACHE_VERSION = 1
_LAYOUT = (
    "it needs one folder per class holding its images (root/<class>/<image>), or train/ (val/, test/) folders of them"
)
_SHOWN = 3  # files named in an error about many


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
        raise ShiftkitError(f"image_folder: {folder} is empty; {_LAYOUT}")
    classes = sorted(e.name for e in entries if e.is_dir())
    if not classes:
        loose = sum(is_image(e.name) for e in entries)
        raise ShiftkitError(
            f"image_folder: {folder} has no class folder ({len(entries)} file(s) directly in it, {loose} of them "
            f"images); {_LAYOUT}"
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


def _discover(root: Path):
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


# --------------------------------------------------------------------------------------------- groups


def _values(cells: np.ndarray) -> np.ndarray:
    """Text cells as the values their user means: integers, other numbers, or text (sorted as such)."""
    import pandas as pd

    numbers = pd.to_numeric(pd.Series(cells), errors="coerce").to_numpy(dtype=np.float64)
    if not np.isnan(numbers).any():
        whole = (numbers == np.round(numbers)).all() and (np.abs(numbers) < 2.0**53).all()
        return numbers.astype(np.int64) if whole else numbers
    return cells


def _ids(cells: np.ndarray) -> Tuple[np.ndarray, list]:
    ids, distinct = dense_ids(_values(cells))
    return ids, [v.item() if hasattr(v, "item") else v for v in distinct]


def _csv_path(groups: str, root: Path) -> Path:
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


def _read_groups(file: Path, root: Path, files: List[str], attribute: Optional[str]) -> dict:
    """The CSV's cells aligned with ``files``, checked: ``{"split", "group", "values"}`` (text arrays, or None
    for a column not given or not used), ``"attribute"`` (the attribute column's name, or None) and ``"path"``."""
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
    used = [path] + [c for c in ("split", "group" if attribute is None else None, attribute) if c and c in columns]
    for col in used:
        cells = table[col].str.strip().to_numpy()
        blank = np.flatnonzero(cells == "")
        if len(blank):
            raise ShiftkitError(
                f"image_folder: column '{quote(col)}' of {file} has {len(blank)} empty cell(s), the first on line "
                f"{int(blank[0]) + 2}; every image needs a value"
            )
    paths = [_relative(c, root) for c in table[path]]
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
    order = np.argsort([index[p] for p in paths])  # rows in the order of files

    def pick(col: Optional[str]) -> Optional[np.ndarray]:
        return table[col].str.strip().to_numpy()[order] if col and col in columns else None

    return {"split": pick("split"), "group": pick("group") if attribute is None else None,
            "attribute": attribute, "values": pick(attribute), "path": path}


def _split_ids(cells: np.ndarray, file: Path) -> np.ndarray:
    keys = [c.lower() for c in cells]
    unknown = sorted({c for c, k in zip(cells, keys) if k not in _SPLIT_IDS})
    if unknown:
        raise ShiftkitError(
            f"image_folder: column 'split' of {file} holds {quote(unknown)}; use train/val/test or 0/1/2"
        )
    return np.array([_SPLIT_IDS[k] for k in keys], dtype=np.int64)


# ------------------------------------------------------------------------------------------- decoding


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


# ---------------------------------------------------------------------------------------------- build


def _hint(k: int, source: Optional[str], fraction: float) -> str:
    """How to give split ``k`` (0 train, 1 val, 2 test) some images; a val or test split is empty only
    when drawing it from the training images gave none."""
    if k == 0:
        return f"mark some rows train in the split column of {source}" if source else "add training images"
    key = "data.val_fraction" if k == 1 else "data.test_fraction"
    if fraction == 0:
        return f"set {key} > 0 (there is no {('train', 'val', 'test')[k]} split to read)"
    return (f"add images or raise {key} (now {fraction}): each (class, group) cell gives round({key} * its "
            "training images), keeping at least one for training")


@register("image_folder")
def image_folder(
    root: Optional[str] = None,
    size: Optional[int] = 64,
    channels: int = 3,
    groups: Optional[str] = None,
    attribute: Optional[str] = None,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    normalize: str = "train",
    augment: bool = False,
) -> Splits:
    """Your own images, ``root/<class>/<image>`` as torchvision's ImageFolder reads them, with optional groups
    from a CSV.

    ``root``: the folder (required); ``root/train/``, ``val/``, ``test/`` give the splits, else (and for a
    missing val or test) they are drawn per (class, group) cell with ``val_fraction`` / ``test_fraction``
    / ``split_seed``. ``size``: every image resized to ``size x size`` (``None``: keep, all alike);
    ``channels``: 3 (RGB) or 1 (grayscale). ``groups``: a CSV (``path`` column, then ``group``, an attribute
    or ``split``); ``attribute``: its column giving ``g = y · A + a``. ``normalize``: ``train``,
    ``imagenet`` or ``none``; ``augment``: random resized crops and flips in training. See the module
    docstring for the details; ``info["classes"]`` and ``info["groups"]`` name the ids.
    """
    if channels not in (1, 3):
        raise ShiftkitError(f"image_folder: channels must be 1 (grayscale) or 3 (RGB), got {channels}")
    if size is not None and size < 1:
        raise ShiftkitError(f"image_folder: size must be >= 1 (or null to keep the images' size), got {size}")
    if normalize not in NORMALIZE:
        raise ShiftkitError(f"image_folder: normalize must be one of {', '.join(NORMALIZE)}, got '{normalize}'")
    if not (0 <= val_fraction and 0 <= test_fraction and val_fraction + test_fraction < 1):
        raise ShiftkitError(
            f"image_folder: need val_fraction, test_fraction >= 0 with a sum < 1, got {val_fraction}, {test_fraction}"
        )
    if attribute is not None and not groups:
        raise ShiftkitError("image_folder: data.attribute names a column of the groups CSV; set data.groups=FILE.csv")
    if not optional_root(root):
        raise ShiftkitError("image_folder: set data.root=<a folder of class folders, root/<class>/<image>>")
    folder = Path(root).expanduser()
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise ShiftkitError(f"image_folder: the root {folder} {what}; {_LAYOUT}")
    classes, files, y, split, layout = _discover(folder)
    if len(classes) < 2:
        raise ShiftkitError(
            f"image_folder: {folder} has a single class folder ({quote(classes)}); a classifier needs at least 2"
        )
    num_classes = len(classes)

    info: Dict[str, object] = {"root": str(folder), "layout": layout, "classes": classes, "class_names": classes}
    g, num_groups, names, source = y.copy(), num_classes, list(classes), None
    if groups:
        file = _csv_path(groups, folder)
        table = _read_groups(file, folder, files, attribute)
        info["groups_file"] = str(file)
        if table["values"] is not None:
            a, values = _ids(table["values"])
            g, num_groups = y * len(values) + a, num_classes * len(values)
            names = [f"{c}, {table['attribute']}={v}" for c in classes for v in values]
            info.update(group_source=f"(class, {table['attribute']}) cells", attribute=table["attribute"],
                        attribute_values=values)
        elif table["group"] is not None:
            g, values = _ids(table["group"])
            num_groups, names = len(values), [str(v) for v in values]
            info.update(group_source="column 'group'", group_values=values)
        if table["split"] is not None:
            if split is not None:
                raise ShiftkitError(
                    f"image_folder: {file} has a split column and {folder} has a train/ folder; give the splits "
                    "one way (remove the column, or lay the images out in one tree)"
                )
            split, source = _split_ids(table["split"], file), str(file)
            info["layout"] = f"{layout}, splits from the split column"
    if "group_source" not in info:
        info["group_source"] = "classes"
    info["groups"] = names

    split = np.zeros(len(files), dtype=np.int64) if split is None else split
    missing = [k for k in (1, 2) if not (split == k).any()]
    if missing:
        pool = np.flatnonzero(split == 0)
        fractions = [val_fraction if 1 in missing else 0.0, test_fraction if 2 in missing else 0.0]
        split[pool] = stratified_split(y[pool] * num_groups + g[pool], *fractions, split_seed)
        info["drawn"] = [("train", "val", "test")[k] for k in missing]
        info["split_rule"] = f"stratified by (class, group), seed {split_seed}"
    for k in range(3):
        if not (split == k).any():
            fraction = (0, val_fraction, test_fraction)[k]
            hint = _hint(k, source, fraction)
            raise ShiftkitError(f"image_folder: {folder} leaves no {_SPLIT_NAMES[k]} image; {hint}")

    images = decode_folder(folder, files, size, channels)
    train = split == 0
    if normalize == "train":
        mean, std = channel_stats(images[np.flatnonzero(train)])
    elif normalize == "imagenet":
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ([0.449], [0.226])
    else:
        mean = std = None
    info.update(size=list(images.shape[2:]), channels=channels, normalize=normalize, mean=mean, std=std,
                images=len(files))
    x = torch.from_numpy(images)
    y_t, g_t = torch.from_numpy(y), torch.from_numpy(g)

    def subset(k: int) -> Split:
        index = torch.from_numpy(np.flatnonzero(split == k))
        return Split(x[index], y_t[index], g_t[index], num_classes, num_groups)

    pipeline = Pipeline(mean=list(mean) if mean else None, std=list(std) if std else None, flip=augment,
                        resized_crop=list(AUGMENT_CROP) if augment else None)
    return Splits(subset(0), subset(1), subset(2), info=info, pipeline=pipeline)
