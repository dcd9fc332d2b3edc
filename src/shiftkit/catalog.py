"""What every config group offers, generated from the registries and the constructors' signatures:
``shiftkit list GROUP`` prints it, ``shiftkit list GROUP --markdown`` writes the page of docs/options/.

>>> entry = next(e for e in entries("loss") if e.name == "poly")
>>> [(o.key, o.type, o.default) for o in entry.options][:2]
[('alpha', 'float', 1.0), ('beta', 'float', 1.0)]
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from typing import Any, List

from .config import GROUPS, schema
from .errors import ShiftkitError

#: What each group is, in one line (the header of its listing).
ABOUT = {
    "data": "datasets and protocols (data=NAME data.OPTION=VALUE)",
    "model": "models mapping a batch to logits (model=NAME model.OPTION=VALUE)",
    "loss": "per-example losses (loss=NAME loss.OPTION=VALUE)",
    "weighting": "per-example weights of the losses (weighting=NAME weighting.OPTION=VALUE)",
    "sampler": "which examples enter a batch (sampler=NAME sampler.OPTION=VALUE)",
    "optim": "optimizers and learning-rate schedules (optim=NAME optim.OPTION=VALUE)",
    "logger": "experiment tracking (logger=NAME logger.OPTION=VALUE)",
    "procedure": "how a run trains: one fit, or several phases (procedure=NAME procedure.OPTION=VALUE)",
    "augment": "augmentation policies before the model, fixed or learned (augment=NAME augment.OPTION=VALUE)",
}


@dataclasses.dataclass
class Option:
    key: str
    type: str
    default: Any


@dataclasses.dataclass
class Entry:
    name: str
    summary: str
    options: List[Option]


def _type_name(tp: Any) -> str:
    """``Optional[str]``, ``List[int]``, ``float``: an annotation as a user reads it."""
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    text = re.sub(r"\btyping\.", "", str(tp))
    return text.replace("NoneType", "None")


#: Words after which a full stop does not end a sentence.
_ABBREVIATIONS = ("al", "e.g", "i.e", "cf", "vs", "Fig", "Eq", "resp")
_LONGEST = 160
#: Groups whose every name has an entry ``<group>-<name>`` in docs/METHODS.md (a test keeps it so).
REFERENCED = ("data", "model", "loss", "weighting", "sampler", "optim")
#: A docstring's citation of the method reference: the listing links each name's entry instead.
_CITATION = re.compile(r"\s*\(docs/METHODS\.md#[\w-]+\)|[;,]\s*docs/METHODS\.md#[\w-]+|docs/METHODS\.md#[\w-]+[;,]\s*")


def summary(obj: Any) -> str:
    """The first sentence of ``obj``'s docstring, on one line (a full stop inside parentheses or after an
    abbreviation does not end it), at most 160 characters.

    >>> summary(type("T", (), {"__doc__": "LDAM of Cao et al. (NeurIPS 2019). Margins per class."}))
    'LDAM of Cao et al. (NeurIPS 2019).'
    >>> summary(type("T", (), {"__doc__": "CE (docs/METHODS.md#loss-ce), per example; LA (Menon; docs/METHODS.md#loss-la)."}))
    'CE, per example; LA (Menon).'
    """
    doc = inspect.getdoc(obj) or ""
    paragraph = _CITATION.sub("", " ".join(doc.strip().split("\n\n")[0].split()))
    depth, end = 0, len(paragraph)
    for i, char in enumerate(paragraph):
        depth += {"(": 1, "[": 1, ")": -1, "]": -1}.get(char, 0)
        if char == "." and depth <= 0 and paragraph[i + 1 : i + 2] in ("", " "):
            if not paragraph[:i].endswith(_ABBREVIATIONS):
                end = i + 1
                break
    sentence = paragraph[:end].rstrip(":;") or "(no description)"
    if len(sentence) > _LONGEST:
        sentence = sentence[: _LONGEST - 1].rsplit(" ", 1)[0] + "…"
    return sentence


def _registry(group: str):
    if group not in GROUPS:
        raise ShiftkitError(f"unknown group '{group}'; choose one of: {', '.join(GROUPS)}")
    return GROUPS[group]


def _options(group: str, name: str) -> List[Option]:
    out = []
    for f in dataclasses.fields(schema(group, name)):
        if f.name == "name":
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "(required)"
        out.append(Option(f.name, _type_name(f.type), default))
    return out


def entries(group: str) -> List[Entry]:
    """Every name of ``group`` with its summary and own options (without the shared ones)."""
    registry = _registry(group)
    shared = set(registry.shared_options())
    return [Entry(name, summary(registry.get(name)), [o for o in _options(group, name) if o.key not in shared])
            for name in registry.names()]


def shared(group: str) -> List[Option]:
    """The options every name of ``group`` takes (models: weights, freeze; data: features_from, ...)."""
    registry = _registry(group)
    if not registry.names():
        return []
    keys = set(registry.shared_options())
    return [o for o in _options(group, registry.names()[0]) if o.key in keys]


def _value(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def reference(group: str, name: str) -> str:
    """The anchor of a name's entry in docs/METHODS.md (``""`` for groups it does not cover)."""
    return f"{group}-{name}" if group in REFERENCED else ""


def text(group: str) -> str:
    """The plain-text listing of ``group`` (``shiftkit list GROUP``)."""
    lines = [f"{group}: {ABOUT.get(group, '')}"]
    if group in REFERENCED:
        lines.append(f"  formulas, defaults and sources: docs/METHODS.md#{group}-NAME")
    common = shared(group)
    if common:
        lines.append(f"  every {group} also takes: " + ", ".join(f"{o.key}: {o.type} = {_value(o.default)}"
                                                              for o in common))
    for entry in entries(group):
        lines.append(f"  {entry.name}: {entry.summary}")
        listed = ", ".join(f"{o.key}: {o.type} = {_value(o.default)}" for o in entry.options)
        lines.append(f"      {listed or '(no options)'}")
    return "\n".join(lines)


def markdown(group: str) -> str:
    """The docs/options/GROUP.md page: a section per name with a table of its options."""
    lines = [f"# `{group}`: {ABOUT.get(group, '')}", "",
             f"Generated by `shiftkit list {group} --markdown`; do not edit by hand.", ""]
    common = shared(group)
    if common:
        lines += [f"Every {group} also takes:", "", "| option | type | default |", "|---|---|---|"]
        lines += [f"| `{o.key}` | `{o.type}` | `{_value(o.default)}` |" for o in common] + [""]
    for entry in entries(group):
        anchor = reference(group, entry.name)
        lines += [f"## `{entry.name}`", "", entry.summary, ""]
        if anchor:
            lines += [f"Formula, defaults and sources: [method reference](../METHODS.md#{anchor}).", ""]
        if entry.options:
            lines += ["| option | type | default |", "|---|---|---|"]
            lines += [f"| `{o.key}` | `{o.type}` | `{_value(o.default)}` |" for o in entry.options]
        else:
            lines.append("No options.")
        lines.append("")
    return "\n".join(lines)
