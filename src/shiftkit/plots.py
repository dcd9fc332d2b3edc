"""Figures of a report: bars over methods and metrics, curves over epochs (mean ± s.e.m. over seeds)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from . import files
from .metrics import LOWER_IS_BETTER

#: Short names of the metrics, for table headers and legends.
SHORT = {
    "acc": "acc",
    "balanced_acc": "balanced acc",
    "worst_class_acc": "worst class",
    "group_balanced_acc": "group-bal. acc",
    "worst_group_acc": "worst group",
    "deo": "DEO",
    "train_weighted_acc": "train-wtd acc",
    "ece": "ECE",
    "macro_f1": "macro-F1",
    "auroc": "AUROC",
    "dp_gap": "DP gap",
    "eo_gap": "EO gap",
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    """Save through a temporary file and a rename, so a reader never sees half a PNG."""
    try:
        with files.atomic(Path(path), binary=True) as handle:
            fig.savefig(handle, dpi=120, format=Path(path).suffix.lstrip(".") or "png")
    finally:
        _pyplot().close(fig)


def seeds_text(rows: List[dict]) -> str:
    """How many seeds a table's rows average: ``5 seeds``, or ``5 seeds (1 for X, 3 for Y)`` when some
    rows have fewer or more than most.

    >>> seeds_text([{"method": "A", "n": 5}, {"method": "B", "n": 5}, {"method": "C", "n": 1}])
    '5 seeds (1 for C)'
    """
    counts = [row["n"] for row in rows]
    most = max(set(counts), key=lambda n: (counts.count(n), n))
    others = [f"{row['n']} for {row['method']}" for row in rows if row["n"] != most]
    text = f"{most} seed{'s' if most != 1 else ''}"
    return f"{text} ({', '.join(others)})" if others else text


def colours(n: int) -> list:
    """``n`` distinct colours: the tab10 or tab20 palettes where they suffice, else evenly spaced hues.

    >>> len({tuple(c) for c in colours(37)})
    37
    """
    plt = _pyplot()
    if n <= 10:
        return [plt.get_cmap("tab10")(i) for i in range(n)]
    if n <= 20:
        return [plt.get_cmap("tab20")(i) for i in range(n)]
    return [plt.get_cmap("turbo")(i / (n - 1)) for i in range(n)]


def bar_chart(tables: Dict[str, List[dict]], columns: Dict[str, Sequence[Tuple[str, str]]], path: Path) -> None:
    """Grouped bars (one group per method, one bar per non-training metric) with s.e.m. error bars; one
    panel per table, each with its own columns."""
    plt = _pyplot()
    most = max(len(rows) for rows in tables.values())
    fig, axes = plt.subplots(1, len(tables), figsize=(max(6.0, 1.6 * most) * len(tables), 4.5), squeeze=False)
    for ax, (dataset, rows) in zip(axes[0], tables.items()):
        shown = [c for c in columns[dataset] if c[0] != "train"] or list(columns[dataset])
        width = 0.8 / len(shown)
        for j, ((split, metric), colour) in enumerate(zip(shown, colours(len(shown)))):
            cells = [row[f"{split}/{metric}"] for row in rows]
            means = [c[0] if c else math.nan for c in cells]
            sems = [(c[1] or 0.0) if c else 0.0 for c in cells]
            xs = [i + (j - (len(shown) - 1) / 2) * width for i in range(len(rows))]
            ax.bar(xs, means, width, yerr=sems, capsize=3, color=colour, label=f"{split} {SHORT[metric]}")
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([r["method"] for r in rows], rotation=20, ha="right")
        ax.set_ylim(0, 1.05)
        lower = [SHORT[m] for _, m in shown if m in LOWER_IS_BETTER]
        ax.set_ylabel(f"accuracy ({', '.join(dict.fromkeys(lower))}: lower is better)" if lower else "accuracy")
        ax.set_title(f"{dataset}: mean ± s.e.m. over {seeds_text(rows)}", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def curve_plot(curves: Dict[str, Dict[str, list]], metrics: Dict[str, Tuple[str, str]], path: Path,
               note: str = "") -> None:
    """One line per method over evaluation epochs, with a shaded ± s.e.m. band; ``metrics`` gives each
    panel's ``(split, metric)``. No two methods of a panel share a colour."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(curves), figsize=(7.0 * len(curves), 4.5), squeeze=False)
    for ax, (dataset, methods) in zip(axes[0], curves.items()):
        split, metric = metrics[dataset]
        for (method, points), colour in zip(methods.items(), colours(len(methods))):
            epochs = [p[0] for p in points]
            means = [p[1] for p in points]
            sems = [p[2] or 0.0 for p in points]
            ax.plot(epochs, means, marker="o", markersize=3, color=colour, label=method)
            ax.fill_between(epochs, [m - s for m, s in zip(means, sems)], [m + s for m, s in zip(means, sems)],
                            color=colour, alpha=0.2)
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{split} {SHORT[metric]}")
        ax.set_title(f"{dataset}: {split} {SHORT[metric]} during training (mean ± s.e.m.){note}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def plot_alpha(history: List[dict], path: Path) -> None:
    """AutoBalance's learned loss parameters over epochs: one line per entry of ``τ``, ``l``, ``Δ`` and ``w``
    (those the search learned)."""
    plt = _pyplot()
    keys = [k for k in ("tau", "l", "delta", "w") if history and k in history[0]]
    if not keys:  # the search learned an augmentation only (plot_policy draws it)
        return
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4), squeeze=False)
    epochs = [h["epoch"] for h in history]
    for ax, key in zip(axes[0], keys):
        rows = [torch_flat(h[key]) for h in history]
        for j in range(len(rows[0])):
            ax.plot(epochs, [r[j] for r in rows], label=f"{key}[{j}]" if len(rows[0]) <= 10 else None)
        ax.set_xlabel("epoch")
        ax.set_title(f"AutoBalance: {key} over the search")
        ax.grid(alpha=0.3)
        if len(rows[0]) <= 10:
            ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def plot_policy(record: dict, path: Path) -> None:
    """A learned augmentation policy per class (``run.json``'s ``augment``): one panel per operation, its
    magnitude (bars) and application probability (dots) for every class."""
    plt = _pyplot()
    ops, values = record["ops"], record["per_class"]
    classes = list(range(len(values["magnitude"])))
    fig, axes = plt.subplots(1, len(ops), figsize=(3.2 * len(ops), 3.4), squeeze=False, sharey=True)
    for j, (ax, op) in enumerate(zip(axes[0], ops)):
        ax.bar(classes, [row[j] for row in values["magnitude"]], color="tab:blue", alpha=0.7, label="magnitude")
        if op != "spherical":  # always applied: no probability
            ax.plot(classes, [row[j] for row in values["probability"]], "o", color="tab:red", label="probability")
        ax.set_title(op)
        ax.set_xlabel("class")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"learned augmentation policy (per {record['per']})")
    fig.tight_layout()
    _save(fig, path)


def torch_flat(value) -> list:
    """Flatten nested lists (a [G, K] parameter) into one list."""
    if isinstance(value, list):
        return [x for v in value for x in torch_flat(v)]
    return [value]
