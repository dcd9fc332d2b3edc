"""Finished runs, grouped and summarized: which runs are one method over seeds, and the statistics over
them (mean ± s.e.m., the paired test against a baseline; docs/METHODS.md#statistics), for
:func:`shiftkit.report.report`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import labels, rundir
from .errors import ShiftkitError
from .metrics import LOWER_IS_BETTER

#: Default columns: (split, metric). Training accuracy shows whether the runs interpolate. Group
#: columns are dropped where every run's groups are its classes, and columns no run has (DEO without an
#: attribute) are dropped too.
DEFAULT_COLUMNS = (
    ("test", "balanced_acc"),
    ("test", "worst_class_acc"),
    ("test", "worst_group_acc"),
    ("test", "deo"),
    ("train", "acc"),
)
_GROUP_METRICS = {"group_balanced_acc", "worst_group_acc", "deo", "dp_gap", "eo_gap"}


def mean_sem(values: Sequence[float]) -> Tuple[float, Optional[float]]:
    """Mean and standard error of the mean (``None`` for fewer than two values).

    >>> mean_sem([0.5, 0.7])
    (0.6, 0.1)
    """
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return round(mean, 12), round(math.sqrt(var / n), 12)


def paired_p(values: Dict[int, float], baseline: Dict[int, float], lower_is_better: bool = False) -> Optional[float]:
    """One-sided paired t-test that ``values`` beat ``baseline`` over the seeds both have (docs/METHODS.md#statistics).

    ``None`` with fewer than two shared seeds; 0.5 when every difference is equal to zero.
    """
    from scipy import stats

    seeds = sorted(set(values) & set(baseline))
    if len(seeds) < 2:
        return None
    diffs = [values[s] - baseline[s] for s in seeds]
    if lower_is_better:
        diffs = [-d for d in diffs]
    if all(d == diffs[0] for d in diffs):  # no variance: the t statistic is undefined
        return 0.0 if diffs[0] > 0 else (1.0 if diffs[0] < 0 else 0.5)
    return float(stats.ttest_1samp(diffs, 0.0, alternative="greater").pvalue)


def load_runs(root: Path) -> List[dict]:
    """Every finished run under ``root``, oldest first; ``_dir`` holds where it was found. A run marked
    done whose files are damaged (:func:`shiftkit.rundir.finished`) is skipped with one warning naming
    it; its ``metrics.jsonl`` lines are in ``_metrics``."""
    root = Path(root)
    if not root.is_dir():
        raise ShiftkitError(f"no such directory: {root}")
    runs, damaged = [], []
    for marker in sorted(root.rglob(rundir.DONE_FILE)):
        try:
            found = rundir.finished(marker.parent, with_metrics=True)
        except rundir.Damaged as exc:
            damaged.append(str(exc))
            continue
        if found is None:  # its done marker went while the folder was read
            continue
        record, lines = found
        record["_dir"], record["_metrics"] = str(marker.parent), lines
        runs.append(record)
    fix = "delete its done marker and run it again"
    if not runs:
        also = f"; {len(damaged)} damaged run(s) skipped, the first: {damaged[0]} ({fix})" if damaged else ""
        raise ShiftkitError(f"no finished runs (run.json with a done marker) under {root}{also}")
    for problem in damaged:
        rundir.warn(f"skipped a damaged run: {problem}; {fix}")
    return sorted(runs, key=lambda r: r.get("started", 0))


#: Config keys that make up a method: runs that differ only in these (and their seed) are paired.
METHOD_KEYS = ("loss", "weighting", "sampler", "procedure", "search", "name", "preset", "train.select")
#: Keys left out when checking that two runs trained alike: where and how they ran, and what they measured.
_NOT_TRAINING = ("seed", "scale", "diagnostics", "train.eval_every")


def _record_label(r: dict) -> Tuple[str, str]:
    """``(data label, run label)`` of a record (older records without a full config: its data's name and
    its method; a caller's own label in ``_label``)."""
    config = r.get("config", {})
    dataset = labels.data(config) if "data" in config else r["data"]["name"]
    return dataset, r["_label"] if "_label" in r else labels.label(config, method_text=r["method"])


def _training(config: dict, method_keys: Sequence[str] = METHOD_KEYS) -> Dict[str, Any]:
    """The flattened config without ``method_keys``, the seed and how it ran: what runs paired must share
    (and, with the keys a search tunes, what the candidates of one method share)."""
    from .identity import EXECUTION_KEYS, comparable
    from .tracking import flatten

    flat = flatten(comparable(config, drop=(*EXECUTION_KEYS, *_NOT_TRAINING)))
    return {k: v for k, v in flat.items() if not any(k == s or k.startswith(s + ".") for s in method_keys)}


def differences(a: dict, b: dict) -> List[str]:
    """What two configs' trainings do differently, as ``key a vs b``, e.g. ``train.epochs 30 vs 400``.

    >>> differences({"train": {"epochs": 30}, "loss": {"name": "poly"}}, {"train": {"epochs": 400}, "loss": {"name": "ce"}})
    ['train.epochs 30 vs 400']
    """
    ta, tb = _training(a), _training(b)
    keys = sorted(set(ta) | set(tb))
    return [f"{k} {ta.get(k, 'null')} vs {tb.get(k, 'null')}" for k in keys if ta.get(k, "null") != tb.get(k, "null")]


def _distinguish(configs: Dict[str, dict]) -> Dict[str, str]:
    """For groups of runs that share a label, a suffix for each: the keys whose values differ between
    them (at most three, ``key=value``), else a short config hash."""
    from .identity import EXECUTION_KEYS, comparable
    from .tracking import flatten

    flat = {key: flatten(comparable(cfg, drop=(*EXECUTION_KEYS, "seed"))) for key, cfg in configs.items()}
    keys = sorted({k for f in flat.values() for k in f})
    differing = [k for k in keys if len({str(f.get(k)) for f in flat.values()}) > 1]
    if not differing or len(differing) > 3:
        return {key: key[:6] for key in configs}
    return {key: ", ".join(f"{k}={labels.short(f.get(k))}" for k in differing) for key, f in flat.items()}


def grouped(runs: List[dict]) -> Dict[str, Dict[str, List[dict]]]:
    """``{data label: {run label: [runs over seeds]}}``, in order of first appearance.

    Runs are grouped by their config without the seed; groups that share a label get the keys that tell
    them apart appended (``Poly+IW [train.epochs=30]``), or a short config hash, so that different runs
    never merge silently.
    """
    groups: Dict[Tuple[str, str, str], List[dict]] = {}
    for r in runs:
        dataset, label = _record_label(r)
        groups.setdefault((dataset, label, r["group_key"]), []).append(r)
    keys_per_label: Dict[Tuple[str, str], Dict[str, dict]] = {}
    for (dataset, label, key), members in groups.items():
        keys_per_label.setdefault((dataset, label), {})[key] = members[0].get("config", {})
    suffixes = {k: _distinguish(v) if len(v) > 1 else {} for k, v in keys_per_label.items()}
    out: Dict[str, Dict[str, List[dict]]] = {}
    for (dataset, label, key), members in groups.items():
        suffix = suffixes[(dataset, label)].get(key)
        out.setdefault(dataset, {})[f"{label} [{suffix}]" if suffix else label] = members
    return out


def _by_seed(members: List[dict], which: str, split: str, metric: str) -> Dict[int, float]:
    values = {m["config"]["seed"]: m[which][split].get(metric) for m in members}
    return {s: v for s, v in values.items() if v is not None}


def pick_baseline(baseline: str, methods: Sequence[str], dataset: str) -> str:
    """The method ``baseline`` names in a table: itself, else the one method it is a prefix of (case aside).

    >>> pick_baseline("ce", ["CE [wang_ce]", "Poly+IW [wang_poly_iw]"], "cifar")
    'CE [wang_ce]'
    """
    if baseline in methods:
        return baseline
    found = [m for m in methods if m.lower().startswith(baseline.lower())]
    if len(found) == 1:
        return found[0]
    if found:
        raise ShiftkitError(f"--baseline '{baseline}' matches {len(found)} methods in {dataset}: "
                            f"{', '.join(found)}; give more of the name")
    raise ShiftkitError(f"no method '{baseline}' in {dataset}; methods: {', '.join(methods)}")


def summarize(
    runs: List[dict],
    columns: Optional[Sequence[Tuple[str, str]]] = None,
    which: str = "selected",
    baseline: Optional[str] = None,
    pair_mismatched: bool = False,
) -> Tuple[Dict[str, List[dict]], Dict[str, List[Tuple[str, str]]]]:
    """``({dataset: [row, ...]}, {dataset: columns})``. A row has ``method``, ``n`` (seeds), ``seeds``,
    ``(mean, sem)`` per column and, given a ``baseline`` (a method, or a unique prefix of one), ``p``: the
    paired test on the first column. ``columns=None`` takes :data:`DEFAULT_COLUMNS` less those that say
    nothing about a table's runs, table by table. A method whose training differs from the baseline's in
    more than the method (epochs, optimizer, model, ...) is not paired unless ``pair_mismatched``: its
    ``p`` is ``None`` and its ``unpaired`` says what differs."""
    tables: Dict[str, List[dict]] = {}
    table_columns: Dict[str, List[Tuple[str, str]]] = {}
    for dataset, methods in grouped(runs).items():
        members_all = [m for ms in methods.values() for m in ms]
        cols = informative(DEFAULT_COLUMNS, members_all) if columns is None else list(columns)
        table_columns[dataset] = cols
        base = pick_baseline(baseline, list(methods), dataset) if baseline is not None else None
        for label, members in methods.items():
            row: dict = {"method": label, "n": len(members), "seeds": sorted(m["config"]["seed"] for m in members)}
            if "_chosen" in members[0]:  # model selection across runs (shiftkit.report_select)
                row["chosen"] = members[0]["_chosen"]
            for split, metric in cols:
                values = list(_by_seed(members, which, split, metric).values())
                row[f"{split}/{metric}"] = mean_sem(values) if values else None
            if base is not None:
                row["p"] = None
                if label == base:
                    row["baseline"] = True
                else:
                    split, metric = cols[0]
                    apart = differences(members[0].get("config", {}), methods[base][0].get("config", {}))
                    if apart and not pair_mismatched:
                        row["unpaired"] = "; ".join(apart)
                    else:
                        row["p"] = paired_p(_by_seed(members, which, split, metric),
                                            _by_seed(methods[base], which, split, metric), metric in LOWER_IS_BETTER)
            tables.setdefault(dataset, []).append(row)
    return tables, table_columns


def curves(runs: List[dict], split: str = "test", metric: str = "balanced_acc",
           per_table: Optional[Dict[str, Tuple[str, str]]] = None) -> Dict[str, Dict[str, list]]:
    """``{dataset: {method: [(epoch, mean, sem), ...]}}`` from each run's ``metrics.jsonl``: ``split``'s
    ``metric``, or each table's own ``(split, metric)`` in ``per_table``."""
    out: Dict[str, Dict[str, list]] = {}
    for dataset, methods in grouped(runs).items():
        split, metric = (per_table or {}).get(dataset, (split, metric))
        for label, members in methods.items():
            per_epoch: Dict[int, List[float]] = {}
            for m in members:
                for record in m["_metrics"] if "_metrics" in m else rundir.read_metrics(m["_dir"]):
                    value = record.get(split, {}).get(metric)
                    if value is not None:
                        per_epoch.setdefault(record["epoch"], []).append(value)
            out.setdefault(dataset, {})[label] = [(e, *mean_sem(v)) for e, v in sorted(per_epoch.items())]
    return out


def informative(columns: Sequence[Tuple[str, str]], runs: List[dict]) -> List[Tuple[str, str]]:
    """The columns that say something about these runs (see :data:`DEFAULT_COLUMNS`)."""
    if all(r["data"]["counts"]["train"]["group_counts"] == r["data"]["counts"]["train"]["class_counts"] for r in runs):
        columns = [c for c in columns if c[1] not in _GROUP_METRICS]
    return [c for c in columns if any(r["selected"][c[0]].get(c[1]) is not None for r in runs)]
