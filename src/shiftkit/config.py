"""Hydra configuration: groups mirror the registries, schemas come from the constructors' signatures.

Each registered name becomes a structured config in its group (``loss/poly``, ``weighting/iw``, ...)
whose fields are the constructor's keyword hyperparameters, typed by its annotations and defaulted by its
defaults, plus ``name``. A new method therefore needs no config file: its decorator is enough, and a typo
or a value of the wrong type is refused before anything runs. Top-level keys: ``data``,
``model``, ``loss``, ``weighting``, ``sampler``, ``optim``, ``train``, ``seed``, ``device``, ``out`` and an
optional run label ``name``. The schemas live in :mod:`shiftkit.config_schema`, parsing
overrides and expanding sweeps in :mod:`shiftkit.config_overrides`; this module composes one run's
configuration and checks it.

>>> cfg = compose(["loss=poly", "weighting=iw", "weighting.exponent=1.5", "seed=3"])
>>> cfg.loss.name, cfg.loss.alpha, cfg.weighting.exponent, cfg.seed
('poly', 1.0, 1.5, 3)
>>> compose(["loss=nope"])  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
shiftkit.errors.ShiftkitError: unknown loss 'nope'; choose one of: autobalance, cdt, ce, ...
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, List, Optional

from hydra import compose as hydra_compose
from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from . import precision
from .config_overrides import (  # noqa: F401
    _unknown_option,
    check_repeated,
    expand_sweep,
    experiments,
    legacy_overrides,
    one_line,
    parse_overrides,
    quoted,
)
from .config_schema import (  # noqa: F401
    GROUPS,
    CheckpointConf,
    Config,
    DiagnosticsConf,
    TrainConf,
    register_configs,
    schema,
)
from .errors import ShiftkitError


def _check_added_keys(parsed: list, cfg: DictConfig) -> None:
    """Refuse ``+key=value`` where ``key`` is not a field of its (structured) parent: Hydra would add it,
    and the run would carry a setting that nothing reads. Free-form dicts (``procedure.objective_options``)
    take new keys."""
    for o in parsed:
        if not (o.is_add() or o.is_force_add()) or o.key_or_group in GROUPS or "@" in o.key_or_group:
            continue
        parent, _, key = o.key_or_group.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        owner = OmegaConf.get_type(node) if isinstance(node, DictConfig) else None
        if owner is None or not dataclasses.is_dataclass(owner):
            continue
        if key not in {f.name for f in dataclasses.fields(owner)}:
            known = _unknown_option(o.key_or_group, f"Key '{key}' not in '{owner.__name__}'")
            raise ShiftkitError(f"'{o.input_line}' adds a key shiftkit does not read: {known or o.key_or_group}")


def _check_group_choices(parsed: list) -> None:
    for o in parsed:
        key = o.get_key_element()
        if o.is_delete() or (key not in GROUPS and key != "experiment"):
            continue
        values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.value()]
        for value in values:
            if key in GROUPS:
                GROUPS[key].get(str(value))
            elif str(value) not in experiments():
                raise ShiftkitError(f"unknown experiment '{value}'; choose one of: {', '.join(experiments())}")


def compose(overrides: List[str] = ()) -> DictConfig:
    """Compose and type-check one run's configuration from command-line style overrides."""
    overrides = legacy_overrides(list(overrides))
    parsed = parse_overrides(overrides)
    _check_group_choices(parsed)
    if any(o.is_sweep_override() for o in parsed):
        raise ShiftkitError("a sweep (a,b or range()) needs the -m flag: shiftkit train -m ...")
    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("shiftkit.conf", version_base="1.3"):
            cfg = hydra_compose("config", overrides=list(overrides))
        OmegaConf.resolve(cfg)
        _check_added_keys(parsed, cfg)
        preset = _preset(parsed)
        if preset is not None and cfg.preset is None:
            cfg.preset = preset
        precision.settle(cfg)  # train.amp=auto: runs record what it became
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        raise ShiftkitError(one_line(exc)) from None
    finally:
        GlobalHydra.instance().clear()
    return cfg


def _preset(parsed) -> Optional[str]:
    """The last ``experiment=NAME`` among the overrides (``None`` when there is none)."""
    chosen = None
    for o in parsed:
        if o.key_or_group == "experiment" and not o.is_delete():
            value = o.value()
            chosen = None if value is None else str(value)
    return chosen


def _group_option(o) -> Optional[tuple]:
    """``(group, option)`` of an override ``group.option=value`` of a config group, else None."""
    group, _, option = o.key_or_group.partition(".")
    if group in GROUPS and option and "." not in option and not (o.is_add() or o.is_force_add()):
        return group, option
    return None


def fit_options(override_lists: List[List[str]]) -> List[List[str]]:
    """A sweep's runs with each ``group.option=value`` kept only for the runs whose choice in that group has
    the option: ``-m loss=ce,poly loss.alpha=2`` sets ``alpha`` for ``poly`` and trains ``ce`` without it.
    An option that no run of the sweep has is refused as a single run would refuse it (a typo); one that
    some runs lack is said once, as a warning."""
    import warnings

    from .errors import ShiftkitWarning

    fitted, dropped = [], {}
    for overrides in override_lists:
        parsed = parse_overrides(overrides)
        options = [o for o in parsed if _group_option(o)]
        if not options:
            fitted.append(list(overrides))
            continue
        chosen = compose([o.input_line for o in parsed if not _group_option(o)])
        kept = []
        for o in parsed:
            found = _group_option(o)
            if found and found[1] not in GROUPS[found[0]].options(chosen[found[0]].name):
                dropped.setdefault(o.input_line, []).append(chosen[found[0]].name)
            else:
                kept.append(o.input_line)
        fitted.append(kept)
    for line, names in dropped.items():
        if len(names) == len(override_lists):
            compose(override_lists[0])  # raises the one-line error of the first run
        group = line.split(".", 1)[0]
        warnings.warn(f"{line} applies only to the runs whose {group} has that option; not to "
                      f"{', '.join(sorted(set(names)))} ({len(names)} of {len(override_lists)} runs)", ShiftkitWarning,
                      stacklevel=2)
    return fitted


#: Integers fit in 64 bits (what torch and NumPy take); seeds are non-negative.
_INT_RANGE = (-(2**63), 2**63 - 1)


def check_numbers(node: Any, where: str = "") -> None:
    """Every number of a resolved config (nested dicts and lists included) is usable: floats finite (a NaN
    or infinite hyperparameter never trains anything meaningful), integers within 64 bits, and seeds
    (``seed``, ``*_seed``) non-negative. The error names the key.

    >>> check_numbers({"loss": {"alpha": float("inf")}})
    Traceback (most recent call last):
    ...
    shiftkit.errors.ShiftkitError: loss.alpha must be a finite number, got inf
    """
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        name = f"{where}[{key}]" if isinstance(node, list) else f"{where}.{key}" if where else str(key)
        if isinstance(value, (dict, list)):
            check_numbers(value, name)
        elif isinstance(value, bool):
            continue
        elif isinstance(value, float) and not math.isfinite(value):
            raise ShiftkitError(f"{name} must be a finite number, got {value}")
        elif isinstance(value, int):
            seed = str(key) == "seed" or str(key).endswith("_seed")
            low, high = (0, _INT_RANGE[1]) if seed else _INT_RANGE
            if not low <= value <= high:
                what = "an integer in 0..2**63-1" if seed else "an integer within 64 bits"
                raise ShiftkitError(f"{name} must be {what}, got {value if abs(value) < 10**30 else 'a larger one'}")


def options(node: DictConfig) -> Dict[str, Any]:
    """A group's hyperparameters as plain Python values, without its ``name``."""
    values = OmegaConf.to_container(node, resolve=True)
    values.pop("name", None)
    return values
