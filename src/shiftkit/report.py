"""Runs -> tables and figures: mean ± standard error of the mean over seeds (docs/METHODS.md#statistics).

``shiftkit report DIR`` reads every finished run under ``DIR`` (a ``run.json`` beside a ``done``
marker), groups runs that differ only in their seed and prints one table per dataset: methods as rows,
metrics as columns, ``mean ± s.e.m.`` with the s.e.m. the sample standard deviation over ``sqrt(n)``.
With a baseline it adds a one-sided paired t-test per method over the seeds both share (docs/METHODS.md#statistics:
"p (method > baseline)"). It writes ``report.json``, ``report.png`` (bars) and ``curves.png`` (the first
metric over evaluation epochs) into ``DIR``. Reading and grouping the runs and their statistics live in
:mod:`shiftkit.report_runs`, printing and exporting the tables in :mod:`shiftkit.report_tables`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import files, labels, rundir
from .errors import ShiftkitError
from .metrics import SCALAR_METRICS
from .plots import bar_chart, curve_plot
from .report_runs import (  # noqa: F401
    DEFAULT_COLUMNS,
    METHOD_KEYS,
    curves,
    differences,
    grouped,
    informative,
    load_runs,
    mean_sem,
    paired_p,
    pick_baseline,
    summarize,
)
from .report_tables import FORMATS, export, p_text, render, render_curves  # noqa: F401


def parse_columns(specs: Optional[Sequence[str]]) -> Optional[List[Tuple[str, str]]]:
    """``["test/balanced_acc", "train/acc"]`` -> pairs; a bare metric name means the test split; none
    given -> ``None`` (the default columns, table by table)."""
    if not specs:
        return None
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


def log_runs(runs: List[dict], root: Path, logger: str, options: Optional[Dict[str, Any]] = None) -> int:
    """Log finished runs to an experiment tracker from their files (``metrics.jsonl`` and ``run.json``), as
    if it had watched them train; returns how many. ``tensorboard`` writes ``<root>/tensorboard/<run
    path>`` (``dir=...`` elsewhere), replacing what an earlier call wrote there; ``mlflow`` leaves the runs
    it already holds finished: repeating the command leaves one copy of each run."""
    import shutil

    from . import tracking

    options = dict(options or {})
    if logger == "tensorboard":
        options.setdefault("dir", str(Path(root) / "tensorboard"))
    tracker = tracking.build(logger, **options)
    count = 0
    for r in runs:
        run = Path(r["_dir"])
        if tracker.logged(run, Path(root)):
            continue
        if logger == "tensorboard":
            shutil.rmtree(Path(options["dir"]) / tracking.below_out(run, root), ignore_errors=True)
        config = r.get("config", {})
        tracker.start(run, Path(root), f"{labels.label(config, method_text=r['method'])} seed {config.get('seed')}",
                      config)
        try:
            for record in r["_metrics"]:
                tracker.log(record)
            tracker.finish("finished", r)
        except BaseException:
            tracker.finish("failed")
            raise
        count += 1
    return count


def report(
    root: Path,
    columns: Optional[Sequence[Tuple[str, str]]] = None,
    which: str = "selected",
    baseline: Optional[str] = None,
    show_curves: bool = False,
    console=None,
    fmt: str = "table",
    pair_mismatched: bool = False,
    log: Optional[str] = None,
    select: Optional[str] = None,
) -> Dict[str, List[dict]]:
    """Load, summarize, print and save (``report.json``, ``report.png``, ``curves.png``) the runs under
    ``root``; ``fmt`` prints the tables as ``csv``, ``markdown`` or ``latex`` instead (on stdout, for a
    file or a paper). Where ``root`` cannot be written (a read-only results folder), the tables are still
    printed and one warning says what was not saved. ``log`` also sends every run to that tracker
    (:func:`log_runs`). ``select`` (``val/<metric>``, ``oracle``) reports each method's setting that the
    criterion chooses among the runs of a search (:mod:`shiftkit.report_select`)."""
    if which not in ("selected", "final"):
        raise ShiftkitError(f"--which must be 'selected' or 'final', got '{which}'")
    if fmt not in FORMATS:
        raise ShiftkitError(f"--format must be one of: {', '.join(FORMATS)}; got '{fmt}'")
    root = Path(root)
    runs = load_runs(root)
    notes = None
    if select is not None:
        from .report_select import describe, select as choose

        runs, notes = choose(runs, select, which, first=(columns or DEFAULT_COLUMNS)[0])
    tables, table_columns = summarize(runs, columns, which, baseline, pair_mismatched)
    first = {dataset: cols[0] for dataset, cols in table_columns.items()}
    lines = curves(runs, per_table=first)
    if fmt == "table":
        render(tables, table_columns, console, baseline)
        for line in describe(notes) if notes else ():
            (console.print if console is not None else print)(line)
        if show_curves:
            for dataset, (split, metric) in first.items():
                render_curves({dataset: lines[dataset]}, split, metric, console)
    else:
        sys.stdout.write(export(tables, table_columns, fmt, baseline))
    payload = {"which": which, "columns": {d: [list(c) for c in cols] for d, cols in table_columns.items()},
               "baseline": baseline, "tables": tables, "curves": lines}
    if notes is not None:
        payload["select"] = {"criterion": select, "methods": notes}
    try:
        files.write_text(root / "report.json", files.json_text(payload))
        bar_chart(tables, table_columns, root / "report.png")
        curve_plot(lines, first, root / "curves.png")
    except files.WriteError as exc:
        rundir.warn(f"the report was printed but not saved: {exc}")
    if log is not None:
        count = log_runs(runs, root, log)
        where = f" in {root / 'tensorboard'}" if log == "tensorboard" else ""
        print(f"logged {count} finished run(s) to {log}{where}", file=sys.stderr)
    return tables
