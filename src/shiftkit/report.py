"""Runs -> tables and figures: mean ± standard error of the mean over seeds (SPEC §9.1's statistics).

``shiftkit report DIR`` reads every finished run under ``DIR`` (a ``run.json`` beside a ``done``
marker), groups runs that differ only in their seed and prints one table per dataset: methods as rows,
metrics as columns, ``mean ± s.e.m.`` with the s.e.m. the sample standard deviation over ``sqrt(n)``.
With a baseline it adds a one-sided paired t-test per method over the seeds both share (SPEC §9.1:
"p (method > baseline)"). It writes ``report.json``, ``report.png`` (bars) and ``curves.png`` (the first
metric over evaluation epochs) into ``DIR``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from . import files, rundir
from .errors import ShiftkitError
from .metrics import LOWER_IS_BETTER, SCALAR_METRICS
from .plots import SHORT, bar_chart, curve_plot

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
_GROUP_METRICS = {"group_balanced_acc", "worst_group_acc", "deo"}


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
    """One-sided paired t-test that ``values`` beat ``baseline`` over the seeds both have (SPEC §9.1).

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


def grouped(runs: List[dict]) -> Dict[str, Dict[str, List[dict]]]:
    """``{dataset: {method label: [runs over seeds]}}``, in order of first appearance.

    Runs are grouped by their config without the seed; a label shared by different configs gets a short
    config hash appended so that different methods never merge silently.
    """
    groups: Dict[Tuple[str, str], List[dict]] = {}
    for r in runs:
        groups.setdefault((r["data"]["name"], r["group_key"]), []).append(r)
    keys_per_label: Dict[Tuple[str, str], set] = {}
    for (dataset, key), members in groups.items():
        keys_per_label.setdefault((dataset, members[0]["method"]), set()).add(key)
    out: Dict[str, Dict[str, List[dict]]] = {}
    for (dataset, key), members in groups.items():
        label = members[0]["method"]
        if len(keys_per_label[(dataset, label)]) > 1:
            label = f"{label} [{key[:6]}]"
        out.setdefault(dataset, {})[label] = members
    return out


def _by_seed(members: List[dict], which: str, split: str, metric: str) -> Dict[int, float]:
    values = {m["config"]["seed"]: m[which][split].get(metric) for m in members}
    return {s: v for s, v in values.items() if v is not None}


def summarize(
    runs: List[dict],
    columns: Sequence[Tuple[str, str]] = DEFAULT_COLUMNS,
    which: str = "selected",
    baseline: Optional[str] = None,
) -> Dict[str, List[dict]]:
    """``{dataset: [row, ...]}``; a row has ``method``, ``n`` (seeds), ``(mean, sem)`` per column and,
    given a ``baseline`` method, ``p``: the paired test on the first column."""
    tables: Dict[str, List[dict]] = {}
    for dataset, methods in grouped(runs).items():
        if baseline is not None and baseline not in methods:
            raise ShiftkitError(f"no method '{baseline}' in {dataset}; methods: {', '.join(methods)}")
        for label, members in methods.items():
            row: dict = {"method": label, "n": len(members), "seeds": sorted(m["config"]["seed"] for m in members)}
            for split, metric in columns:
                values = list(_by_seed(members, which, split, metric).values())
                row[f"{split}/{metric}"] = mean_sem(values) if values else None
            if baseline is not None:
                split, metric = columns[0]
                row["p"] = None if label == baseline else paired_p(
                    _by_seed(members, which, split, metric),
                    _by_seed(methods[baseline], which, split, metric),
                    metric in LOWER_IS_BETTER,
                )
            tables.setdefault(dataset, []).append(row)
    return tables


def curves(runs: List[dict], split: str = "test", metric: str = "balanced_acc") -> Dict[str, Dict[str, list]]:
    """``{dataset: {method: [(epoch, mean, sem), ...]}}`` from each run's ``metrics.jsonl``."""
    out: Dict[str, Dict[str, list]] = {}
    for dataset, methods in grouped(runs).items():
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


def _cell(value: Optional[Tuple[float, Optional[float]]]) -> str:
    if value is None:
        return "–"
    mean, sem = value
    return f"{mean:.3f} ± {sem:.3f}" if sem is not None else f"{mean:.3f}"


def p_text(p: Optional[float]) -> str:
    """A p-value as tables print it: ``–`` when there is none, scientific notation below 1e-3."""
    return "–" if p is None else (f"{p:.1e}" if p < 1e-3 else f"{p:.3f}")


def render(tables: Dict[str, List[dict]], columns: Sequence[Tuple[str, str]], console=None, baseline=None) -> None:
    """Print each table with rich."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console()
    for dataset, rows in tables.items():
        counts = {row["n"] for row in rows}
        same = len(counts) == 1
        title = f"{dataset}: mean ± s.e.m. over {counts.pop()} seeds" if same else f"{dataset}: mean ± s.e.m. over seeds"
        caption = None
        if baseline is not None:
            split, metric = columns[0]
            caption = f"p: one-sided paired t-test over seeds, {split} {SHORT[metric]} better than {baseline}"
        table = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
        table.add_column("method")
        if not same:
            table.add_column("seeds", justify="right")
        for split, metric in columns:
            table.add_column(f"{split}\n{SHORT[metric]}", justify="right")
        if baseline is not None:
            table.add_column(f"p > {baseline}", justify="right")
        for row in rows:
            cells = [_cell(row[f"{s}/{m}"]) for s, m in columns]
            if baseline is not None:
                cells.append(p_text(row["p"]))
            table.add_row(Text(row["method"]), *([] if same else [str(row["n"])]), *cells)  # labels hold [...]
        console.print(table)


def render_curves(curves_: Dict[str, Dict[str, list]], split: str, metric: str, console=None, at_most: int = 8) -> None:
    """Print the curves as a table of methods by (up to ``at_most``) evaluation epochs."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console()
    for dataset, methods in curves_.items():
        epochs = sorted({p[0] for points in methods.values() for p in points})
        stride = max(1, math.ceil(len(epochs) / at_most))
        shown = epochs[::-1][::stride][::-1]
        table = Table(title=f"{dataset}: {split} {SHORT[metric]} by epoch (mean over seeds)", title_justify="left")
        table.add_column("method")
        for e in shown:
            table.add_column(str(e), justify="right")
        for method, points in methods.items():
            at = {p[0]: p[1] for p in points}
            table.add_row(Text(method), *(f"{at[e]:.3f}" if e in at else "–" for e in shown))
        console.print(table)


def parse_columns(specs: Optional[Sequence[str]]) -> Sequence[Tuple[str, str]]:
    """``["test/balanced_acc", "train/acc"]`` -> pairs; a bare metric name means the test split."""
    if not specs:
        return DEFAULT_COLUMNS
    pairs = []
    for spec in specs:
        split, _, metric = spec.rpartition("/")
        split = split or "test"
        if split not in ("train", "val", "test"):
            raise ShiftkitError(f"unknown split '{split}' in '{spec}'; use train, val or test")
        if metric not in SCALAR_METRICS:
            raise ShiftkitError(f"unknown metric '{metric}'; choose one of: {', '.join(SCALAR_METRICS)}")
        pairs.append((split, metric))
    return pairs


def report(
    root: Path,
    columns: Sequence[Tuple[str, str]] = DEFAULT_COLUMNS,
    which: str = "selected",
    baseline: Optional[str] = None,
    show_curves: bool = False,
    console=None,
) -> Dict[str, List[dict]]:
    """Load, summarize, print and save (``report.json``, ``report.png``, ``curves.png``) the runs under
    ``root``. Where ``root`` cannot be written (a read-only results folder), the tables are still
    printed and one warning says what was not saved."""
    if which not in ("selected", "final"):
        raise ShiftkitError(f"--which must be 'selected' or 'final', got '{which}'")
    root = Path(root)
    runs = load_runs(root)
    if columns is DEFAULT_COLUMNS:
        columns = informative(columns, runs)
    tables = summarize(runs, columns, which, baseline)
    curve_split, curve_metric = columns[0]
    lines = curves(runs, curve_split, curve_metric)
    render(tables, columns, console, baseline)
    if show_curves:
        render_curves(lines, curve_split, curve_metric, console)
    payload = {"which": which, "columns": [list(c) for c in columns], "baseline": baseline, "tables": tables, "curves": lines}
    try:
        files.write_text(root / "report.json", files.json_text(payload))
        bar_chart(tables, columns, root / "report.png")
        curve_plot(lines, curve_split, curve_metric, root / "curves.png")
    except files.WriteError as exc:
        rundir.warn(f"the report was printed but not saved: {exc}")
    return tables
