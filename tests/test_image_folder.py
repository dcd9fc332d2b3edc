"""``data=image_folder``: a user's folder of class folders (torchvision's ImageFolder layout), the split
layouts and the split rule, groups from a CSV, the decoded-image cache, one-line errors, and one run of
the command line end to end. Fixtures are tiny PNGs whose pixels encode their class and file."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from shiftkit import data
from shiftkit.cli import main
from shiftkit.errors import ShiftkitError


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("SHIFTKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SHIFTKIT_DATA", raising=False)


def _color(c, i):  # red encodes the class, green the file: pixels trace labels back to files
    return (60 * c + 10, i, 100)


def _images(folder, classes=("bird", "cat", "dog"), per=8, size=(12, 12), ext=".png", start=0):
    """``per`` PNGs of each class under ``folder/<class>/``; class ``c`` (in sorted order) has red ``60c + 10``,
    image ``i`` (counted over the whole tree from ``start``, below 256) green ``i``."""
    i = start
    for c, name in enumerate(sorted(classes)):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for _ in range(per):
            Image.new("RGB", size, _color(c, i)).save(folder / name / f"img_{i:03d}{ext}", format="PNG")
            i += 1
    return folder


def _build(root, **kw):
    return data.build("image_folder", root=str(root), **{"size": 12, **kw})


def _red_class(split):
    return (split.x[:, 0, 0, 0].long() - 10) // 60


def _file_index(split):
    return split.x[:, 1, 0, 0].long()


def _file_ids(split):
    return set(_file_index(split).tolist())


def _one_line(exc_info, *parts):
    message = str(exc_info.value)
    assert "\n" not in message, message
    for part in parts:
        assert part in message, message


# ---------------------------------------------------------------------------------------------- layouts


def test_a_tree_of_class_folders_reads_as_torchvision_imagefolder(tmp_path):
    root = _images(tmp_path / "root", classes=("dog", "cat", "bird"))
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "cat" / ".DS_Store").write_bytes(b"\0")
    (root / "cat" / ".hidden.png").write_bytes(b"not read")  # hidden: ignored, never decoded
    (root / ".git").mkdir()  # a hidden folder is no class
    (root / "README.md").write_text("files directly in the root are ignored")
    Image.new("RGB", (12, 12), (255, 255, 255)).save(root / "loose.png")
    nested = root / "dog" / "more" / "deeper"
    nested.mkdir(parents=True)
    Image.new("RGB", (12, 12), _color(2, 30)).save(nested / "UPPER.PNG")  # nested, upper-case extension
    Image.new("RGB", (12, 12), _color(2, 31)).save(root / "dog" / "photo.JPEG", format="PNG")
    (root / "dog" / ".skip").mkdir()
    Image.new("RGB", (12, 12), _color(0, 32)).save(root / "dog" / ".skip" / "x.png")  # hidden subfolder

    splits = _build(root)
    assert splits.info["classes"] == ["bird", "cat", "dog"] == splits.info["class_names"]
    assert splits.info["groups"] == ["bird", "cat", "dog"] and splits.num_groups == 3
    total = [a + b + c for a, b, c in zip(*(s.class_counts for s in (splits.train, splits.val, splits.test)))]
    assert total == [8, 8, 10] and splits.info["images"] == 26
    for split in (splits.train, splits.val, splits.test):
        assert torch.equal(_red_class(split), split.y) and torch.equal(split.g, split.y)  # label = sorted index
        assert split.x.dtype == torch.uint8 and split.x.shape[1:] == (3, 12, 12)
    ids = set().union(*(_file_ids(s) for s in (splits.train, splits.val, splits.test)))
    assert ids == set(range(24)) | {30, 31}  # every image once; hidden and loose files left out


def test_size_channels_and_keeping_the_size(tmp_path):
    root = _images(tmp_path / "root", per=4, size=(10, 14))
    small = _build(root, size=6, channels=1, val_fraction=0.25, test_fraction=0.25)
    assert small.input_shape == (1, 6, 6) and small.info["size"] == [6, 6]
    level = int(small.train.x[small.train.y == 1][0, 0, 0, 0])  # class 1: red 70, green 4..7, blue 100
    assert abs(level - (0.299 * 70 + 0.587 * 5.5 + 0.114 * 100)) < 3  # Pillow's L = .299 R + .587 G + .114 B
    kept = _build(root, size=None)
    assert kept.input_shape == (3, 14, 10) and kept.info["size"] == [14, 10]  # H x W of 10-wide images
    Image.new("RGB", (8, 8)).save(root / "cat" / "odd.png")
    with pytest.raises(ShiftkitError) as err:
        _build(root, size=None)
    _one_line(err, "the images differ in size", "odd.png is 8x8", "data.size=N")


def test_normalization_and_augmentation(tmp_path):
    root = _images(tmp_path / "root")
    train = _build(root)
    x = train.train.x.double() / 255
    assert np.allclose(train.pipeline.mean, x.mean(dim=(0, 2, 3)).numpy(), atol=1e-5)
    assert np.allclose(train.pipeline.std[:2], x.std(dim=(0, 2, 3), unbiased=False).numpy()[:2], atol=1e-5)
    assert train.pipeline.std[2] == 1.0  # a constant channel (blue) is not divided by zero
    assert not train.pipeline.augments and train.info["mean"] == train.pipeline.mean
    net = _build(root, normalize="imagenet", augment=True)
    assert net.pipeline.mean == [0.485, 0.456, 0.406] and net.pipeline.flip and net.pipeline.resized_crop
    assert _build(root, normalize="imagenet", channels=1).pipeline.mean == [0.449]
    assert _build(root, normalize="none").pipeline.mean is None


# -------------------------------------------------------------------------------------------- split rule


def test_the_split_rule_is_deterministic_stratified_and_disjoint(tmp_path):
    root = _images(tmp_path / "root", per=10)
    a = _build(root, val_fraction=0.2, test_fraction=0.3, split_seed=3)
    b = _build(root, val_fraction=0.2, test_fraction=0.3, split_seed=3)
    for s, t in ((a.train, b.train), (a.val, b.val), (a.test, b.test)):
        assert torch.equal(s.x, t.x) and torch.equal(s.y, t.y)
    assert a.train.class_counts == [5, 5, 5] and a.val.class_counts == [2, 2, 2] and a.test.class_counts == [3, 3, 3]
    parts = [_file_ids(s) for s in (a.train, a.val, a.test)]
    assert sum(map(len, parts)) == 30 and set().union(*parts) == set(range(30))  # disjoint, complete
    other = _build(root, val_fraction=0.2, test_fraction=0.3, split_seed=4)
    assert _file_ids(other.test) != parts[2] and other.test.class_counts == [3, 3, 3]
    assert a.info["drawn"] == ["val", "test"] and "seed 3" in a.info["split_rule"]


def test_the_split_rule_is_stratified_by_group(tmp_path):
    root = _images(tmp_path / "root", classes=("a", "b"), per=8)
    rows = ["path,place"] + [f"{p.relative_to(root).as_posix()},{'land' if int(p.stem[-3:]) % 2 else 'water'}"
                             for p in sorted(root.rglob("*.png"))]
    (root / "groups.csv").write_text("\n".join(rows) + "\n")
    splits = _build(root, groups="groups.csv", val_fraction=0.25, test_fraction=0.25)  # a file name in root
    assert splits.info["groups"] == ["a, place=land", "a, place=water", "b, place=land", "b, place=water"]
    assert splits.train.group_counts == [2, 2, 2, 2] and splits.val.group_counts == [1, 1, 1, 1]
    assert splits.test.group_counts == [1, 1, 1, 1]


def test_split_folders_and_the_splits_they_lack(tmp_path):
    root = tmp_path / "root"
    _images(root / "train", per=6)
    _images(root / "val", classes=("bird", "cat"), per=2, start=100)  # val may lack a class
    _images(root / "test", per=3, start=150)
    splits = _build(root)
    assert splits.info["classes"] == ["bird", "cat", "dog"] and "drawn" not in splits.info
    assert splits.train.class_counts == [6, 6, 6] and splits.val.class_counts == [2, 2, 0]
    assert _file_ids(splits.val) == set(range(100, 104)) and min(_file_ids(splits.test)) == 150
    assert torch.equal(_red_class(splits.val), splits.val.y)

    only = tmp_path / "only"
    _images(only / "train", per=10)
    _images(only / "test", per=2, start=100)
    drawn = _build(only, val_fraction=0.3)  # no val/: drawn from train/, the test folder kept whole
    assert drawn.info["drawn"] == ["val"] and drawn.val.class_counts == [3, 3, 3]
    assert drawn.train.class_counts == [7, 7, 7] and drawn.test.class_counts == [2, 2, 2]
    assert _file_ids(drawn.val) | _file_ids(drawn.train) == set(range(30))
    with pytest.raises(ShiftkitError) as err:
        _build(only, val_fraction=0)
    _one_line(err, "leaves no validation image", "set data.val_fraction > 0")

    _images(root / "val", classes=("eel",), per=1, start=250)
    with pytest.raises(ShiftkitError) as err:
        _build(root)
    _one_line(err, "class folder(s) eel", "every class needs training images")


# ------------------------------------------------------------------------------------------ groups CSV


def _csv(root, header, row):
    """A CSV with ``header`` and ``row(relative path, class, file index)`` per image under ``root``."""
    lines = [header]
    for p in sorted(root.rglob("*.png")):
        rel = p.relative_to(root).as_posix()
        lines.append(row(rel, rel.split("/")[-2], int(p.stem[-3:])))
    file = root.parent / "meta.csv"
    file.write_text("\n".join(lines) + "\n")
    return file


def test_groups_from_a_group_column_and_splits_from_a_split_column(tmp_path):
    root = _images(tmp_path / "root", per=6)
    split = {0: "train", 1: "train", 2: "train", 3: "Val", 4: "test", 5: "test"}
    file = _csv(root, "file,group,split", lambda rel, c, i: f"{rel},{i % 3 * 10 + 5},{split[i % 6]}")
    splits = _build(root, groups=str(file))
    assert splits.info["group_values"] == [5, 15, 25] and splits.info["groups"] == ["5", "15", "25"]
    assert splits.num_groups == 3 and "split column" in splits.info["layout"] and "drawn" not in splits.info
    assert (len(splits.train), len(splits.val), len(splits.test)) == (9, 3, 6)
    for s in (splits.train, splits.val, splits.test):
        assert torch.equal(s.g, _file_index(s) % 3)  # the group column, image by image
    part = [0, 0, 0, 1, 2, 2]
    numeric = _csv(root, "path,split,colour", lambda rel, c, i: f"{rel},{part[i % 6]},{'red' if i % 2 else 'blue'}")
    other = _build(root, groups=str(numeric))  # 0/1/2 splits (Waterbirds' metadata.csv), a text attribute
    assert other.info["attribute_values"] == ["blue", "red"] and other.num_groups == 6
    assert (len(other.train), len(other.val), len(other.test)) == (9, 3, 6)
    assert torch.equal(other.train.g // 2, other.train.y)  # g = y * A + a


def test_a_split_column_leaving_out_val_draws_it_from_train(tmp_path):
    root = _images(tmp_path / "root", per=10)
    file = _csv(root, "path,split", lambda rel, c, i: f"{rel},{'test' if i % 5 == 0 else 'train'}")
    splits = _build(root, groups=str(file), val_fraction=0.25)
    assert splits.test.class_counts == [2, 2, 2] and splits.val.class_counts == [2, 2, 2]
    assert splits.info["drawn"] == ["val"] and splits.info["group_source"] == "classes"


def test_the_attribute_option_chooses_among_columns(tmp_path):
    root = _images(tmp_path / "root", classes=("a", "b"), per=8)
    file = _csv(root, "path,size,shade", lambda rel, c, i: f"{rel},{i % 2},{i % 4 // 2}")
    with pytest.raises(ShiftkitError) as err:
        _build(root, groups=str(file))
    _one_line(err, "several attribute columns (size, shade)", "data.attribute=NAME")
    splits = _build(root, groups=str(file), attribute="shade", val_fraction=0.25, test_fraction=0.25)
    assert splits.info["groups"] == ["a, shade=0", "a, shade=1", "b, shade=0", "b, shade=1"]
    with pytest.raises(ShiftkitError) as err:
        _build(root, groups=str(file), attribute="colour")
    _one_line(err, "no attribute column 'colour'", "columns: path, size, shade")


def test_the_csv_must_match_the_images(tmp_path):
    root = _images(tmp_path / "root", per=4)
    rows = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    file = tmp_path / "g.csv"
    file.write_text("path,group\n" + "".join(f"{r},0\n" for r in rows[1:]))
    with pytest.raises(ShiftkitError) as err:
        _build(root, groups=str(file))
    _one_line(err, "1 image(s) under", "have no row in", rows[0])
    file.write_text("path,group\n" + "".join(f"{r},0\n" for r in rows) + "bird/gone.png,1\ncat/lost.png,1\n")
    with pytest.raises(ShiftkitError) as err:
        _build(root, groups=str(file))
    _one_line(err, "2 row(s) of", "name no image", "bird/gone.png, cat/lost.png")
    file.write_text("image,group\n" + "".join(f"{r},0\n" for r in rows))
    with pytest.raises(ShiftkitError) as err:
        _build(root, groups=str(file))
    _one_line(err, "no column path or file", "columns: image, group")
    file.write_text("path,group\n" + "".join(f"{r},{'' if k == 2 else 0}\n" for k, r in enumerate(rows)))
    with pytest.raises(ShiftkitError) as err:
        _build(root, groups=str(file))
    _one_line(err, "column 'group'", "1 empty cell(s), the first on line 4")
    file.write_text("path,split\n" + "".join(f"{r},holdout\n" for r in rows))
    with pytest.raises(ShiftkitError) as err:
        _build(root, groups=str(file))
    _one_line(err, "column 'split'", "holds holdout", "train/val/test or 0/1/2")
    with pytest.raises(ShiftkitError) as err:
        _build(root, groups=str(tmp_path / "nowhere.csv"))
    _one_line(err, "no groups file", "nowhere.csv")
    folders = tmp_path / "folders"
    _images(folders / "train", per=2)
    _images(folders / "test", per=2, start=50)
    split = _csv(folders, "path,split", lambda rel, c, i: f"{rel},train")
    with pytest.raises(ShiftkitError) as err:
        _build(folders, groups=str(split))
    _one_line(err, "has a split column", "train/ folder", "one way")


# ------------------------------------------------------------------------------------------------ cache


def test_a_second_build_reads_the_cache_and_a_changed_file_decodes_again(tmp_path, monkeypatch):
    root = _images(tmp_path / "root")
    first = _build(root)
    assert len(list((tmp_path / "cache" / "images").glob("folder-*.npy"))) == 1  # one array, all splits

    def refuse(*args, **kwargs):
        raise AssertionError("decoded again instead of reading the cache")

    with monkeypatch.context() as m:
        m.setattr(Image, "open", refuse)
        second = _build(root)
        reseeded = _build(root, split_seed=5)  # another split of the same images: the same cache file
    assert torch.equal(first.train.x, second.train.x) and torch.equal(first.test.x, second.test.x)
    assert len(reseeded.train) == len(first.train)

    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    target = root / "cat" / "img_010.png"
    Image.new("RGB", (12, 12), (255, 255, 255)).save(target)
    os.utime(target, ns=(10**18, 10**18))  # a changed file also has a new mtime (and here a new size)
    third = _build(root)
    assert len(opened) == 24  # decoded again, every image
    whites = sum(int((s.x[:, 0] == 255).all(dim=(1, 2)).sum()) for s in (third.train, third.val, third.test))
    assert whites == 1
    opened.clear()
    _build(root, size=6)  # another size is another cache file
    assert len(opened) == 24 and len(list((tmp_path / "cache" / "images").glob("folder-*.npy"))) == 3


# ----------------------------------------------------------------------------------------------- errors


def test_bad_roots_and_options_give_one_line(tmp_path):
    with pytest.raises(ShiftkitError) as err:
        data.build("image_folder")
    _one_line(err, "set data.root=")
    cases = [
        (lambda r: None, {}, "does not exist"),
        (lambda r: r.mkdir(), {}, "is empty"),
        (lambda r: (r.mkdir(), (r / "a.png").write_bytes(b"")), {}, "has no class folder (1 file(s)"),
        (lambda r: _images(r, classes=("only",)), {}, "a single class folder (only)"),
        (lambda r: (_images(r), (r / "empty").mkdir(), (r / "empty" / "x.txt").write_text("")), {},
         "class folder(s) empty of"),
        (lambda r: _images(r), {"channels": 2}, "channels must be 1 (grayscale) or 3"),
        (lambda r: _images(r), {"size": 0}, "size must be >= 1"),
        (lambda r: _images(r), {"normalize": "z"}, "normalize must be one of train, imagenet, none"),
        (lambda r: _images(r), {"val_fraction": 0.6, "test_fraction": 0.5}, "sum < 1"),
        (lambda r: _images(r), {"attribute": "place"}, "set data.groups=FILE.csv"),
        (lambda r: _images(r, per=2), {}, "leaves no validation image; add images or raise data.val_fraction"),
    ]
    for k, (make, options, fragment) in enumerate(cases):
        root = tmp_path / f"case{k}"
        make(root)
        with pytest.raises(ShiftkitError) as err:
            _build(root, **options)
        _one_line(err, fragment)


def _noise_png():
    import io

    pixels = np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()  # incompressible: cutting it cuts the pixel data


def _train(root, out, *extra):
    return ["train", "data=image_folder", f"data.root={root}", "data.size=12", "model=cnn", "model.width=4",
            "train.epochs=1", "train.batch_size=8", "device=cpu", f"out={out}", *extra]


@pytest.mark.parametrize(
    "name, make, fragment",
    [
        ("corrupt", lambda r: (_images(r), (r / "cat" / "img_009.png").write_bytes(b"\x89PNG broken")),
         "cannot decode image {root}/cat/img_009.png"),
        ("truncated", lambda r: (_images(r), (r / "dog" / "cut.png").write_bytes(_noise_png()[:300])),
         "cannot decode image {root}/dog/cut.png"),
        ("missing-root", lambda r: None, "the root {root} does not exist"),
        ("empty-root", lambda r: r.mkdir(), "{root} is empty"),
        ("no-class-folder", lambda r: (r.mkdir(), (r / "x.jpg").write_bytes(b"")), "{root} has no class folder"),
        ("empty-class", lambda r: (_images(r), (r / "fish").mkdir()), "class folder(s) fish of {root} hold no image"),
    ],
)
def test_the_command_line_prints_one_line_and_exits_2(name, make, fragment, tmp_path, capsys):
    root, out = tmp_path / "root", tmp_path / "out"
    make(root)
    code = main(_train(root, out))
    stdout, stderr = capsys.readouterr()
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith("shiftkit: error: image_folder: "), stderr
    assert fragment.format(root=root) in lines[0], lines[0]
    assert stdout == "" and not out.exists()


def test_the_command_line_trains_on_a_folder_end_to_end(tmp_path):
    root, out = _images(tmp_path / "root"), tmp_path / "out"
    groups = _csv(root, "path,place", lambda rel, c, i: f"{rel},{i % 2}")
    assert main(_train(root, out, f"data.groups={groups}", "weighting=group_dro")) == 0
    (record,) = [json.loads(p.read_text()) for p in out.rglob("run.json")]
    assert record["status"] == "finished" and record["data"]["info"]["classes"] == ["bird", "cat", "dog"]
    assert record["data"]["statistics"]["input_shape"] == [3, 12, 12]
    assert record["data"]["statistics"]["num_groups"] == 6
    assert record["final"]["test"]["worst_group_acc"] is not None
