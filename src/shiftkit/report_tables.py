"""Tables of a report: printed with rich, or exported as CSV, Markdown or LaTeX, for
:func:`shiftkit.report.report`."""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

from .errors import ShiftkitError
from .metrics import LOWER_IS_BETTER
from .plots import SHORT, seeds_text


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
        chosen = any("chosen" in row for row in rows)
        if chosen:
            table.add_column("chosen setting")
        for row in rows:
            cells = [_cell(row[f"{s}/{m}"]) for s, m in cols]
            if baseline is not None:
                cells.append("unpaired" if row.get("unpaired") else p_text(row["p"]))
            extra = [Text(row.get("chosen", ""))] if chosen else []
            table.add_row(Text(row["method"]), *cells, *extra)  # labels hold [...]
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
        chosen = any("chosen" in row for row in rows)
        head += ["chosen setting"] if chosen else []
        body = []
        for row in rows:
            cells = [_styled(row[f"{s}/{m}"], best[(s, m)], fmt) for s, m in cols]
            if baseline is not None:
                cells.append("unpaired" if row.get("unpaired") else p_text(row["p"]))
            if chosen:
                cells.append(_escape(row.get("chosen", ""), fmt))
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
    chosen = any("chosen" in row for rows in tables.values() for row in rows)
    handle = io.StringIO()
    writer = csv.writer(handle, lineterminator="\n")
    writer.writerow(["data", "method", "seeds", *(f"{s}/{m}{part}" for s, m in every for part in ("", "_sem")),
                     *(["p", "unpaired"] if baseline is not None else []), *(["chosen"] if chosen else [])])
    for dataset, rows in tables.items():
        for row in rows:
            cells = []
            for s, m in every:
                value = row.get(f"{s}/{m}")
                cells += ["", ""] if value is None else [repr(value[0]), "" if value[1] is None else repr(value[1])]
            extra = [] if baseline is None else ["" if row["p"] is None else repr(row["p"]), row.get("unpaired", "")]
            extra += [row.get("chosen", "")] if chosen else []
            writer.writerow([dataset, row["method"], row["n"], *cells, *extra])
    return handle.getvalue()
