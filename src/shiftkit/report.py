"""Runs -> tables and figures: mean ± standard error of the mean over seeds (docs/METHODS.md#statistics).

``shiftkit report DIR`` reads every finished run under ``DIR`` (a ``run.json`` beside a ``done``
marker), groups runs that differ only in their seed and prints one table per dataset: methods as rows,
metrics as columns, ``mean ± s.e.m.`` with the s.e.m. the sample standard deviation over ``sqrt(n)``.
With a baseline it adds a one-sided paired t-test per method over the seeds both share (docs/METHODS.md#statistics:
"p (method > baseline)"). It writes ``report.json``, ``report.png`` (bars) and ``curves.png`` (the first
metric over evaluation epochs) into ``DIR``.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import files, labels, rundir
from .errors import ShiftkitError
from .metrics import LOWER_IS_BETTER, SCALAR_METRICS
from .plots import SHORT, bar_chart, curve_plot, seeds_text

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


def _training(config: dict) -> Dict[str, Any]:
    """The flattened config without the method, the seed and how it ran: what runs paired must share."""
    from .identity import EXECUTION_KEYS, comparable
    from .tracking import flatten

    flat = flatten(comparable(config, drop=(*EXECUTION_KEYS, *_NOT_TRAINING)))
    return {k: v for k, v in flat.items() if not any(k == s or k.startswith(s + ".") for s in METHOD_KEYS)}


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


def _cell(value: Optional[Tuple[float, Optional[float]]]) -> str:
    if value is None:
        return "–"
    mean, sem = value
    return f"{mean:.3f} ± {sem:.3f}" if sem is not None else f"{mean:.3f}"


def p_text(p: Optional[float]) -> str:
    """A p-value as tables print it: ``–`` when there is none, scientific notation below 1e-3."""
    if p is None:
        return "–"
    return "0" if p == 0 else (f"{p:.1e}" if p < 1e-3 else f"{p:.3f}")


def _base(rows: List[dict], baseline: str) -> str:
    """The method of a table that ``baseline`` named."""
    return next((r["method"] for r in rows if r.get("baseline")), baseline)


def _notes(rows: List[dict], columns: Sequence[Tuple[str, str]], baseline: Optional[str]) -> List[str]:
    """What a table's p column means, and which methods were not paired with the baseline and why."""
    if baseline is None:
        return []
    split, metric = columns[0]
    base = _base(rows, baseline)
    lines = [f"p: one-sided paired t-test over seeds, {split} {SHORT[metric]} better than {base}"]
    return lines + [f"{r['method']} is not paired with {base}: its training differs ({r['unpaired']}); "
                    "--pair-mismatched pairs them anyway" for r in rows if r.get("unpaired")]


def render(tables: Dict[str, List[dict]], columns: Dict[str, Sequence[Tuple[str, str]]], console=None,
           baseline=None) -> None:
    """Print each table with rich."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console()
    for dataset, rows in tables.items():
        cols = columns[dataset]
        console.print(Text(f"{dataset}: mean ± s.e.m. over {seeds_text(rows)}", style="italic"), soft_wrap=True)
        table = Table()
        table.add_column("method")
        for split, metric in cols:
            table.add_column(f"{split}\n{SHORT[metric]}", justify="right")
        if baseline is not None:
            table.add_column(f"p > {_base(rows, baseline)}", justify="right")
        for row in rows:
            cells = [_cell(row[f"{s}/{m}"]) for s, m in cols]
            if baseline is not None:
                cells.append("unpaired" if row.get("unpaired") else p_text(row["p"]))
            table.add_row(Text(row["method"]), *cells)  # labels hold [...]
        console.print(table)
        for line in _notes(rows, cols, baseline):
            console.print(Text(line), soft_wrap=True)


def _schedules(methods: Dict[str, list]) -> List[Dict[str, list]]:
    """Methods grouped by the epochs they were evaluated at, so that each table shows every method's
    evaluations (a 30-epoch run beside 100-epoch runs gets a table of its own)."""
    by: Dict[tuple, Dict[str, list]] = {}
    for method, points in methods.items():
        by.setdefault(tuple(p[0] for p in points), {})[method] = points
    return list(by.values())


def render_curves(curves_: Dict[str, Dict[str, list]], split: str, metric: str, console=None, at_most: int = 8) -> None:
    """Print the curves as tables of methods by (up to ``at_most``) evaluation epochs, always with the
    last; methods evaluated at other epochs get a table of their own."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console()
    for dataset, methods in curves_.items():
        for group in _schedules(methods):
            epochs = [p[0] for p in next(iter(group.values()))]
            stride = max(1, math.ceil(len(epochs) / at_most))
            shown = epochs[::-1][::stride][::-1]
            title = f"{dataset}: {split} {SHORT[metric]} by epoch (mean over seeds)"
            if len(epochs) > len(shown):
                title += f", {len(shown)} of {len(epochs)} evaluations"
            console.print(Text(title, style="italic"), soft_wrap=True)
            table = Table()
            table.add_column("method")
            for e in shown:
                table.add_column(str(e), justify="right")
            for method, points in group.items():
                at = {p[0]: p[1] for p in points}
                table.add_row(Text(method), *(f"{at[e]:.3f}" for e in shown))
            console.print(table)


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


#: Export formats of ``shiftkit report --format``.
FORMATS = ("table", "csv", "markdown", "latex")


def export(tables: Dict[str, List[dict]], columns: Dict[str, Sequence[Tuple[str, str]]], fmt: str,
           baseline: Optional[str] = None) -> str:
    """The tables as ``csv`` (one row per method, mean and s.e.m. in columns of their own), ``markdown`` or
    ``latex`` (``mean ± s.e.m.``, the best mean of each column in bold)."""
    if fmt == "csv":
        return _csv(tables, columns, baseline)
    if fmt not in ("markdown", "latex"):
        raise ShiftkitError(f"--format must be one of: {', '.join(FORMATS)}; got '{fmt}'")
    parts = []
    for dataset, rows in tables.items():
        cols = list(columns[dataset])
        best = {c: _best(rows, *c) for c in cols}
        head = ["method", *(f"{s} {SHORT[m]}" for s, m in cols)]
        head += [f"p > {_base(rows, baseline)}"] if baseline is not None else []
        body = []
        for row in rows:
            cells = [_styled(row[f"{s}/{m}"], best[(s, m)], fmt) for s, m in cols]
            if baseline is not None:
                cells.append("unpaired" if row.get("unpaired") else p_text(row["p"]))
            body.append([_escape(row["method"], fmt), *cells])
        title = f"{dataset}: mean ± s.e.m. over {seeds_text(rows)}"
        parts.append(_markdown(title, head, body) if fmt == "markdown" else _latex(title, head, body))
    return "\n".join(parts)


def _best(rows: List[dict], split: str, metric: str) -> Optional[float]:
    means = [row[f"{split}/{metric}"][0] for row in rows if row[f"{split}/{metric}"] is not None]
    if len(set(means)) < 2:  # one value, or all tied: nothing stands out
        return None
    return min(means) if metric in LOWER_IS_BETTER else max(means)


def _styled(value, best: Optional[float], fmt: str) -> str:
    if value is None:
        return "–"
    mean, sem = value
    text = f"{mean:.3f}" + (f" ± {sem:.3f}" if sem is not None else "")
    if fmt == "latex":
        inner = f"{mean:.3f}" + (rf" \pm {sem:.3f}" if sem is not None else "")
        return rf"$\mathbf{{{inner}}}$" if best is not None and mean == best else f"${inner}$"
    return f"**{text}**" if best is not None and mean == best else text


_LATEX_ESCAPES = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                  "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"}


def _escape(text: str, fmt: str) -> str:
    if fmt == "latex":
        return "".join(_LATEX_ESCAPES.get(c, c) for c in text).replace("±", r"$\pm$")
    return text.replace("|", r"\|")


def _markdown(title: str, head: List[str], body: List[List[str]]) -> str:
    lines = [f"**{_escape(title, 'markdown')}**", "", "| " + " | ".join(head) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"


def _latex(title: str, head: List[str], body: List[List[str]]) -> str:
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{_escape(title, 'latex')}}}",
             r"\begin{tabular}{l" + "r" * (len(head) - 1) + "}", r"\toprule",
             " & ".join(_escape(h, "latex") for h in head) + r" \\", r"\midrule"]
    lines += [" & ".join(cells) + r" \\" for cells in body]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def _csv(tables: Dict[str, List[dict]], columns: Dict[str, Sequence[Tuple[str, str]]], baseline) -> str:
    import csv
    import io

    every = []
    for cols in columns.values():
        every += [c for c in cols if c not in every]
    handle = io.StringIO()
    writer = csv.writer(handle, lineterminator="\n")
    writer.writerow(["data", "method", "seeds", *(f"{s}/{m}{part}" for s, m in every for part in ("", "_sem")),
                     *(["p", "unpaired"] if baseline is not None else [])])
    for dataset, rows in tables.items():
        for row in rows:
            cells = []
            for s, m in every:
                value = row.get(f"{s}/{m}")
                cells += ["", ""] if value is None else [repr(value[0]), "" if value[1] is None else repr(value[1])]
            extra = [] if baseline is None else ["" if row["p"] is None else repr(row["p"]), row.get("unpaired", "")]
            writer.writerow([dataset, row["method"], row["n"], *cells, *extra])
    return handle.getvalue()


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
) -> Dict[str, List[dict]]:
    """Load, summarize, print and save (``report.json``, ``report.png``, ``curves.png``) the runs under
    ``root``; ``fmt`` prints the tables as ``csv``, ``markdown`` or ``latex`` instead (on stdout, for a
    file or a paper). Where ``root`` cannot be written (a read-only results folder), the tables are still
    printed and one warning says what was not saved. ``log`` also sends every run to that tracker
    (:func:`log_runs`)."""
    if which not in ("selected", "final"):
        raise ShiftkitError(f"--which must be 'selected' or 'final', got '{which}'")
    if fmt not in FORMATS:
        raise ShiftkitError(f"--format must be one of: {', '.join(FORMATS)}; got '{fmt}'")
    root = Path(root)
    runs = load_runs(root)
    tables, table_columns = summarize(runs, columns, which, baseline, pair_mismatched)
    first = {dataset: cols[0] for dataset, cols in table_columns.items()}
    lines = curves(runs, per_table=first)
    if fmt == "table":
        render(tables, table_columns, console, baseline)
        if show_curves:
            for dataset, (split, metric) in first.items():
                render_curves({dataset: lines[dataset]}, split, metric, console)
    else:
        sys.stdout.write(export(tables, table_columns, fmt, baseline))
    payload = {"which": which, "columns": {d: [list(c) for c in cols] for d, cols in table_columns.items()},
               "baseline": baseline, "tables": tables, "curves": lines}
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
