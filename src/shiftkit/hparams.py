"""Seeded random hyperparameter search over each method's documented space (docs/METHODS.md#search).

Every registered class may declare ``search_space = {"option": "FORM", ...}``, where ``FORM`` is one of
``loguniform(lo, hi)``, ``uniform(lo, hi)``, ``intuniform(lo, hi)``, ``intloguniform(lo, hi)`` (integers,
both ends included) or ``choice(a, b, ...)``. A method of a search is what ``shiftkit sweep --methods``
names: a registered loss, weighting, sampler or procedure (``group_dro``, ``la``, ``jtt``), several joined
by ``+`` (``poly+iw``), an experiment preset (``autobalance``), or explicit overrides joined by ``+``
(``loss=vs+weighting=group_dro``). Its space is the spaces of the names its config chooses in the method
groups and, with ``tune="all"`` (the default), the optimizer's (learning rate and weight decay).

Trial 0 is the defaults (DomainBed's ``(default, random)`` pair per option); trial ``t > 0`` draws each
option from its own generator seeded by ``(search seed, method, trial, option)``, so a trial's values do not
depend on which other trials or options exist: ``--trials 32`` repeats the first 16 trials of ``--trials 16``
and their finished runs are skipped. Keys the user sets on the command line are held fixed, not searched.
Every seed of a trial shares its values, so that model selection averages a setting over seeds.

>>> draw({"weighting.eta": "loguniform(0.001, 0.1)"}, "group_dro", trial=0)
{}
>>> value = draw({"weighting.eta": "loguniform(0.001, 0.1)"}, "group_dro", trial=3)["weighting.eta"]
>>> 0.001 <= value <= 0.1 and value == draw({"weighting.eta": "loguniform(0.001, 0.1)"}, "group_dro", 3)["weighting.eta"]
True
>>> parse("choice(1, 2, 4)")(np.random.RandomState(0)) in (1, 2, 4)
True
"""

from __future__ import annotations

import ast
import hashlib
import math
import re
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from .errors import ShiftkitError

#: The config groups whose choices make up a method (their spaces are searched).
METHOD_GROUPS = ("loss", "weighting", "sampler", "procedure")
_FORM = re.compile(r"^\s*(loguniform|uniform|intuniform|intloguniform|choice)\s*\((.*)\)\s*$")

__all__ = ["METHOD_GROUPS", "draw", "method_overrides", "parse", "plan", "space", "trial_overrides"]


def parse(spec: str) -> Callable[[np.random.RandomState], Any]:
    """The sampler a ``FORM`` string stands for (module docstring); a malformed one is a one-line error."""
    found = _FORM.match(str(spec))
    try:
        args = list(ast.literal_eval(f"[{found.group(2)}]")) if found else None
    except (ValueError, SyntaxError):
        args = None
    if not found or not args:
        raise ShiftkitError(f"search space '{spec}' is not loguniform(lo, hi), uniform(lo, hi), intuniform(lo, hi), "
                            "intloguniform(lo, hi) or choice(a, b, ...)")
    form = found.group(1)
    if form == "choice":
        return lambda rng: args[int(rng.randint(len(args)))]
    if len(args) != 2 or not all(isinstance(a, (int, float)) for a in args) or not args[0] <= args[1]:
        raise ShiftkitError(f"search space '{spec}' needs two numbers lo <= hi")
    lo, hi = float(args[0]), float(args[1])
    if form.endswith("loguniform") and lo <= 0:
        raise ShiftkitError(f"search space '{spec}': a log-uniform range must be positive")
    if form == "uniform":
        return lambda rng: _round(rng.uniform(lo, hi))
    if form == "loguniform":
        return lambda rng: _round(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    if form == "intuniform":
        return lambda rng: int(rng.randint(int(lo), int(hi) + 1))
    return lambda rng: int(min(hi, max(lo, round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))))


def _round(value: float) -> float:
    """Four significant digits: the value a run's config, folder label and report show."""
    return float(f"{value:.4g}")


def _seed(*parts: Any) -> int:
    """A generator seed from ``parts`` that is the same in every process and version (not ``hash()``)."""
    return int(hashlib.md5(repr(parts).encode()).hexdigest(), 16) % (2**31)


def draw(space_: Dict[str, str], method: str, trial: int, seed: int = 0) -> Dict[str, Any]:
    """Trial ``trial``'s values of ``space_`` (``{key: FORM}``) for ``method``: ``{}`` for trial 0, the
    defaults; else one draw per key from its own generator (module docstring)."""
    if trial == 0:
        return {}
    return {key: parse(spec)(np.random.RandomState(_seed(seed, method, trial, key))) for key, spec in sorted(space_.items())}


def space(group: str, name: str) -> Dict[str, str]:
    """The ``search_space`` a registered name declares, keyed ``group.option`` (``{}`` where it has none)."""
    from .config_schema import GROUPS

    declared = getattr(GROUPS[group].get(name), "search_space", None) or {}
    for spec in declared.values():
        parse(spec)
    return {f"{group}.{option}": spec for option, spec in declared.items()}


def _find(name: str) -> List[str]:
    from .config import experiments
    from .config_schema import GROUPS

    if name in experiments():
        return [f"experiment={name}"]
    found = [g for g in (*METHOD_GROUPS, "optim") if name in GROUPS[g]]
    if len(found) != 1:
        where = f"it is a {' and a '.join(found)}: write {' or '.join(f'{g}={name}' for g in found)}" if found else (
            "it is no preset, loss, weighting, sampler or procedure (shiftkit list)")
        raise ShiftkitError(f"--methods: cannot tell which method '{name}' is; {where}")
    return [f"{found[0]}={name}"]


def method_overrides(method: str) -> List[str]:
    """The overrides that choose ``method`` (module docstring), e.g. ``poly+iw`` -> ``loss=poly weighting=iw``."""
    parts = [p.strip() for p in method.split("+")]
    if not method.strip() or not all(parts):
        raise ShiftkitError(f"--methods: '{method}' is not a method name (names joined by '+')")
    chosen = [o for p in parts for o in ([p] if "=" in p else _find(p))]
    groups = [o.split("=", 1)[0] for o in chosen]
    twice = sorted({g for g in groups if groups.count(g) > 1})
    if twice:
        raise ShiftkitError(f"--methods: '{method}' chooses {' and '.join(twice)} more than once")
    return chosen


def _given(overrides: Sequence[str]) -> set:
    return {o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o}


def method_space(cfg: Any, tune: str, fixed: Sequence[str]) -> Dict[str, str]:
    """The space searched for a composed config: its method groups' (and, with ``tune="all"``, the
    optimizer's), less the keys in ``fixed``."""
    if tune not in ("method", "all"):
        raise ShiftkitError(f"--tune must be 'method' or 'all', got '{tune}'")
    groups = (*METHOD_GROUPS, "optim") if tune == "all" else METHOD_GROUPS
    out: Dict[str, str] = {}
    for group in groups:
        out.update(space(group, cfg[group]["name"]))
    return {k: v for k, v in out.items() if k not in fixed}


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, str) else str(value)


def trial_overrides(values: Dict[str, Any]) -> List[str]:
    """A trial's values as ``key=value`` overrides."""
    return [f"{key}={_text(value)}" for key, value in values.items()]


def plan(methods: Sequence[str], trials: int, seeds: Sequence[int], overrides: Sequence[str], tune: str = "all",
         search_seed: int = 0) -> List[Dict[str, Any]]:
    """Every run of a search, in order (method, trial, seed): ``{"method", "trial", "seed", "values",
    "overrides"}``. Bad methods, spaces or counts are refused before anything is composed twice."""
    from .config import compose

    if trials < 1:
        raise ShiftkitError(f"--trials must be >= 1, got {trials}")
    if not seeds:
        raise ShiftkitError("--seeds must name at least one seed")
    if not methods:
        raise ShiftkitError("--methods must name at least one method")
    fixed = _given(overrides)
    if "seed" in fixed:
        raise ShiftkitError("shiftkit sweep sets seed itself (--seeds); leave seed= out")
    runs = []
    for method in methods:
        chosen = method_overrides(method)
        searched = method_space(compose([*overrides, *chosen]), tune, fixed | _given(chosen))
        for trial in range(trials):
            values = draw(searched, method, trial, search_seed)
            for seed in seeds:
                runs.append({"method": method, "trial": trial, "seed": seed, "values": values,
                             "overrides": [*overrides, *chosen, *trial_overrides(values), f"seed={seed}"]})
    return runs


def seeds_of(text: Optional[str]) -> List[int]:
    """``--seeds``: a count (``3`` is seeds 0, 1, 2) or a comma list (``0,5,9``)."""
    try:
        if text is None:
            return [0]
        if "," in text:
            return [int(s) for s in text.split(",")]
        count = int(text)
    except ValueError:
        raise ShiftkitError(f"--seeds must be a count or a comma list of seeds, got '{text}'") from None
    if count < 1:
        raise ShiftkitError(f"--seeds must be a count >= 1 or a comma list of seeds, got '{text}'")
    return list(range(count))
