"""Command-line overrides: parsing them (one-line errors), refusing a key given twice, rewording
OmegaConf's errors on one line, today's terms for earlier versions' keys, quoting a value, and expanding
a sweep into its runs."""

from __future__ import annotations

import dataclasses
import importlib.resources
import itertools
import re
from typing import Dict, List, Optional

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from .config_schema import GROUPS, CheckpointConf, Config, DiagnosticsConf, TrainConf
from .errors import ShiftkitError


def one_line(exc: BaseException) -> str:
    """The most specific message in an exception chain, on one line."""
    chain, e = [], exc
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    for e in chain:
        if isinstance(e, OmegaConfBaseException) and getattr(e, "full_key", None):
            msg = str(getattr(e, "msg", e) or e).strip().splitlines()[0]
            return _unknown_option(e.full_key, msg) or f"{e.full_key}: {msg}"
    for e in reversed(chain):  # the deepest exception that says something (ANTLR's may say "None")
        lines = [line.strip() for line in str(e).strip().splitlines() if line.strip() not in ("", "None")]
        if lines:
            return lines[0]
    return type(chain[-1]).__name__


def _unknown_option(full_key: str, msg: str) -> Optional[str]:
    """Reword OmegaConf's "Key 'x' not in 'loss_ce'" as a list of the options that exist."""
    if re.fullmatch(r"Key '\w+' is not in struct", msg):
        return f"{full_key} is a new key: add it with a leading '+', as in +{full_key}=..."
    match = re.fullmatch(r"Key '(\w+)' not in '(\w+)'", msg)
    if match is None:
        return None
    key, owner = match.groups()
    fixed = {
        "Config": ("top-level config", Config),
        "TrainConf": ("train", TrainConf),
        "DiagnosticsConf": ("diagnostics", DiagnosticsConf),
        "CheckpointConf": ("checkpoint", CheckpointConf),
    }
    if owner in fixed:
        where, node = fixed[owner]
        return f"{where} has no key '{key}'; its keys: {', '.join(f.name for f in dataclasses.fields(node))}"
    group, _, name = owner.partition("_")
    if group not in GROUPS or name not in GROUPS[group]:
        return None
    listed = ", ".join(GROUPS[group].options(name)) or "none"
    return f"{group} '{name}' has no option '{key}'; its options: {listed}"


def parse_overrides(overrides: List[str]) -> list:
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as exc:
        odd = next((o for o in overrides if re.search(r"=.*[()\[\]{}, ]", o) and "'" not in o and '"' not in o), None)
        hint = ""
        if odd is not None:
            key, _, value = odd.partition("=")
            hint = f"; a value with brackets, commas or spaces needs quotes: {key}='{value}'"
        raise ShiftkitError(f"cannot parse overrides: {one_line(exc)}{hint}") from None
    for o in parsed:
        if not o.key_or_group:
            raise ShiftkitError(f"override '{o.input_line}' has no key; write key=value")
    return parsed


def check_repeated(overrides: List[str]) -> None:
    """Refuse a key given twice on one command line (``seed=1 seed=2``): Hydra would keep the last one
    silently, and the command would not say what it runs."""
    seen: Dict[str, str] = {}
    for o in parse_overrides(list(overrides)):
        key = o.key_or_group if o.package is None else f"{o.key_or_group}@{o.package}"
        if key in seen:
            raise ShiftkitError(f"{key} is set twice ('{seen[key]}' and '{o.input_line}'); give each key once")
        seen[key] = o.input_line


def experiments() -> List[str]:
    """Names of the presets in ``conf/experiment/`` (``experiment=NAME``)."""
    folder = importlib.resources.files("shiftkit.conf") / "experiment"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def legacy_overrides(overrides: List[str]) -> List[str]:
    """Overrides of earlier versions in today's terms: AutoBalance's search was ``search.enabled=true`` with
    its settings under ``search.*``; it is now a procedure, ``procedure=autobalance`` with ``procedure.*``.

    >>> legacy_overrides(["search.enabled=true", "search.every=2", "+search.objective_options.lam=1", "seed=0"])
    ['procedure=autobalance', 'procedure.every=2', '+procedure.objective_options.lam=1', 'seed=0']
    >>> legacy_overrides(["search.enabled=false,true"])
    ['procedure=plain,autobalance']
    """
    out = []
    for line in overrides:
        prefix = line[: len(line) - len(line.lstrip("+~"))]
        body = line[len(prefix):]
        key, sep, value = body.partition("=")
        if key == "search.enabled" and sep and not prefix:
            names = {"true": "autobalance", "false": "plain"}
            values = [v.strip().lower() for v in value.split(",")]
            odd = next((v for v in values if v not in names), None)
            if odd is not None:
                raise ShiftkitError(f"search.enabled takes true or false (today procedure=autobalance or plain), got '{odd}'")
            out.append("procedure=" + ",".join(names[v] for v in values))
        elif key.startswith("search."):
            out.append(f"{prefix}procedure.{key[len('search.'):]}{sep}{value}")
        else:
            out.append(line)
    return out


def quoted(value: str) -> str:
    """``value`` as a quoted override value, for paths that hold ``(``, ``,``, ``=`` or spaces (run folders).

    >>> quoted("runs/data(n=1,m=2)/w.safetensors")
    "'runs/data(n=1,m=2)/w.safetensors'"
    """
    return "'" + value.replace("'", "\\'") + "'"


def expand_sweep(overrides: List[str]) -> List[List[str]]:
    """The runs of a multirun: the cartesian product of every swept override (Hydra's basic sweeper).

    >>> expand_sweep(["loss=ce,poly", "seed=range(2)"])
    [['loss=ce', 'seed=0'], ['loss=ce', 'seed=1'], ['loss=poly', 'seed=0'], ['loss=poly', 'seed=1']]
    """
    choices = []
    for o in parse_overrides(list(overrides)):
        if o.is_sweep_override():
            key = o.get_key_element()
            choices.append([f"{key}={v}" for v in o.sweep_string_iterator()])
            if not choices[-1]:
                raise ShiftkitError(f"the sweep '{o.input_line}' has no values; a sweep needs at least one")
        else:
            choices.append([o.input_line])
    return [list(c) for c in itertools.product(*choices)]

