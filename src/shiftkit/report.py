"""Runs -> tables and figures: mean ± standard error of the mean over seeds (SPEC §9.1's statistics).

``shiftkit report DIR`` reads the ``run.json`` of every finished run (those with a ``done`` marker) under
``DIR``, groups runs that differ only in their seed, and prints one table per dataset: methods as rows,
metrics as columns, ``mean ± s.e.m.`` with the s.e.m. the sample standard deviation over ``sqrt(n)``.
It also writes ``report.json`` and a bar chart ``report.png`` into ``DIR``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .errors import ShiftkitError
from .metrics import SCALAR_METRICS

#: Default columns: (split, metric). Training accuracy shows whether the runs interpolate. Group
#: columns are dropped where every run's groups are its classes, and columns nobody has (DEO without an
#: attribute) are dropped too.
DEFAULT_COLUMNS = (
    ("test", "balanced_acc"),
    ("test", "worst_class_acc"),
    ("test", "worst_group_acc"),
    ("test", "deo"),
    ("train", "acc"),
)
_GROUP_METRICS = {"group_balanced_acc", "worst_group_acc", "deo"}
_SHORT = {
    "acc": "acc",
    "balanced_acc": "balanced acc",
    "worst_class_acc": "worst class",
    "group_balanced_acc": "group-bal. acc",
    "worst_group_acc": "worst group",
    "deo": "DEO",
    "train_weighted_acc": "train-wtd acc",
}


def _groups_are_classes(run: dict) -> bool:
    counts = run["data"]["counts"]["train"]
    return counts["group_counts"] == counts["class_counts"]


def informative(columns: Sequence[Tuple[str, str]], runs: List[dict]) -> List[Tuple[str, str]]:
    """The default columns that say something about these runs."""
    if all(_groups_are_classes(r) for r in runs):
        columns = [c for c in columns if c[1] not in _GROUP_METRICS]
    return [c for c in columns if any(r["selected"][c[0]].get(c[1]) is not None for r in runs)]


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


def load_runs(root: Path) -> List[dict]:
    """Every finished run under ``root``, oldest first."""
    root = Path(root)
    if not root.exists():
        raise ShiftkitError(f"no such directory: {root}")
    runs = []
    for path in root.rglob("run.json"):
        if (path.parent / "done").exists():
            try:
                runs.append(json.loads(path.read_text()))
            except json.JSONDecodeError:
                raise ShiftkitError(f"{path} is not valid JSON") from None
    if not runs:
        raise ShiftkitError(f"no finished runs (run.json with a done marker) under {root}")
    return sorted(runs, key=lambda r: r.get("started", 0))


def summarize(
    runs: List[dict], columns: Sequence[Tuple[str, str]] = DEFAULT_COLUMNS, which: str = "selected"
) -> Dict[str, List[dict]]:
    """``{data name: [row, ...]}``; a row has ``method``, ``n`` (seeds) and ``(mean, sem)`` per column.

    Runs are grouped by their config without the seed; a label shared by different configs gets a
    short config hash appended so that rows never merge silently.
    """
    groups: Dict[Tuple[str, str], List[dict]] = {}
    for r in runs:
        groups.setdefault((r["data"]["name"], r["group_key"]), []).append(r)
    labels: Dict[str, set] = {}
    for (dataset, key), members in groups.items():
        labels.setdefault(f"{dataset}/{members[0]['method']}", set()).add(key)
    tables: Dict[str, List[dict]] = {}
    for (dataset, key), members in groups.items():
        method = members[0]["method"]
        if len(labels[f"{dataset}/{method}"]) > 1:
            method = f"{method} [{key[:6]}]"
        row: dict = {"method": method, "n": len(members), "seeds": sorted(m["config"]["seed"] for m in members)}
        for split, metric in columns:
            values = [m[which][split].get(metric) for m in members]
            values = [v for v in values if v is not None]
            row[f"{split}/{metric}"] = mean_sem(values) if values else None
        tables.setdefault(dataset, []).append(row)
    return tables


def _cell(value: Optional[Tuple[float, Optional[float]]]) -> str:
    if value is None:
        return "–"
    mean, sem = value
    return f"{mean:.3f} ± {sem:.3f}" if sem is not None else f"{mean:.3f}"


def render(tables: Dict[str, List[dict]], columns: Sequence[Tuple[str, str]], console=None) -> None:
    """Print each table with rich."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    for dataset, rows in tables.items():
        table = Table(title=f"{dataset}: mean ± s.e.m. over seeds", title_justify="left")
        table.add_column("method")
        table.add_column("seeds", justify="right")
        for split, metric in columns:
            table.add_column(f"{split}\n{_SHORT[metric]}", justify="right")
        for row in rows:
            table.add_row(row["method"], str(row["n"]), *(_cell(row[f"{s}/{m}"]) for s, m in columns))
        console.print(table)


def bar_chart(tables: Dict[str, List[dict]], columns: Sequence[Tuple[str, str]], path: Path) -> None:
    """Grouped bars (one group per method, one bar per test metric) with s.e.m. error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [c for c in columns if c[0] != "train"] or list(columns)
    fig, axes = plt.subplots(1, len(tables), figsize=(max(6, 1.6 * max(len(r) for r in tables.values())) * len(tables), 4.5), squeeze=False)
    width = 0.8 / len(shown)
    for ax, (dataset, rows) in zip(axes[0], tables.items()):
        for j, (split, metric) in enumerate(shown):
            cells = [row[f"{split}/{metric}"] for row in rows]
            means = [c[0] if c else math.nan for c in cells]
            sems = [c[1] or 0.0 if c else 0.0 for c in cells]
            xs = [i + (j - (len(shown) - 1) / 2) * width for i in range(len(rows))]
            ax.bar(xs, means, width, yerr=sems, capsize=3, label=f"{split} {_SHORT[metric]}")
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([r["method"] for r in rows], rotation=20, ha="right")
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("accuracy (DEO: lower is better)" if any(m == "deo" for _, m in shown) else "accuracy")
        ax.set_title(f"{dataset} (mean ± s.e.m., n = {', '.join(sorted({str(r['n']) for r in rows}))} seeds)")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def parse_columns(specs: Optional[Sequence[str]]) -> Sequence[Tuple[str, str]]:
    """``["test/balanced_acc", "train/acc"]`` -> pairs; bare metric names mean the test split."""
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


def report(root: Path, columns=DEFAULT_COLUMNS, which: str = "selected", png: Optional[Path] = None, console=None) -> Dict[str, List[dict]]:
    """Load, summarize, print and save (``report.json``, ``report.png``) the runs under ``root``."""
    from .runner import atomic_write

    if which not in ("selected", "final"):
        raise ShiftkitError(f"--which must be 'selected' or 'final', got '{which}'")
    root = Path(root)
    runs = load_runs(root)
    if columns is DEFAULT_COLUMNS:
        columns = informative(columns, runs)
    tables = summarize(runs, columns, which)
    render(tables, columns, console)
    atomic_write(root / "report.json", json.dumps({"which": which, "tables": tables}, indent=2))
    bar_chart(tables, columns, Path(png) if png else root / "report.png")
    return tables
