"""IDX reading, Fashion-MNIST protocols (docs/METHODS.md#data-fmnist_binary, docs/METHODS.md#data-fmnist_spurious,
docs/METHODS.md#data-fmnist_lt), [Z]'s images and digits_lt.

The protocol tests run on the real Fashion-MNIST files (Debian's dataset-fashion-mnist, which ``make
data`` and CI install); elsewhere they are skipped unless SHIFTKIT_REQUIRE_DATA is set, as it is in CI,
where a missing dataset fails.
"""

import gzip
import os

import numpy as np
import pytest
import torch

from shiftkit import data
from shiftkit.data.fmnist import render_attribute
from shiftkit.data.idx import read_idx
from shiftkit.errors import ShiftkitError

FMNIST = "/usr/share/datasets/fashion-mnist"
needs_fmnist = pytest.mark.skipif(
    not os.path.isdir(FMNIST) and not os.environ.get("SHIFTKIT_REQUIRE_DATA"),
    reason="Fashion-MNIST is not installed (make data)",
)


def _write_idx(path, array, gz):
    codes = {np.uint8: 0x08, np.int32: 0x0C}
    header = bytes([0, 0, codes[array.dtype.type], array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    payload = array.astype(array.dtype.newbyteorder(">")).tobytes()
    opener = gzip.open if gz else open
    with opener(str(path) + (".gz" if gz else ""), "wb") as fh:
        fh.write(header + payload)


def _fixture(folder, per_class=30, gz=True):
    """A tiny IDX dataset: image i of class c has every pixel equal to c * 10 + i % 10."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", per_class), ("t10k", per_class // 3)):
        labels = np.repeat(np.arange(10, dtype=np.uint8), n)
        images = (labels[:, None, None] * 10 + (np.arange(len(labels)) % 10)[:, None, None]).astype(np.uint8)
        images = np.broadcast_to(images, (len(labels), 28, 28)).copy()
        _write_idx(folder / f"{split}-images-idx3-ubyte", images, gz)
        _write_idx(folder / f"{split}-labels-idx1-ubyte", labels, gz)
    return folder


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, gz):
    array = np.arange(24, dtype=np.int32).reshape(2, 3, 4) - 5
    _write_idx(tmp_path / "a-idx3-int", array, gz)
    assert np.array_equal(read_idx(tmp_path / "a-idx3-int"), array)


def test_idx_errors(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ShiftkitError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(bytes([0, 0, 8, 1]) + (5).to_bytes(4, "big") + b"\x00")
    with pytest.raises(ShiftkitError, match="truncated"):
        read_idx(tmp_path / "short")


def test_protocols_read_any_idx_folder_and_shiftkit_data(tmp_path, monkeypatch):
    root = _fixture(tmp_path / "mine", gz=False)
    splits = data.build("fmnist_binary", root=str(root), n_majority=20, imbalance=4)
    assert splits.train.x.dtype == torch.uint8 and splits.input_shape == (1, 28, 28)
    assert splits.test.class_counts == [10, 10]
    # pixel values identify the class: label 0 is class 0 (T-shirt/top), label 1 class 6 (shirt)
    assert set((splits.test.x[:, 0, 0, 0] // 10).tolist()) == {0, 6}
    monkeypatch.setenv("SHIFTKIT_DATA", str(tmp_path))
    _fixture(tmp_path / "fashion-mnist")
    assert len(data.build("fmnist_lt", rho=2, n_max=20, val_per_class=5).train) > 0


def test_missing_root_names_the_files_and_the_remedy(tmp_path):
    with pytest.raises(ShiftkitError) as err:
        data.build("fmnist_binary", root=str(tmp_path))
    message = str(err.value)
    assert "\n" not in message and "train-images-idx3-ubyte" in message and "dataset-fashion-mnist" in message


@needs_fmnist
def test_fmnist_binary_is_the_w_protocol():  # docs/METHODS.md#data-fmnist_binary
    s = data.build("fmnist_binary")
    assert s.counts()["train"]["n"] == 4400 and s.counts()["val"]["n"] == 1100  # int(0.8 * 5500)
    assert [a + b for a, b in zip(s.train.class_counts, s.val.class_counts)] == [5000, 500]
    assert s.test.class_counts == [1000, 1000]
    assert s.info["names"] == ["T-shirt/top", "Shirt"]
    again = data.build("fmnist_binary")
    assert torch.equal(s.train.x, again.train.x) and torch.equal(s.val.y, again.val.y)


@needs_fmnist
def test_fmnist_lt_profiles():  # docs/METHODS.md#data-fmnist_lt
    s = data.build("fmnist_lt")
    assert s.train.class_counts == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert s.val.class_counts == [100] * 10 and s.test.class_counts == [1000] * 10
    ab = data.build("fmnist_lt", split="autobalance")
    assert ab.train.class_counts == [4000, 2398, 1438, 862, 517, 310, 186, 112, 67, 41]
    assert ab.val.class_counts == [1000, 600, 360, 216, 130, 78, 47, 28, 17, 11]
    train = {tuple(x.flatten().tolist()) for x in ab.train.x[:500]}
    assert not train & {tuple(x.flatten().tolist()) for x in ab.val.x[:500]}  # disjoint draws


@needs_fmnist
def test_fmnist_spurious_groups():  # docs/METHODS.md#data-fmnist_spurious
    s = data.build("fmnist_spurious")
    assert s.train.group_counts == [3500, 182, 58, 1055]
    assert s.val.group_counts == [250] * 4 and s.test.group_counts == [500] * 4
    assert torch.equal(s.train.y, s.train.g // 2)
    agree = (s.train.g % 2 == s.train.y).float().mean().item()
    assert agree == pytest.approx((3500 + 1055) / 4795)


def test_attribute_textures():
    img = np.zeros((2, 1, 8, 8), dtype=np.uint8)
    out = render_attribute(img, np.array([0, 1]), 1.0)
    assert out[0, 0, 0].tolist() == [255, 255, 0, 0] * 2  # vertical stripes
    assert out[1, 0, :, 0].tolist() == [255, 255, 0, 0] * 2  # horizontal stripes
    bright = np.full((1, 1, 8, 8), 200, dtype=np.uint8)
    assert render_attribute(bright, np.array([0]), 0.5).min() == 200  # garments stay on top


def test_mnist_zhai_six_images():  # docs/METHODS.md#data-mnist_zhai
    s = data.build("mnist_zhai")
    assert s.train.class_counts == [5, 1] and s.input_shape == (784,)
    assert torch.allclose(s.train.x.norm(dim=1), torch.ones(6))
    pixel = data.build("mnist_zhai", normalize="pixel")
    assert float(pixel.train.x.max()) <= 1.0 and torch.equal(pixel.train.y, s.train.y)


def test_digits_lt():  # docs/METHODS.md#data-digits_lt
    s = data.build("digits_lt")
    counts = [a + b for a, b in zip(s.train.class_counts, s.val.class_counts)]
    assert counts[0] / counts[-1] == pytest.approx(10, rel=0.05)
    assert counts == sorted(counts, reverse=True) and min(s.val.class_counts) >= 1
    assert s.test.class_counts == [30] * 10


@needs_fmnist
@pytest.mark.parametrize("name", ["fmnist_binary", "fmnist_spurious"])
def test_training_runs_end_to_end_on_fashion_mnist(name, tmp_path):
    from shiftkit.config import compose
    from shiftkit.runner import run

    record = run(compose([f"data={name}", "model.width=16", "train.epochs=1", "device=cpu", f"out={tmp_path}"]))
    assert record["data"]["pipeline"]["mean"] == [0.2860]
    groups = 4 if name == "fmnist_spurious" else 2
    assert len(record["selected"]["test"]["per_group_acc"]) == groups
    assert (record["selected"]["test"]["deo"] is not None) == (name == "fmnist_spurious")
