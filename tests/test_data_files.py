"""File-backed datasets on small fixtures in their exact on-disk formats: CelebA (CSV and TXT), Waterbirds
(metadata.csv + PNGs), tabular (CSV, Parquet); decoding, caching and one-line errors (docs/METHODS.md#data-celeba, docs/METHODS.md#data-waterbirds)."""

import numpy as np
import pytest
import torch
from PIL import Image

from shiftkit import data
from shiftkit.data.images import decode_images
from shiftkit.errors import ShiftkitError

ATTRS = ["5_o_Clock_Shadow", "Blond_Hair", "Male", "Young"]
# CelebA fixture: (partition, blond, male) per image; 4 train images per group, 1 val, 2 test.
CELEBA = [(0, k // 2, k % 2) for k in range(4) for _ in range(4)] + [(1, k // 2, k % 2) for k in range(4)]
CELEBA += [(2, k // 2, k % 2) for k in range(4) for _ in range(2)]


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("SHIFTKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SHIFTKIT_DATA", raising=False)


def _one_line(exc_info, *parts):
    message = str(exc_info.value)
    assert "\n" not in message, message
    for part in parts:
        assert part in message, message


def _color(i, g):  # red encodes the group, green the image, so pixels trace labels back to files
    return (40 * g + 20, 8 * i, 100)


def _celeba(root, fmt):
    images = root / "img_align_celeba"
    images.mkdir(parents=True)
    names = [f"{i + 1:06d}.jpg" for i in range(len(CELEBA))]
    for i, (name, (_, y, a)) in enumerate(zip(names, CELEBA)):
        Image.new("RGB", (20, 24), _color(i, 2 * y + a)).save(images / name, quality=95)
    rows = [[(-1) ** (i % 2), 1 if y else -1, 1 if a else -1, 1] for i, (_, y, a) in enumerate(CELEBA)]
    if fmt == "csv":
        lines = ["image_id," + ",".join(ATTRS)] + [n + "," + ",".join(map(str, r)) for n, r in zip(names, rows)]
        (root / "list_attr_celeba.csv").write_text("\n".join(lines) + "\n")
        lines = ["image_id,partition"] + [f"{n},{p}" for n, (p, _, _) in zip(names, CELEBA)]
        (root / "list_eval_partition.csv").write_text("\n".join(lines) + "\n")
    else:  # the original release: count line, names line with a trailing space, values padded to 2 chars
        lines = [str(len(names)), " ".join(ATTRS) + " "]
        lines += [n + " " + " ".join(f"{v:2d}" for v in r) for n, r in zip(names, rows)]
        (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
        lines = [f"{n} {p}" for n, (p, _, _) in zip(names, CELEBA)]
        (root / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return root


def _build_celeba(root, **kw):
    options = dict(train_fraction=0.5, test_per_group=1, image_size=10, root=str(root))
    return data.build("celeba", **{**options, **kw})


@pytest.mark.parametrize("fmt", ["csv", "txt"])
def test_celeba_follows_the_subsampled_protocol(tmp_path, fmt):  # docs/METHODS.md#data-celeba, scaled down
    splits = _build_celeba(_celeba(tmp_path / "celeba", fmt))
    part = np.array([p for p, _, _ in CELEBA])
    groups = np.array([2 * y + a for _, y, a in CELEBA])
    expected = np.sort(np.random.default_rng(0).permutation(np.flatnonzero(part == 0))[: round(16 * 0.5)])
    assert len(splits.train) == 8 and torch.equal(splits.train.g, torch.from_numpy(groups[expected]))
    assert splits.train.group_counts == np.bincount(groups[expected], minlength=4).tolist()
    assert splits.val.group_counts == [1, 1, 1, 1] and splits.test.group_counts == [1, 1, 1, 1]
    for split in (splits.train, splits.val, splits.test):
        assert torch.equal(split.g, 2 * split.y + split.g % 2)  # g = 2·y + Male
        assert split.x.dtype == torch.uint8 and split.x.shape[1:] == (3, 10, 10)
        red = split.x[:, 0].float().mean(dim=(1, 2))
        assert torch.allclose(red, 40 * split.g.float() + 20, atol=3)  # JPEG: nearly exact colors
    assert splits.pipeline.mean == [0.485, 0.456, 0.406] and not splits.pipeline.augments
    assert splits.info["groups"][3] == "Blond_Hair=1, Male=1" and splits.info["partition_sizes"] == [16, 4, 8]


def test_celeba_formats_agree_and_full_partitions(tmp_path):
    a = _build_celeba(_celeba(tmp_path / "a", "csv"), train_fraction=1.0, test_per_group=0)
    b = _build_celeba(_celeba(tmp_path / "b", "txt"), train_fraction=1.0, test_per_group=0)
    assert (len(a.train), len(a.val), len(a.test)) == (16, 4, 8)
    for s, t in ((a.train, b.train), (a.val, b.val), (a.test, b.test)):
        assert torch.equal(s.y, t.y) and torch.equal(s.g, t.g) and torch.equal(s.x, t.x)
    other = _build_celeba(tmp_path / "a", target="Male", attribute="Blond_Hair")
    assert torch.equal(other.val.g, torch.tensor([0, 2, 1, 3]))  # roles swapped: g = 2·Male + Blond


def test_celeba_cache_is_reused_and_invalidated(tmp_path, monkeypatch):
    root = _celeba(tmp_path / "celeba", "csv")
    first = _build_celeba(root)
    assert len(list((tmp_path / "cache" / "images").glob("*.npy"))) == 3  # one file per split

    def refuse(*args, **kwargs):
        raise AssertionError("decoded again instead of reading the cache")

    with monkeypatch.context() as m:
        m.setattr(Image, "open", refuse)
        second = _build_celeba(root)
    assert torch.equal(first.val.x, second.val.x) and torch.equal(first.train.x, second.train.x)
    Image.new("RGB", (20, 24), (255, 255, 255)).save(root / "img_align_celeba" / "000017.jpg")  # a val image
    third = _build_celeba(root)
    assert int(third.val.x[0].float().mean()) >= 250 and torch.equal(first.test.x, third.test.x)


def test_celeba_bad_inputs_give_one_line(tmp_path):
    with pytest.raises(ShiftkitError) as err:
        _build_celeba(tmp_path / "nowhere")
    _one_line(err, "celeba: no data found", "list_attr_celeba.csv", "img_align_celeba")
    root = _celeba(tmp_path / "celeba", "csv")
    with pytest.raises(ShiftkitError) as err:
        _build_celeba(root, target="Blonde_Hair")
    _one_line(err, "unknown target attribute 'Blonde_Hair'", "available: 5_o_Clock_Shadow, Blond_Hair, Male, Young")
    with pytest.raises(ShiftkitError) as err:
        _build_celeba(root, test_per_group=3)
    _one_line(err, "test group 0 has 2 images")
    (root / "img_align_celeba" / "000018.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ShiftkitError) as err:
        _build_celeba(root)
    _one_line(err, "cannot decode image", "000018.jpg")
    (root / "img_align_celeba" / "000018.jpg").unlink()
    with pytest.raises(ShiftkitError) as err:
        _build_celeba(root)
    _one_line(err, "missing image file", "000018.jpg")
    (root / "list_eval_partition.csv").unlink()
    with pytest.raises(ShiftkitError) as err:
        _build_celeba(root)
    _one_line(err, "no list_eval_partition.csv or list_eval_partition.txt")


def test_decoding_crops_like_torchvision(tmp_path):
    rows = np.repeat(np.arange(24, dtype=np.uint8)[:, None] * 10, 20, axis=1)  # row r has value 10 r
    Image.fromarray(np.stack([rows] * 3, axis=2)).save(tmp_path / "rows.png")  # 20 wide, 24 high
    x = decode_images([tmp_path / "rows.png"], (20, 20), square=True)  # CenterCrop(20): rows 2..21
    assert x.shape == (1, 3, 20, 20) and torch.equal(x[0, 1, :, 7], torch.arange(2, 22, dtype=torch.uint8) * 10)
    y = decode_images([tmp_path / "rows.png"], (24, 20), crop=(6, 4))  # same size, then CenterCrop((6, 4))
    assert y.shape == (1, 3, 6, 4) and torch.equal(y[0, 0, :, 0], torch.arange(9, 15, dtype=torch.uint8) * 10)
    half = decode_images([tmp_path / "rows.png"], (12, 10), cache=False)  # bilinear, antialiased as in Pillow
    assert half.shape == (1, 3, 12, 10) and 0 < int(half[0, 0, 0, 0]) < int(half[0, 0, -1, 0])


# Waterbirds fixture: (split, y, place) per image; train groups [3, 1, 1, 2], one image per group in val and test.
WATERBIRDS = [(0, 0, 0)] * 3 + [(0, 0, 1), (0, 1, 0)] + [(0, 1, 1)] * 2
WATERBIRDS += [(s, y, p) for s in (1, 2) for y in (0, 1) for p in (0, 1)]


def _waterbirds(root, columns=("img_id", "img_filename", "y", "split", "place", "place_filename")):
    lines = [",".join(columns)]
    for i, (s, y, p) in enumerate(WATERBIRDS):
        name = f"{1 + y:03d}.{'Albatross' if y else 'Sparrow'}/bird_{i}.png"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (30, 20), _color(i, 2 * y + p)).save(root / name)
        row = {"img_id": i + 1, "img_filename": name, "y": y, "split": s, "place": p, "place_filename": "/x/y.jpg"}
        lines.append(",".join(str(row[c]) for c in columns))
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    return root


def test_waterbirds_reads_the_metadata_and_images(tmp_path):  # docs/METHODS.md#data-waterbirds
    splits = data.build("waterbirds", image_size=8, root=str(_waterbirds(tmp_path / "wb")))
    assert splits.train.group_counts == [3, 1, 1, 2] and splits.train.class_counts == [4, 3]
    assert splits.val.group_counts == [1, 1, 1, 1] and splits.test.group_counts == [1, 1, 1, 1]
    assert splits.input_shape == (3, 8, 8) and splits.train.x.dtype == torch.uint8
    for split in (splits.train, splits.val, splits.test):
        assert torch.equal(split.g // 2, split.y)  # g = 2·y + place
        assert (split.x[:, 0] == (40 * split.g + 20)[:, None, None].to(torch.uint8)).all()  # PNG: exact
        assert (split.x[:, 2] == 100).all()
    assert splits.info["groups"][2] == "waterbird, land"


def test_waterbirds_bad_inputs_give_one_line(tmp_path):
    with pytest.raises(ShiftkitError) as err:
        data.build("waterbirds", root=str(tmp_path / "nowhere"))
    _one_line(err, "waterbirds: no data found", "metadata.csv")
    root = _waterbirds(tmp_path / "wb", columns=("img_id", "img_filename", "y", "split"))
    with pytest.raises(ShiftkitError) as err:
        data.build("waterbirds", root=str(root))
    _one_line(err, "no column 'place'", "columns: img_id, img_filename, y, split")
    root = _waterbirds(tmp_path / "wb2")
    next(root.glob("002.*/bird_5.png")).write_bytes(b"\x89PNG broken")
    with pytest.raises(ShiftkitError) as err:
        data.build("waterbirds", image_size=8, root=str(root))
    _one_line(err, "cannot decode image", "bird_5.png")


def _table(n=40):
    import pandas as pd

    rng = np.random.default_rng(3)
    return pd.DataFrame(
        {
            "id": np.arange(n),
            "age": rng.normal(40, 10, n).round(1),
            "score": rng.integers(0, 5, n),
            "color": rng.choice(["red", "green", "blue"], n),
            "label": np.where(np.arange(n) % 4 == 0, "dog", "cat"),
            "grp": np.arange(n) % 2,
            "part": ["train"] * 24 + ["val"] * 8 + ["test"] * 8,
        }
    )


def test_tabular_standardizes_and_one_hot_encodes_with_training_statistics(tmp_path):
    table = _table()
    table.loc[30, "color"] = "purple"  # a validation-only category
    table.to_csv(tmp_path / "t.csv", index=False)
    splits = data.build("tabular", path=str(tmp_path / "t.csv"), group="grp", split="part", ignore=["id"])
    assert [len(s) for s in (splits.train, splits.val, splits.test)] == [24, 8, 8]
    info = splits.info
    assert info["classes"] == ["cat", "dog"]
    assert info["features"] == ["age", "score", "color=blue", "color=green", "color=red"]
    train = table.iloc[:24]
    assert info["mean"]["age"] == pytest.approx(train["age"].mean())
    assert info["std"]["age"] == pytest.approx(train["age"].std(ddof=0))
    assert torch.allclose(splits.train.x[:, :2].mean(0), torch.zeros(2), atol=1e-5)
    assert torch.allclose(splits.train.x[:, :2].std(0, unbiased=False), torch.ones(2), atol=1e-5)
    expected = (table["age"].iloc[24:32].to_numpy() - train["age"].mean()) / train["age"].std(ddof=0)
    assert np.allclose(splits.val.x[:, 0].numpy(), expected, atol=1e-5)  # validation uses training stats
    onehot = splits.val.x[:, 2:]
    assert onehot[30 - 24].sum() == 0 and (onehot.sum(1)[torch.arange(8) != 6] == 1).all()
    assert torch.equal(splits.train.y, torch.tensor((train["label"] == "dog").to_numpy()).long())
    assert torch.equal(splits.train.g, torch.tensor(train["grp"].to_numpy()))
    assert splits.num_groups == 2 and splits.input_shape == (5,)


def test_tabular_stratified_split_attribute_and_default_groups(tmp_path):
    _table().drop(columns="part").to_csv(tmp_path / "t.csv", index=False)
    splits = data.build("tabular", path=str(tmp_path / "t.csv"), attribute="grp", ignore=["id"], split_seed=5)
    # Cells (label, grp): 10 dogs all with grp 0, cats 10 grp 0 and 20 grp 1; 20% val, 20% test per cell.
    assert splits.train.group_counts == [6, 12, 6, 0] and splits.val.group_counts == [2, 4, 2, 0]
    assert splits.test.group_counts == [2, 4, 2, 0] and splits.num_groups == 4
    for split in (splits.train, splits.val, splits.test):
        assert torch.equal(split.g // 2, split.y)  # g = 2·y + a
    again = data.build("tabular", path=str(tmp_path / "t.csv"), attribute="grp", ignore=["id"], split_seed=5)
    assert torch.equal(again.test.x, splits.test.x)
    plain = data.build("tabular", path=str(tmp_path / "t.csv"), features=["age", "color"])
    assert torch.equal(plain.train.g, plain.train.y) and plain.input_shape == (4,)


def test_tabular_parquet_matches_csv(tmp_path):
    table = _table()
    table.to_csv(tmp_path / "t.csv", index=False)
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        (tmp_path / "t.parquet").write_bytes(b"PAR1")
        with pytest.raises(ShiftkitError) as err:
            data.build("tabular", path=str(tmp_path / "t.parquet"))
        _one_line(err, "pip install pyarrow")
        pytest.skip("pyarrow is not installed: only the install hint is checked")
    table.to_parquet(tmp_path / "t.parquet")
    a = data.build("tabular", path=str(tmp_path / "t.csv"), group="grp", split="part")
    b = data.build("tabular", path=str(tmp_path / "t.parquet"), group="grp", split="part")
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.g, b.test.g)


def test_tabular_bad_inputs_give_one_line(tmp_path):
    table = _table()
    table.loc[5, "age"] = np.nan
    table.to_csv(tmp_path / "t.csv", index=False)
    path = str(tmp_path / "t.csv")
    with pytest.raises(ShiftkitError) as err:
        data.build("tabular", path=path, split="part")
    _one_line(err, "column 'age'", "1 missing value(s)", "nan=drop")
    dropped = data.build("tabular", path=path, split="part", nan="drop")
    assert len(dropped.train) == 23 and dropped.info["dropped"] == 1
    with pytest.raises(ShiftkitError) as err:
        data.build("tabular", path=path, label="target")
    _one_line(err, "no column 'target'", "columns: id, age, score, color, label, grp, part")
    with pytest.raises(ShiftkitError) as err:
        data.build("tabular", path=str(tmp_path / "absent.csv"))
    _one_line(err, "tabular: no file")
    with pytest.raises(ShiftkitError) as err:
        data.build("tabular")
    _one_line(err, "set data.path=")
    table.assign(part="later").to_csv(tmp_path / "u.csv", index=False)
    with pytest.raises(ShiftkitError) as err:
        data.build("tabular", path=str(tmp_path / "u.csv"), split="part", nan="drop")
    _one_line(err, "holds later", "train/val/test")
