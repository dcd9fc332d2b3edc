"""Bad data files, in the format of ``test_bad_input.py``'s catalogue: each row is one mistake in a data
file (or a root or path pointing at one), and each must end in exactly one line
``shiftkit: error: <what to do>`` naming the file, exit status 2, no traceback, and nothing written. A
quoted piece of a file is capped (``shiftkit.data.base.quote``), so no row's line is long.

Also here, the data that is not a mistake but used to go wrong: integer group and attribute ids that are
not ``0..G-1`` (remapped in sorted order, the mapping in ``info``), and roots and paths starting with ``~``.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from test_bad_input import TRAIN, _argv, _check, _csv, _prepare, _table, _with
from test_data_files import _celeba, _waterbirds

from shiftkit import data
from shiftkit.cli import main

#: Characters of a row's one line besides the working directory's path: a quote of 10,000 characters fails.
LONGEST = 600
LONG = "x" * 10_000


# ---------------------------------------------------------------------------------------------- fixtures


def _parquet(make: Callable[[], object]) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        pytest.importorskip("pyarrow")
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = make()
        columns = [pa.array(table.iloc[:, k].tolist()) for k in range(table.shape[1])]
        pq.write_table(pa.table(columns, names=list(table.columns)), path)

    return write


def _renamed(**names) -> Callable[[], object]:
    """``_table()`` with columns renamed, duplicates allowed (pandas' own ``rename`` keeps them)."""

    def make():
        table = _table()
        table.columns = [names.get(c, c) for c in table.columns]
        return table

    return make


def _many_columns():
    import pandas as pd

    table = _table()
    zeros = pd.DataFrame(0.0, index=table.index, columns=[f"feature_{k}" for k in range(3000)])
    return pd.concat([table, zeros], axis=1)


def _idx(label_type: int = 0x08, gz: str = "", damage: Callable[[bytes], bytes] = bytes) -> Callable[[Path], None]:
    """A folder of the four Fashion-MNIST IDX files (12 training and 4 test images per class): the label
    files of element type ``label_type``; the file named ``gz`` gzipped, its bytes passed through ``damage``."""

    def write(folder: Path) -> None:
        folder.mkdir()
        for split, per_class in (("train", 12), ("t10k", 4)):
            labels = np.repeat(np.arange(10), per_class)
            dtype = {0x08: np.uint8, 0x0D: ">f4", 0x0E: ">f8"}[label_type]
            images = np.zeros((len(labels), 28, 28), dtype=np.uint8)
            for name, array, code in (("images-idx3", images, 0x08), ("labels-idx1", labels.astype(dtype), label_type)):
                header = bytes([0, 0, code, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
                file = folder / f"{split}-{name}-ubyte"
                raw = header + array.tobytes()
                if file.name == gz:
                    file, raw = file.with_name(file.name + ".gz"), damage(gzip.compress(raw))
                file.write_bytes(raw)

    return write


def _waterbirds_with(edit: Callable[[Path], None]) -> Callable[[Path], None]:
    def write(root: Path) -> None:
        _waterbirds(root)
        edit(root / "metadata.csv")

    return write


def _celeba_with(fmt: str, stem: str, edit: Callable[[Path], None]) -> Callable[[Path], None]:
    """The CelebA fixture of ``test_data_files`` (``fmt``: csv or txt) with the file ``stem`` edited."""

    def write(root: Path) -> None:
        _celeba(root, fmt)
        edit(root / f"{stem}.{fmt}")

    return write


def _replace(old: str, new: str, count: int = 1) -> Callable[[Path], None]:
    return lambda file: file.write_text(file.read_text().replace(old, new, count))


def _empty(file: Path) -> None:
    file.write_text("")


def _latin1(file: Path) -> None:
    file.write_bytes(file.read_bytes().replace(b"1", "é".encode("latin-1"), 1))


# -------------------------------------------------------------------------------------------- the catalogue

TABULAR = ["train", "data=tabular", "data.path={dir}/t.csv"]
CELEBA = ["train", "data=celeba", "data.root={dir}/celeba", "data.image_size=10", "data.test_per_group=1"]
FMNIST = ["train", "data=fmnist_lt", "data.root={dir}/fm", "data.n_max=8", "data.rho=2", "data.val_per_class=2"]

#: (id, argv, files to create in the working directory, fragment the one line must hold)
# fmt: off
CASES = [
    # 1. duplicated column names, seen in the raw header (pandas would rename the second to label.1)
    ("tabular-duplicated-label-column", TABULAR, {"t.csv": _csv(_renamed(grp="label"))},
     "tabular: {dir}/t.csv names the column(s) label more than once; give every column its own name"),
    ("tabular-duplicated-feature-columns", TABULAR, {"t.csv": _csv(_renamed(b="a", part="grp"))},
     "tabular: {dir}/t.csv names the column(s) a, grp more than once"),
    ("parquet-duplicated-label-column", ["train", "data=tabular", "data.path={dir}/t.parquet"],
     {"t.parquet": _parquet(_renamed(grp="label"))},
     "tabular: {dir}/t.parquet names the column(s) label more than once"),
    # 2. integer label ids far apart: still refused (labels are not remapped), without listing every id
    ("tabular-label-ids-far-apart", TABULAR, {"t.csv": _csv(lambda: _table(label=np.arange(40) % 2 * 100_000))},
     "holds integer ids up to 100000 but no row of class(es) 1, 2, 3, "),
    ("tabular-label-ids-huge", TABULAR, {"t.csv": _csv(lambda: _table(label=np.arange(40) % 2 * 10**15))},
     "holds integer ids up to 1000000000000000 but no row of class(es) 1, 2, 3, "),
    # 3. numbers that overflow when standardized
    ("tabular-column-overflows-standardizing", TABULAR, {"t.csv": _csv(lambda: _table(b=np.full(40, 1e308)))},
     "column 'b' of {dir}/t.csv overflows when standardized (the value 1e+308 on line 2"),
    ("tabular-test-value-overflows-float32", TABULAR + ["data.split=part"],
     {"t.csv": _csv(lambda: _table(b=[0.0] * 39 + [1e300]))},
     "column 'b' of {dir}/t.csv overflows when standardized (the value 1e+300 on line 41"),
    # 4. quotes of data are capped and stay on one line
    ("tabular-long-text-in-numeric-column", TABULAR, {"t.csv": _csv(_with("a", 3, LONG))},
     "holds numbers but 1 non-numeric value(s), the first 'xxxxxxxxxx"),
    ("tabular-long-column-name", TABULAR, {"t.csv": _csv(lambda: _with("b", 7, "inf")().rename(columns={"b": LONG}))},
     "tabular: column 'xxxxxxxxxx"),
    ("tabular-line-break-in-numeric-column", TABULAR, {"t.csv": _csv(_with("a", 3, "1\n5"))},
     "holds numbers but 1 non-numeric value(s), the first '1\\n5' on line 5"),
    ("tabular-long-split-value", TABULAR + ["data.split=part"], {"t.csv": _csv(_with("part", 0, LONG))},
     "split column 'part' of {dir}/t.csv holds xxxxxxxxxx"),
    ("tabular-long-single-class", TABULAR, {"t.csv": _csv(lambda: _table(label=LONG))},
     "holds a single class (xxxxxxxxxx"),
    ("tabular-many-columns-no-label", TABULAR + ["data.label=target"], {"t.csv": _csv(_many_columns)},
     "no column 'target' in {dir}/t.csv; columns: a, b, label, grp, part, feature_0, "),
    ("waterbirds-long-column-name", ["train", "data=waterbirds", "data.root={dir}/wb"],
     {"wb": _waterbirds_with(_replace(",place,", f",{LONG},"))}, "waterbirds: {dir}/wb/metadata.csv has no column"),
    ("waterbirds-long-image-name", ["train", "data=waterbirds", "data.root={dir}/wb", "data.image_size=8"],
     {"wb": _waterbirds_with(_replace("bird_0.png", LONG))}, "missing image file "),
    # 5. Waterbirds and CelebA metadata: empty, not UTF-8, unknown partition values
    ("waterbirds-empty-metadata", ["train", "data=waterbirds", "data.root={dir}/wb"], {"wb": _waterbirds_with(_empty)},
     "waterbirds: {dir}/wb/metadata.csv is empty"),
    ("waterbirds-metadata-not-utf8", ["train", "data=waterbirds", "data.root={dir}/wb"],
     {"wb": _waterbirds_with(_latin1)}, "waterbirds: {dir}/wb/metadata.csv is not UTF-8 text"),
    ("celeba-empty-attributes", CELEBA, {"celeba": _celeba_with("txt", "list_attr_celeba", _empty)},
     "celeba: {dir}/celeba/list_attr_celeba.txt is empty"),
    ("celeba-attributes-not-utf8", CELEBA, {"celeba": _celeba_with("csv", "list_attr_celeba", _latin1)},
     "celeba: {dir}/celeba/list_attr_celeba.csv is not UTF-8 text"),
    ("celeba-empty-partition", CELEBA, {"celeba": _celeba_with("txt", "list_eval_partition", _empty)},
     "celeba: {dir}/celeba/list_eval_partition.txt is empty"),
    ("celeba-partition-not-utf8", CELEBA, {"celeba": _celeba_with("txt", "list_eval_partition", _latin1)},
     "celeba: {dir}/celeba/list_eval_partition.txt is not UTF-8 text"),
    ("celeba-unknown-partition-value", CELEBA,
     {"celeba": _celeba_with("csv", "list_eval_partition", _replace("000005.jpg,0", "000005.jpg,3"))},
     "celeba: {dir}/celeba/list_eval_partition.csv gives image 000005.jpg the partition 3; partitions are 0 (train)"),
    ("celeba-text-partition-value", CELEBA,
     {"celeba": _celeba_with("txt", "list_eval_partition", _replace("000002.jpg 0", "000002.jpg val"))},
     "celeba: {dir}/celeba/list_eval_partition.txt gives image 000002.jpg the partition val;"),
    ("celeba-long-partition-value", CELEBA,
     {"celeba": _celeba_with("csv", "list_eval_partition", _replace("000005.jpg,0", "000005.jpg," + LONG))},
     "gives image 000005.jpg the partition xxxxxxxxxx"),
    # 6. IDX files: a cut-off gzip stream, float labels
    ("idx-truncated-gz", FMNIST, {"fm": _idx(gz="train-images-idx3-ubyte", damage=lambda raw: raw[: len(raw) // 2])},
     "{dir}/fm/train-images-idx3-ubyte.gz is truncated (the gzip stream ends early)"),
    ("idx-truncated-gz-trailer", FMNIST, {"fm": _idx(gz="t10k-labels-idx1-ubyte", damage=lambda raw: raw[:-4])},
     "{dir}/fm/t10k-labels-idx1-ubyte.gz is truncated (the gzip stream ends early)"),
    ("idx-corrupt-gz", FMNIST, {"fm": _idx(gz="train-images-idx3-ubyte", damage=lambda raw: raw[:20] + raw[20:][::-1])},
     "cannot read {dir}/fm/train-images-idx3-ubyte.gz: not a valid gzip stream"),
    ("idx-float32-labels", FMNIST, {"fm": _idx(label_type=0x0D)},
     "{dir}/fm/train-labels-idx1-ubyte holds float32 values (IDX type 0x0D); labels must be integers"),
    ("idx-float64-labels", FMNIST, {"fm": _idx(label_type=0x0E)},
     "{dir}/fm/train-labels-idx1-ubyte holds float64 values (IDX type 0x0E); labels must be integers"),
    # 7. hints name the keys users type; empty roots and paths
    ("tabular-no-path-names-the-key", ["train", "data=tabular"], {},
     "tabular: set data.path=<a .csv or .parquet file>"),
    ("tabular-empty-path", ["train", "data=tabular", "data.path="], {}, "tabular: set data.path=<a .csv or .parquet"),
    ("celeba-empty-root", ["train", "data=celeba", "data.root="], {},
     "celeba: no data found (looked in nowhere ($SHIFTKIT_DATA is not set); expected img_align_celeba)"),
    ("cifar-empty-root", ["train", "data=cifar10_lt", "data.root="], {},
     "cifar10: no data found (looked in nowhere ($SHIFTKIT_DATA is not set); expected data_batch_1"),
    ("fmnist-hint-names-data-root", ["train", "data=fmnist_lt", "data.root={dir}/nowhere"], {},
     "pass data.root=DIR (or set $SHIFTKIT_DATA)"),
    ("celeba-hint-names-data-root", ["train", "data=celeba", "data.root={dir}/nowhere"], {},
     "nothing is downloaded: pass data.root=<folder> or set $SHIFTKIT_DATA to a folder holding celeba/"),
    ("waterbirds-hint-names-data-root", ["train", "data=waterbirds", "data.root={dir}/nowhere"], {},
     "nothing is downloaded: pass data.root=<folder> or set $SHIFTKIT_DATA to a folder holding waterbirds/"),
    # 8. '~' outside quotes is refused by Hydra's override grammar itself (config.py words the message)
    ("tilde-root-unquoted", ["train", "data=cifar10_lt", "data.root=~/cifar"], {}, "cannot parse overrides"),
]
# fmt: on


@pytest.mark.filterwarnings("error::RuntimeWarning")  # a numpy warning would be a second line on stderr
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_data_is_one_short_line_exit_2_and_writes_nothing(case, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    before = _prepare(case, work, monkeypatch)
    code = main(_argv(case, work))
    out, err = capsys.readouterr()
    _check(case, work, before, code, out, err)
    line = err.strip()
    assert len(line.replace(str(work), "")) <= LONGEST, f"{len(line)} characters: {line[:300]}..."


def test_the_catalogue_is_distinct():
    ids = [c[0] for c in CASES]
    assert len(set(ids)) == len(ids) and len({c[3] for c in CASES}) == len(CASES)


# ----------------------------------------------------------------------------------------- quoting data


def test_quote_caps_values_and_lists_on_one_line():
    from shiftkit.data.base import quote

    assert quote("1,5") == "1,5" and quote(["a", "b"]) == "a, b"
    assert quote("a\nb\r\u2028c") == "a\\nb\\r\\u2028c"
    long = quote(LONG)
    assert long.startswith("x" * 200) and long.endswith("... (10000 characters)") and len(long) < 230
    names = quote([f"feature_{k}" for k in range(3000)])
    assert names.startswith("feature_0, feature_1, ") and names.endswith(", feature_16, ... (2983 more)")
    assert quote([LONG, "b"]) == f"{'x' * 200}... (10000 characters), ... (1 more)"
    assert quote([1, 2, 3], total=10) == "1, 2, 3, ... (7 more)"


# ------------------------------------------------------------------------ group and attribute ids remapped


def _grouped_table(groups):
    return _table(grp=np.resize(groups, 40))


def test_tabular_integer_group_ids_are_remapped_in_sorted_order(tmp_path):
    for groups in ([3000, 7, 1000, 7], [5, -2, 10**15, 5]):
        _grouped_table(groups).to_csv(tmp_path / "t.csv", index=False)
        splits = data.build("tabular", path=str(tmp_path / "t.csv"), group="grp", split="part")
        values = sorted(set(groups))
        assert splits.num_groups == len(values) and splits.info["group_values"] == values
        rows = np.resize(groups, 40)[:20]  # the training rows, in file order
        assert splits.train.g.tolist() == [values.index(v) for v in rows]
        assert all(n > 0 for n in splits.train.group_counts)


def test_tabular_group_ids_0_to_g_minus_1_are_kept(tmp_path):
    _table().to_csv(tmp_path / "t.csv", index=False)
    splits = data.build("tabular", path=str(tmp_path / "t.csv"), group="grp", split="part")
    assert splits.info["group_values"] == [0, 1, 2, 3]
    assert splits.train.g.tolist() == (np.arange(20) % 4).tolist()


def test_tabular_attribute_ids_are_remapped(tmp_path):
    _table(grp=np.where(np.arange(40) % 3 == 0, 7, 3000)).to_csv(tmp_path / "t.csv", index=False)
    splits = data.build("tabular", path=str(tmp_path / "t.csv"), attribute="grp", split="part")
    assert splits.num_groups == 4 and splits.info["attribute_values"] == [7, 3000]
    a = np.where(np.arange(20) % 3 == 0, 0, 1)
    assert splits.train.g.tolist() == (2 * (np.arange(20) % 2) + a).tolist()  # g = 2·y + a, a = 0 for 7


def test_the_group_mapping_reaches_run_json(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _grouped_table([3000, 7, 1000, 7]).to_csv(tmp_path / "t.csv", index=False)
    argv = ["train", *TRAIN, "data=tabular", "data.path=t.csv", "data.group=grp", "data.split=part"]
    assert main([a.replace("{dir}", str(tmp_path)) for a in argv]) == 0, capsys.readouterr().err
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "out").rglob("run.json")]
    assert record["data"]["info"]["group_values"] == [7, 1000, 3000]
    assert record["data"]["counts"]["train"]["group_counts"] == [10, 5, 5]


def test_shift_classifier_shares_the_remapping():
    from shiftkit.sklearn import ShiftClassifier

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 2)), np.arange(40) % 2
    clf = ShiftClassifier(epochs=1, random_state=0).fit(X, y, groups=np.resize([3000, 7, 1000, 7], 40))
    assert clf.groups_.tolist() == [7, 1000, 3000] and clf.group_counts_ == [20, 10, 10]


# ------------------------------------------------------------------------------------ '~' is the home folder


def test_roots_and_paths_starting_with_tilde_are_the_home_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("SHIFTKIT_CACHE", str(tmp_path / "cache"))
    _idx()(tmp_path / "fm")
    splits = data.build("fmnist_lt", root="~/fm", n_max=8, rho=2, val_per_class=2)
    assert len(splits.test) == 40
    _table().to_csv(tmp_path / "t.csv", index=False)
    assert data.build("tabular", path="~/t.csv").info["path"] == str(tmp_path / "t.csv")
    monkeypatch.chdir(tmp_path)
    quoted = ["train", "train.epochs=1", "device=cpu", "out=out", "data=tabular", "data.path='~/t.csv'"]
    assert main(quoted) == 0, capsys.readouterr().err  # quoted for Hydra, the loader expands '~'
