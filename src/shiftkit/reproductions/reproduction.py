"""``shiftkit reproduce NAME``: a paper's figure or table in one command, our numbers beside the paper's.

A reproduction is one registered :class:`Reproduction` subclass in one file of this package. It
declares its settings per scale and, given a :class:`Context`, computes a :class:`Summary`: the key
figures (``summary.json``), rows of "quantity | paper | ours", the paper's claims with whether each holds
here (decided from the measured numbers, never written in advance), its figures and notes.

Scales (``--scale``):

- ``tiny``: seconds; checks that every part runs (the tests use it); its numbers mean nothing.
- ``quick``: within 10 minutes on 2 CPU cores: smaller data, models, epochs or seeds, stated in the
  summary's settings.
- ``paper``: the papers' epochs, seeds and sizes where our data allow (a GPU, or a long CPU run).

Any setting can be changed with ``--set key=value`` (the value's type must match the default's).
Training runs go through the one loop and land in a runs directory (``<out>/runs`` unless given) as
ordinary run directories, so a repeated command skips the runs already finished, and reproductions
that share a runs directory share their runs (Figures 3 and 4 of [W] train the same models). Figures and summaries are written to a staging
directory and moved into ``<out>`` only when the whole reproduction has finished: a failed or interrupted
command never leaves a summary that mixes two runs.

One module: the base class, its context, the command that runs a reproduction and the summary it
writes are the one framework that every reproduction file uses.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .. import files
from ..errors import ShiftkitError
from ..registry import Registry
from ..report import mean_sem
# Re-exported for the reproductions, beside by_method and cell: p-values as tables print them, and the
# one-sided paired t-test over shared seeds (docs/METHODS.md#statistics).
from ..report import p_text, paired_p as paired  # noqa: F401

SCALES = ("tiny", "quick", "paper")
#: Said on every figure of a ``tiny`` run.
TINY_NOTE = "tiny scale: a check that every part runs; its numbers mean nothing"
REPRODUCTIONS = Registry("reproduction")
register = REPRODUCTIONS.register
names = REPRODUCTIONS.names

#: summary.json keys the framework writes; a reproduction's key figures must not reuse them.
_META = ("name", "title", "source", "scale", "settings", "seconds", "device", "amp", "precision", "command",
         "environment", "claims", "rows", "figures", "notes")

#: What a run's recorded ``train.amp`` trained in, as summaries name it.
PRECISION_NAMES = {"none": "float32", "bf16": "bfloat16"}


@dataclass
class Claim:
    """A claim of the paper and whether it holds in this run (``None``: not decidable at this scale)."""

    text: str
    holds: Optional[bool]
    evidence: str


@dataclass
class Summary:
    """What a reproduction found: ``key`` figures (top-level keys of ``summary.json``), ``rows`` of
    ``(quantity, paper, ours)`` for ``summary.md``, ``claims``, ``figures`` (PNG names in the output
    directory) and free-text ``notes``."""

    key: Dict[str, Any]
    rows: List[Tuple[str, str, str]] = field(default_factory=list)
    claims: List[Claim] = field(default_factory=list)
    figures: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)


class Reproduction:
    """Base class of a reproduction: set ``title``, ``source`` (paper and its docs/METHODS.md anchors), ``keys`` (the
    key figures its summary promises) and ``scales`` (``{"tiny": {...}, "quick": {...}, "paper":
    {...}}``, every scale with the same keys), and implement :meth:`run`."""

    title: str = ""
    source: str = ""
    keys: Tuple[str, ...] = ()
    scales: Dict[str, Dict[str, Any]] = {}

    def run(self, ctx: "Context", settings: Dict[str, Any]) -> Summary:
        raise NotImplementedError


@dataclass
class Context:
    """Where and how a reproduction runs: its output directory, the device of its training runs, and a
    console for progress. Figures go through :meth:`save_figure`, training runs through :meth:`train`."""

    name: str
    scale: str
    out: Path
    device: str = "auto"
    console: Any = None
    runs: Optional[Path] = None
    amp: str = "auto"
    staging: Path = field(init=False)
    #: The precisions its training runs trained in (``train.amp=auto`` resolves per model family).
    precisions: set = field(init=False, default_factory=set)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.runs = Path(self.runs) if self.runs is not None else self.out / "runs"
        self.staging = self.out / ".staging"
        if self.console is None:
            from rich.console import Console

            self.console = Console(stderr=True, highlight=False, soft_wrap=True)

    def log(self, message: str) -> None:
        self.console.print(f"{self.name}: {message}")

    def figure_path(self, filename: str) -> Path:
        """Where to write figure ``filename`` now (it moves into ``out`` when the reproduction ends)."""
        self.staging.mkdir(parents=True, exist_ok=True)
        return self.staging / filename

    @property
    def note(self) -> str:
        """What figure titles add at this scale: at ``tiny``, that the numbers mean nothing."""
        return f" [{TINY_NOTE}]" if self.scale == "tiny" else ""

    def save_figure(self, fig, filename: str) -> str:
        """Save a matplotlib figure as ``filename`` (PNG) and close it; returns the name. A ``tiny``-scale
        figure is marked as such across its middle."""
        from ..plots import _pyplot

        if self.scale == "tiny":
            fig.text(0.5, 0.5, TINY_NOTE.replace("; ", "\n"), ha="center", va="center", rotation=20,
                     fontsize=18, color="crimson", alpha=0.45, zorder=100)
        fig.savefig(self.figure_path(filename), dpi=120)
        _pyplot().close(fig)
        return filename

    def train(self, override_lists: List[List[str]], label: str = "runs", diverged_ok: bool = False) -> List[dict]:
        """Train runs through the one loop (:func:`shiftkit.sweep.run_many`), in the runs directory on this
        context's device; returns their ``run.json`` records, in order. Finished runs are skipped. With
        ``diverged_ok`` (a search), a run whose training diverged is ``{"failed": ..., "diverged": True}``."""
        from ..sweep import run_many

        extra = [f"out={self.runs}", f"device={self.device}", f"scale={self.scale}", f"train.amp={self.amp}"]
        records = run_many([[*o, *extra] for o in override_lists], label=f"{self.name}: {label}",
                           diverged_ok=diverged_ok)
        self.precisions.update(r["config"]["train"]["amp"] for r in records if "train" in r.get("config", {}))
        return records

    def train_each(self, groups: Dict[str, List[List[str]]], label: str = "runs") -> Dict[str, List[dict]]:
        """:meth:`train` for several methods at once: ``{key: override lists}`` -> ``{key: records}``
        (every run is checked before any trains)."""
        records = self.train([o for lists in groups.values() for o in lists], label=label)
        out, start = {}, 0
        for key, lists in groups.items():
            out[key] = records[start : start + len(lists)]
            start += len(lists)
        return out


def settings_for(repro: Reproduction, scale: str, overrides: Sequence[str] = ()) -> Dict[str, Any]:
    """The scale's settings with ``key=value`` overrides, each parsed as YAML and checked against the
    type of the default."""
    import yaml

    if scale not in SCALES:
        raise ShiftkitError(f"unknown scale '{scale}'; choose one of: {', '.join(SCALES)}")
    settings = dict(repro.scales[scale])
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or key not in settings:
            raise ShiftkitError(
                f"--set takes key=value with a key among: {', '.join(sorted(settings))}; got '{item}'"
            )
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ShiftkitError(f"--set {key}: cannot parse '{text}'") from None
        settings[key] = _coerce(key, value, settings[key])
    return settings


def _coerce(key: str, value: Any, default: Any) -> Any:
    if isinstance(default, bool) or default is None:
        ok = isinstance(value, bool) if isinstance(default, bool) else True
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, (list, tuple)):
        ok = isinstance(value, list)
    else:
        ok = isinstance(value, type(default)) and not isinstance(value, bool)
    if not ok:
        raise ShiftkitError(f"--set {key}: expected a {type(default).__name__} like {default!r}, got {value!r}")
    return value


def reproduce(
    name: str,
    scale: str = "quick",
    out: Optional[Path] = None,
    device: str = "auto",
    overrides: Sequence[str] = (),
    console: Any = None,
    runs: Optional[Path] = None,
    amp: str = "auto",
) -> Summary:
    """Run reproduction ``name`` at ``scale`` into ``out`` (default :func:`default_out`) and
    write its figures, ``summary.md`` and ``summary.json`` there; training runs go to ``runs`` (default
    ``<out>/runs``); ``amp`` is every training run's ``train.amp``."""
    from ..environment import resolve_device

    repro = REPRODUCTIONS.get(name)()
    settings = settings_for(repro, scale, overrides)
    resolve_device(device)
    out = Path(out) if out is not None else default_out(name, scale)
    _check_scale(out, scale)
    ctx = Context(name, scale, out, device, console, runs, amp)
    shutil.rmtree(ctx.staging, ignore_errors=True)
    start = time.perf_counter()
    try:
        summary = repro.run(ctx, settings)
        seconds = time.perf_counter() - start
        _write(ctx, repro, settings, summary, seconds)
        for item in sorted(ctx.staging.iterdir()):
            item.replace(ctx.out / item.name)
    finally:
        shutil.rmtree(ctx.staging, ignore_errors=True)
    return summary


def default_out(name: str, scale: str) -> Path:
    """``results/reproduce/<name>`` at the ``quick`` scale, ``results/reproduce/<name>-<scale>`` at the
    others, so that a ``tiny`` check never replaces the figures of a real run."""
    return Path("results") / "reproduce" / (name if scale == "quick" else f"{name}-{scale}")


def _check_scale(out: Path, scale: str) -> None:
    """Refuse to write over the summary and figures of another scale."""
    try:
        found = json.loads((out / "summary.json").read_text()).get("scale")
    except (OSError, ValueError, AttributeError):
        return
    if found is not None and found != scale:
        raise ShiftkitError(f"{out} holds a {found}-scale reproduction; a {scale}-scale one would replace its "
                            f"figures: give another --out (or delete {out / 'summary.json'})")


def _write(ctx: Context, repro: Reproduction, settings: Dict[str, Any], summary: Summary, seconds: float) -> None:
    from ..environment import environment, resolve_device

    clash = sorted(set(summary.key) & set(_META))
    missing = sorted(set(repro.keys) - set(summary.key))
    if clash or missing:
        raise ValueError(f"key figures: {clash} clash with summary.json's own keys, {missing} are missing")
    payload = {
        "name": ctx.name,
        "title": repro.title,
        "source": repro.source,
        "scale": ctx.scale,
        "settings": settings,
        "seconds": round(seconds, 1),
        "device": resolve_device(ctx.device),
        "amp": ctx.amp,
        "precision": sorted(PRECISION_NAMES.get(amp, amp) for amp in ctx.precisions),
        "command": " ".join(["shiftkit", *sys.argv[1:]]) if sys.argv[1:2] == ["reproduce"] else None,
        "environment": environment(),
        **{k: files.finite(v) for k, v in summary.key.items()},
        "claims": [asdict(c) for c in summary.claims],
        "rows": [list(r) for r in summary.rows],
        "figures": summary.figures,
        "notes": summary.notes,
    }
    ctx.staging.mkdir(parents=True, exist_ok=True)
    (ctx.staging / "summary.json").write_text(json.dumps(payload, indent=2, allow_nan=False))
    (ctx.staging / "summary.md").write_text(markdown(payload))


def verdict(holds: Optional[bool]) -> str:
    return {True: "holds", False: "does not hold", None: "not decided"}[holds]


def _setting(value: Any) -> str:
    """A setting as written on a command line: lists of overrides space-separated, in brackets."""
    return f"[{' '.join(str(v) for v in value)}]" if isinstance(value, list) else str(value)


def markdown(payload: Dict[str, Any]) -> str:
    """``summary.md`` from the ``summary.json`` payload."""
    settings = ", ".join(f"{k}={_setting(v)}" for k, v in payload["settings"].items())
    lines = [
        f"# {payload['name']}: {payload['title']}",
        "",
        f"Source: {payload['source']}.",
        f"Scale `{payload['scale']}` ({settings}); {payload['seconds']:.0f} s on {payload['device']}"
        + (f", in {' and '.join(payload['precision'])}" if payload.get("precision") else "")
        + f" (train.amp={payload['amp']}).",
    ]
    if payload["command"]:
        lines.append(f"Command: `{payload['command']}`.")
    if payload["rows"]:
        lines += ["", "| quantity | paper | ours |", "|---|---|---|"]
        lines += [f"| {q} | {p} | {o} |" for q, p, o in payload["rows"]]
    if payload["claims"]:
        lines += ["", "## Claims", ""]
        lines += [f"- **{verdict(c['holds'])}**: {c['text']} ({c['evidence']})" for c in payload["claims"]]
    if payload["figures"]:
        lines += ["", "## Figures", ""] + [f"![{f}]({f})" for f in payload["figures"]]
    if payload["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in payload["notes"]]
    return "\n".join(lines) + "\n"


# Statistics over seeds for reproductions built from training runs (docs/METHODS.md#statistics).


def by_method(records: List[dict], split: str = "test", metric: str = "balanced_acc", which: str = "final"):
    """``{method label: {seed: value}}`` from run records, in order of first appearance."""
    out: Dict[str, Dict[int, float]] = {}
    for r in records:
        value = r[which][split].get(metric)
        if value is not None:
            out.setdefault(r["method"], {})[r["config"]["seed"]] = value
    return out


def cell(values: Dict[int, float], digits: int = 3, scale: float = 1.0) -> str:
    """``mean ± s.e.m.`` over seeds (just the mean for one seed)."""
    if not values:
        return "–"
    mean, sem = mean_sem([v * scale for v in values.values()])
    return f"{mean:.{digits}f} ± {sem:.{digits}f}" if sem is not None else f"{mean:.{digits}f}"


def mean(values: Dict[int, float]) -> float:
    return sum(values.values()) / len(values) if values else math.nan


