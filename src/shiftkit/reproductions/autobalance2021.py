"""[AB]'s tables on Fashion-MNIST (``shiftkit reproduce autobalance-table1|table3``): the runs, the
statistics over seeds and the figures the two reproductions share.

Every row of a table is one :class:`Method`: the overrides of its runs (one per seed, through the one
loop), its label in the paper and the paper's numbers. AutoBalance rows (``searches``) run the bilevel
search (docs/METHODS.md#autobalance-algorithm) and are trained one seed after another: a vectorized ensemble (``ensemble=true``)
trains the loss as it is, without the search, so they never join one. Metrics are percentages of the
final weights on the test set (errors are ``100·(1 − accuracy)``; docs/METHODS.md#metrics).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from .reproduction import Context, by_method, mean, p_text, paired

#: Significance level of the one-sided paired t-tests behind the claims.
ALPHA = 0.05
Values = Dict[int, float]


@dataclass(frozen=True)
class Method:
    """One row: ``label`` (the paper's), ``name`` (its runs' ``name``: directories and labels),
    ``overrides`` and the paper's numbers (``paper``, in the table's column order)."""

    label: str
    name: str
    overrides: Tuple[str, ...]
    paper: Tuple[float, ...]
    searches: bool = False


def train_methods(ctx: Context, methods: Sequence[Method], common: Sequence[str], plain: Sequence[str],
                  search: Sequence[str], seeds: int, label: str) -> Dict[str, List[dict]]:
    """Train every method's seeds with the ``common`` overrides and ``search`` (AutoBalance rows) or
    ``plain`` (the others); returns ``{method label: run records}``."""
    groups = {
        m.label: [[*common, *m.overrides, *(search if m.searches else plain), f"name={m.name}", f"seed={seed}"]
                  for seed in range(seeds)]
        for m in methods
    }
    return ctx.train_each(groups, label=label)


def percent(records: List[dict], metric: str, error: bool = True) -> Values:
    """``{seed: value}`` in %: ``100·(1 − metric)`` for an accuracy (``error``), else ``100·metric``."""
    (values,) = by_method(records, "test", metric, "final").values()
    return {seed: 100.0 * (1.0 - v) if error else 100.0 * v for seed, v in values.items()}


def lower(a: Values, b: Values, name_a: str, name_b: str) -> Tuple[Optional[bool], str]:
    """Whether ``a`` (an error, lower is better) beats ``b``: ``True`` if its mean is lower and a one-sided
    paired t-test over the seeds gives p < ALPHA, ``False`` if its mean is not lower, ``None`` if lower
    but not shown with these seeds."""
    p = paired(a, b, lower_is_better=True)
    diff = mean(a) - mean(b)
    holds = False if diff >= 0 else (None if p is None or p >= ALPHA else True)
    evidence = f"{name_a} {mean(a):.2f} vs {name_b} {mean(b):.2f} ({diff:+.2f} points, one-sided paired p = {{}})"
    return holds, evidence.format(p_text(p))


def bars(ctx: Context, panels: Sequence[Tuple[str, Dict[str, Values], Dict[str, float]]], title: str,
         filename: str, highlight: str = "AutoBalance", remarks: Optional[Dict[str, str]] = None) -> str:
    """One panel per ``(y label, {method: {seed: value}}, {method: paper value})``: a bar per method,
    mean ± s.e.m. over seeds (methods whose label starts with ``highlight`` in orange), the paper's
    numbers as black crosses, and ``remarks[method]`` written up from the foot of the method's bar."""
    from ..plots import _pyplot
    from ..report import mean_sem

    plt = _pyplot()
    methods = list(panels[0][1])
    fig, axes = plt.subplots(1, len(panels), figsize=(max(6.0, 0.75 * len(methods) + 1.5) * len(panels), 5.0),
                             squeeze=False)
    for ax, (ylabel, values, paper) in zip(axes[0], panels):
        stats = [mean_sem(list(values[m].values())) for m in methods]
        colours = ["tab:orange" if m.startswith(highlight) else "tab:blue" for m in methods]
        ax.bar(range(len(methods)), [s[0] for s in stats], 0.7, yerr=[s[1] or 0.0 for s in stats], capsize=3,
               color=colours, label="ours: mean ± s.e.m. over seeds")
        marked = [(i, paper[m]) for i, m in enumerate(methods) if m in paper]
        ax.plot([i for i, _ in marked], [v for _, v in marked], "kx", markersize=9, mew=2, label="paper")
        for i, m in enumerate(methods):
            if m in (remarks or {}):
                ax.text(i - 0.2, 0.0, " " + remarks[m], rotation=90, ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(methods)))
        ax.set_xticklabels(methods, rotation=35, ha="right", fontsize=8)
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="best")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return ctx.save_figure(fig, filename)


def learned_loss(record: dict):
    """The ``autobalance`` loss an AutoBalance run retrained with, rebuilt from its ``run.json`` (options,
    the search's training counts and the learned α); ``loss.offsets()`` and ``loss.delta`` hold its values."""
    import torch

    from .. import losses

    options = {k: v for k, v in record["config"]["loss"].items() if k != "name"}
    counts = record["data"]["counts"]["train"]
    loss = losses.build("autobalance", class_counts=counts["class_counts"], group_counts=counts["group_counts"],
                        **options)
    with torch.no_grad():
        for name, value in record["alpha"].items():
            getattr(loss, name).copy_(torch.tensor(value))
    return loss.requires_grad_(False)


def multiplier(loss):
    """The loss's logit multipliers ``[rows, K']``: σ(Δ), or Δ itself for a CDT-style init."""
    import torch

    return torch.sigmoid(loss.delta) if loss.through_sigmoid else loss.delta


def undecided(seeds: int) -> str:
    """The note that says what "not decided" means with this many seeds."""
    return ("Not decided means: the means differ but a one-sided paired t-test over these seeds does not show "
            f"the difference at p < 0.05 ({seeds} seeds: {seeds - 1} degrees of freedom).")


def training_fit(runs: Dict[str, List[dict]]) -> str:
    """Each method's final training accuracy (%, mean over seeds), as one note."""
    fit = ", ".join(f"{label} {100 * mean({r['config']['seed']: r['final']['train']['acc'] for r in records}):.1f}"
                    for label, records in runs.items())
    return f"Final training accuracy (%, mean over seeds): {fit}."
