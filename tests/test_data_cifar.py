"""CIFAR-10/100 loaders and protocols on tiny fixture files in the real "python version" format.

The fixtures are written opcode by opcode as Python 2's cPickle wrote the real files (protocol 2, keys
and pixel buffers as byte strings, arrays through ``numpy.core.multiarray._reconstruct``). Pixels encode
identity: in image ``i`` the red plane is ``i % 256``, the green plane ``i // 256`` and the blue plane
``(7 h + w) % 256`` at row ``h``, column ``w``, so decoding order and every selection can be checked.
"""

import gzip
import pickle
import struct
from collections import defaultdict

import numpy as np
import pytest
import torch

from shiftkit import data
from shiftkit.data import cifar
from shiftkit.data.shifts import long_tail_counts
from shiftkit.errors import ShiftkitError

TEST_OFFSET = 20000  # identities of test images start here


# --- a Python 2 style pickle writer (protocol 2) ---------------------------------------------------------
def _str(b: bytes) -> bytes:  # a Python 2 str
    return (b"U" + bytes([len(b)]) if len(b) < 256 else b"T" + struct.pack("<i", len(b))) + b


def _int(v: int) -> bytes:
    return b"K" + bytes([v]) if 0 <= v < 256 else b"J" + struct.pack("<i", v)


def _obj(v) -> bytes:
    if isinstance(v, bytes):
        return _str(v)
    if isinstance(v, (int, np.integer)):
        return _int(int(v))
    if isinstance(v, list):
        return b"](" + b"".join(_obj(e) for e in v) + b"e"
    if isinstance(v, np.ndarray):
        assert v.dtype == np.uint8
        dtype = b"cnumpy\ndtype\n" + _str(b"u1") + b"\x89\x88\x87R(" + _int(3) + _str(b"|") + b"NNN"
        dtype += _int(-1) + _int(-1) + _int(0) + b"tb"
        shape = b"(" + b"".join(_int(n) for n in v.shape) + b"t"
        head = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + _int(0) + b"\x85" + _str(b"b") + b"\x87R"
        return head + b"(" + _int(1) + shape + dtype + b"\x89" + _str(v.tobytes()) + b"tb"
    raise TypeError(type(v))


def py2_pickle(d: dict) -> bytes:
    return b"\x80\x02}(" + b"".join(_obj(k) + _obj(v) for k, v in d.items()) + b"u."


# --- fixtures ---------------------------------------------------------------------------------------------
def images(ids: np.ndarray) -> np.ndarray:
    """Rows of a batch's ``data``: ``[N, 3072]`` uint8 encoding each image's identity."""
    x = np.empty((len(ids), 3, 32, 32), dtype=np.uint8)
    x[:, 0] = (ids % 256)[:, None, None]
    x[:, 1] = (ids // 256)[:, None, None]
    x[:, 2] = (7 * np.arange(32)[:, None] + np.arange(32)[None, :]) % 256
    return x.reshape(len(ids), 3072)


def identity(x: torch.Tensor) -> np.ndarray:
    return (x[:, 0, 0, 0].long() + 256 * x[:, 1, 0, 0].long()).numpy()


def write_cifar10(folder, per_class=50, test_per_class=20, seed=1):
    """A CIFAR-10 folder: ``10 * per_class`` shuffled training images over data_batch_1..5."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.repeat(np.arange(10), per_class))
    yt = rng.permutation(np.repeat(np.arange(10), test_per_class))
    for b, part in enumerate(np.array_split(np.arange(len(y)), 5)):
        batch = {b"batch_label": b"training batch %d of 5" % (b + 1), b"labels": y[part].tolist(),
                 b"data": images(part), b"filenames": [b"img_%d.png" % i for i in part]}  # fmt: skip
        (folder / f"data_batch_{b + 1}").write_bytes(py2_pickle(batch))
    ids = TEST_OFFSET + np.arange(len(yt))
    test = {b"batch_label": b"testing batch 1 of 1", b"labels": yt.tolist(), b"data": images(ids)}
    (folder / "test_batch").write_bytes(py2_pickle(test))
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    meta = {b"num_cases_per_batch": 10000, b"label_names": names, b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(py2_pickle(meta))
    return y, yt


def write_cifar100(folder, per_class=20, test_per_class=4, seed=2):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.repeat(np.arange(100), per_class))
    yt = rng.permutation(np.repeat(np.arange(100), test_per_class))
    for name, labels, ids in (("train", y, np.arange(len(y))), ("test", yt, TEST_OFFSET + np.arange(len(yt)))):
        batch = {b"filenames": [b"f"] * len(ids), b"batch_label": b"x", b"fine_labels": labels.tolist(),
                 b"coarse_labels": (labels // 5).tolist(), b"data": images(ids)}  # fmt: skip
        (folder / name).write_bytes(py2_pickle(batch))
    meta = {b"fine_label_names": [b"c%d" % i for i in range(100)], b"coarse_label_names": [b"s"] * 20}
    (folder / "meta").write_bytes(py2_pickle(meta))
    return y, yt


@pytest.fixture
def c10(tmp_path):
    y, yt = write_cifar10(tmp_path / "cifar-10-batches-py")
    return tmp_path, y, yt


@pytest.fixture
def c100(tmp_path):
    y, yt = write_cifar100(tmp_path / "cifar-100-python")
    return tmp_path, y, yt


def w_reference(y, classes=(3, 5), imbalance=10, seed=0):
    """[W]'s code, transcribed: UndersampledByGroupDataset, class subset, split_dataset (docs/METHODS.md#data-cifar10_binary)."""
    img_max = len(y) / 10
    sizes = {c: int(img_max) if c < 5 else int(img_max * (1 / imbalance)) for c in range(10)}
    group_idxs = defaultdict(list)
    for i, g in enumerate(y):
        group_idxs[int(g)].append(i)
    generator = torch.Generator()
    generator.manual_seed(seed)
    indices = []
    for g, idxs in group_idxs.items():
        idxs = torch.tensor(idxs)
        indices.append(idxs[torch.randperm(len(idxs), generator=generator)[: sizes[g]]])
    chosen = [int(i) for i in torch.cat(indices) if int(y[i]) in classes]
    perm = np.random.default_rng(seed).permutation(len(chosen))
    n_train = int(0.8 * len(chosen))
    return [chosen[p] for p in perm[:n_train]], [chosen[p] for p in perm[n_train:]]


def one_line_error(fn, *args, **kwargs) -> str:
    with pytest.raises(ShiftkitError) as err:
        fn(*args, **kwargs)
    message = str(err.value)
    assert "\n" not in message
    return message


# --- the reader -------------------------------------------------------------------------------------------
def test_decoding_is_channel_row_column_in_file_order(c10):
    root, y, yt = c10
    d = cifar.load(cifar.CIFAR10, str(root))
    assert d.train_x.shape == (500, 3, 32, 32) and d.train_x.dtype == np.uint8
    assert d.test_x.shape == (200, 3, 32, 32)
    ids = np.arange(500)
    assert (d.train_x[:, 0] == (ids % 256)[:, None, None]).all()
    assert (d.train_x[:, 1] == (ids // 256)[:, None, None]).all()
    assert (d.train_x[:, 2] == (7 * np.arange(32)[:, None] + np.arange(32)) % 256).all()  # rows, then columns
    assert identity(torch.from_numpy(d.test_x)).tolist() == list(TEST_OFFSET + np.arange(200))
    assert d.train_y.tolist() == y.tolist() and d.test_y.tolist() == yt.tolist()
    assert d.class_names[3] == "cat" and d.class_names[5] == "dog"


def test_cifar100_reads_fine_labels(c100):
    root, y, yt = c100
    d = cifar.load(cifar.CIFAR100, str(root / "cifar-100-python"))
    assert d.train_x.shape == (2000, 3, 32, 32) and d.train_y.tolist() == y.tolist()
    assert d.test_y.tolist() == yt.tolist() and len(d.class_names) == 100


def test_python3_pickles_with_str_keys_load_too(c10):
    root, y, _ = c10
    folder = root / "cifar-10-batches-py"
    part = np.arange(100)
    batch = {"labels": y[part].tolist(), "data": images(part)}
    (folder / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL))
    d = cifar.load(cifar.CIFAR10, str(root))
    assert d.train_y.tolist() == y.tolist() and (d.train_x[:100, 0] == part[:, None, None]).all()


def test_root_is_the_folder_or_its_parent_or_under_shiftkit_data(c10, tmp_path, monkeypatch):
    root, y, _ = c10
    for r in (str(root), str(root / "cifar-10-batches-py")):
        assert cifar.load(cifar.CIFAR10, r).train_y.tolist() == y.tolist()
    store = tmp_path / "store"
    (store / "cifar10").mkdir(parents=True)
    (root / "cifar-10-batches-py").rename(store / "cifar10" / "cifar-10-batches-py")
    monkeypatch.setenv("SHIFTKIT_DATA", str(store))
    assert len(data.build("cifar10_binary").train) == 44
    (store / "cifar10" / "cifar-10-batches-py").rename(store / "flat")
    (store / "cifar10").rmdir()
    (store / "flat").rename(store / "cifar10")  # the files directly in $SHIFTKIT_DATA/cifar10
    assert len(data.build("cifar10_lt", rho=10).test) == 200


def test_gzipped_batches_are_read(c10):
    root, y, _ = c10
    folder = root / "cifar-10-batches-py"
    (folder / "data_batch_2.gz").write_bytes(gzip.compress((folder / "data_batch_2").read_bytes()))
    (folder / "data_batch_2").unlink()
    assert cifar.load(cifar.CIFAR10, str(root)).train_y.tolist() == y.tolist()


def test_missing_root_names_the_expected_files(tmp_path, monkeypatch):
    monkeypatch.delenv("SHIFTKIT_DATA", raising=False)
    message = one_line_error(data.build, "cifar10_lt")
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta", "cifar-10-python.tar.gz"]:
        assert name in message
    assert "SHIFTKIT_DATA" in message
    message = one_line_error(data.build, "cifar100_lt", root=str(tmp_path))
    assert str(tmp_path) in message and "train, test, meta" in message


def test_incomplete_folder_is_a_missing_root(c10):
    root, _, _ = c10
    (root / "cifar-10-batches-py" / "data_batch_4").unlink()
    assert "data_batch_4" in one_line_error(cifar.load, cifar.CIFAR10, str(root))


class Evil:
    def __reduce__(self):
        return (print, ("pickles run code",))


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("data_batch_3", b"not a pickle at all", "not a CIFAR python pickle"),
        ("data_batch_2", pickle.dumps([1, 2, 3]), "expected a pickled dict"),
        ("data_batch_5", pickle.dumps({b"data": images(np.arange(3))}), "missing key(s) labels"),
        ("test_batch", pickle.dumps({b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]}), "[N, 3072]"),
        ("test_batch", pickle.dumps({b"data": np.zeros((2, 3072), np.int64), b"labels": [0, 1]}), "uint8"),
        ("data_batch_1", pickle.dumps({b"data": images(np.arange(2)), b"labels": [0, 10]}), "found 0..10"),
        ("data_batch_1", pickle.dumps({b"data": images(np.arange(2)), b"labels": [0]}), "must be 2 integers"),
        ("data_batch_1", pickle.dumps({b"data": Evil(), b"labels": [0]}), "builtins.print"),
        ("batches.meta", py2_pickle({b"label_names": [b"cat"]}), "a list of 10 class names"),
    ],
)
def test_malformed_files_are_one_clear_error_naming_the_file(c10, name, content, expected, capsys):
    root, _, _ = c10
    (root / "cifar-10-batches-py" / name).write_bytes(content)
    message = one_line_error(data.build, "cifar10_binary", root=str(root))
    assert name in message and expected in message
    assert "pickles run code" not in capsys.readouterr().out


# --- [W]'s binary protocol ----------------------------------------------------------------------------------
@pytest.mark.parametrize("fixture_seed", [1, 2])  # dog first, cat first in the training files
def test_cifar10_binary_is_w_protocol_exactly(tmp_path, fixture_seed):
    y, yt = write_cifar10(tmp_path / "cifar-10-batches-py", seed=fixture_seed)
    s = data.build("cifar10_binary", root=str(tmp_path))
    # Step imbalance 10 on 50 per class: 50 cats, 5 dogs; int(0.8 * 55) = 44 train, 11 validation.
    assert s.info["step_counts"] == [50] * 5 + [5] * 5 and s.info["pool"] == [50, 5]
    assert len(s.train) == 44 and len(s.val) == 11
    assert sum(s.train.class_counts) + sum(s.val.class_counts) == 55
    assert [a + b for a, b in zip(s.train.class_counts, s.val.class_counts)] == [50, 5]
    train, val = w_reference(y)
    assert identity(s.train.x).tolist() == train and identity(s.val.x).tolist() == val
    for split in (s.train, s.val):  # cat -> 0, dog -> 1; groups are the classes
        original = y[identity(split.x)]
        assert (original == np.where(split.y.numpy() == 0, 3, 5)).all() and torch.equal(split.g, split.y)
    assert s.test.class_counts == [20, 20]  # balanced: every test cat and dog
    assert (yt[identity(s.test.x) - TEST_OFFSET] == np.where(s.test.y.numpy() == 0, 3, 5)).all()
    assert s.pipeline.mean == [0.4914, 0.4822, 0.4465] and s.pipeline.std == [0.247, 0.243, 0.261]
    assert not s.pipeline.augments and s.info["class_names"] == ["cat", "dog"]


def test_cifar10_binary_options(c10):
    root, y, _ = c10
    s = data.build("cifar10_binary", root=str(root), imbalance=5.0)
    assert s.info["pool"] == [50, 10] and len(s.train) == 48
    s = data.build("cifar10_binary", root=str(root), classes=[0, 1])  # both majority classes: balanced
    assert s.info["pool"] == [50, 50] and identity(s.train.x).tolist() == w_reference(y, classes=(0, 1))[0]
    for bad in ({"classes": [3, 3]}, {"classes": [3, 10]}, {"imbalance": 0.5}, {"val_fraction": 1.0}):
        one_line_error(data.build, "cifar10_binary", root=str(root), **bad)


# --- long tails ---------------------------------------------------------------------------------------------
def check_disjoint_and_labelled(s, y, yt):
    train, val = identity(s.train.x), identity(s.val.x)
    assert len(set(train) | set(val)) == len(train) + len(val)
    assert (y[train] == s.train.y.numpy()).all() and (y[val] == s.val.y.numpy()).all()
    assert (yt[identity(s.test.x) - TEST_OFFSET] == s.test.y.numpy()).all()


def test_cifar10_lt_standard_split(c10):
    root, y, yt = c10
    s = data.build("cifar10_lt", root=str(root), rho=10.0)
    assert s.info["profile"] == [50, 38, 29, 23, 17, 13, 10, 8, 6, 5]
    assert s.train.class_counts == [40, 30, 23, 18, 13, 10, 8, 6, 4, 4]  # int(0.8 n) per class
    assert s.val.class_counts == [10, 8, 6, 5, 4, 3, 2, 2, 2, 1]
    assert s.test.class_counts == [20] * 10 and s.num_groups == 10
    check_disjoint_and_labelled(s, y, yt)
    assert s.pipeline.crop_padding == 4 and s.pipeline.flip and s.pipeline.std == [0.2470, 0.2435, 0.2616]
    batch = s.pipeline(s.train.x[:8], train=True, generator=torch.Generator().manual_seed(0))
    assert batch.shape == (8, 3, 32, 32) and batch.dtype == torch.float32
    assert not data.build("cifar10_lt", root=str(root), rho=10.0, augment=False).pipeline.augments
    s = data.build("cifar10_lt", root=str(root), rho=10.0, rounding="ceil", val_fraction=0.5)
    assert s.info["profile"] == long_tail_counts(50, 10, 10.0, "ceil")
    assert [a + b for a, b in zip(s.train.class_counts, s.val.class_counts)] == s.info["profile"]


def test_cifar10_lt_autobalance_split(c10):
    root, y, yt = c10
    s = data.build("cifar10_lt", root=str(root), rho=10.0, split="autobalance")
    # ceil(40 mu^i) and ceil(10 mu^i), mu = 0.1^(1/9): AutoBalance's 4000/1000 scaled to 50 per class.
    assert s.train.class_counts == [40, 31, 24, 19, 15, 12, 9, 7, 6, 5]
    assert s.val.class_counts == [10, 8, 6, 5, 4, 3, 3, 2, 2, 2]
    assert s.info["rounding"] == "ceil" and s.info["train_counts"] == s.train.class_counts
    check_disjoint_and_labelled(s, y, yt)


def test_cifar100_lt_both_splits(c100):
    root, y, yt = c100
    s = data.build("cifar100_lt", root=str(root), rho=4.0)
    profile = long_tail_counts(20, 100, 4.0)
    train, val = cifar.holdout_counts(profile, 0.2)
    assert s.train.class_counts == train and s.val.class_counts == val and min(val) == 1
    assert s.test.class_counts == [4] * 100 and s.pipeline.mean == [0.5071, 0.4867, 0.4408]
    check_disjoint_and_labelled(s, y, yt)
    s = data.build("cifar100_lt", root=str(root), rho=4.0, split="autobalance")
    mu = 0.25 ** (1 / 99)
    val = [max(1, round(4 * mu**i)) for i in range(100)]  # 0.2 n_max; total round(20 mu^i)
    assert s.val.class_counts == val and s.train.class_counts == [round(20 * mu**i) - v for i, v in enumerate(val)]
    check_disjoint_and_labelled(s, y, yt)


def test_lt_is_deterministic_and_seeded(c10):
    root, _, _ = c10
    a, b = (data.build("cifar10_lt", root=str(root), rho=10.0) for _ in range(2))
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.val.x, b.val.x)
    c = data.build("cifar10_lt", root=str(root), rho=10.0, split_seed=1)
    assert c.train.class_counts == a.train.class_counts and not torch.equal(c.train.x, a.train.x)


def test_lt_option_errors(c10):
    root, _, _ = c10
    assert "split must be one of" in one_line_error(data.build, "cifar10_lt", root=str(root), split="nope")
    assert "rounding" in one_line_error(data.build, "cifar10_lt", root=str(root), rounding="floor")
    assert "no training example" in one_line_error(data.build, "cifar10_lt", root=str(root), rho=100.0)


def test_autobalance_counts_reference_values():
    train, val = cifar.autobalance_counts(5000, 10, 100, "ceil")
    assert val == [1000, 600, 360, 216, 130, 78, 47, 28, 17, 11] and sum(train) == 9931
    assert [sum(c) for c in cifar.autobalance_counts(500, 100, 100, "round")] == [8719, 2180]
