"""Hydra configuration: groups mirror the registries, schemas come from the constructors' signatures.

Each registered name becomes a structured config in its group (``loss/poly``, ``weighting/iw``, ...)
whose fields are the constructor's keyword hyperparameters, typed by its annotations and defaulted by its
defaults, plus ``name``. A new method therefore needs no config file: its decorator is enough, and a typo
or a value of the wrong type is refused before anything runs. Top-level keys: ``data``,
``model``, ``loss``, ``weighting``, ``sampler``, ``optim``, ``train``, ``seed``, ``device``, ``out`` and an
optional run label ``name``.

>>> cfg = compose(["loss=poly", "weighting=iw", "weighting.exponent=1.5", "seed=3"])
>>> cfg.loss.name, cfg.loss.alpha, cfg.weighting.exponent, cfg.seed
('poly', 1.0, 1.5, 3)
>>> compose(["loss=nope"])  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
shiftkit.errors.ShiftkitError: unknown loss 'nope'; choose one of: autobalance, cdt, ce, ...
"""

from __future__ import annotations

import collections.abc
import dataclasses
import importlib.resources
import inspect
import itertools
import math
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra import compose as hydra_compose
from hydra import initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from . import data, losses, models, optim, procedures, sampling, tracking, weighting
from .errors import ShiftkitError
from .registry import Registry, hyperparameters

#: Config group -> the registry whose names are its options.
GROUPS: Dict[str, Registry] = {
    "data": data.DATASETS,
    "model": models.MODELS,
    "loss": losses.LOSSES,
    "weighting": weighting.WEIGHTINGS,
    "sampler": sampling.SAMPLERS,
    "optim": optim.OPTIMIZERS,
    "logger": tracking.LOGGERS,
    "procedure": procedures.PROCEDURES,
}
_SCALARS = (int, float, bool, str)


@dataclass
class TrainConf:
    """The loop's settings (``batch_size=0``: full batch; ``select``: ``last`` or ``best:<metric>``;
    ``amp``: ``none`` or ``bf16``; ``compile``: run the model through ``torch.compile``; ``divergence``: a
    run fails once an epoch's mean training loss exceeds this many times its initial level, 0 for never;
    non-finite losses and weights always fail it, :mod:`shiftkit.divergence`)."""

    epochs: int = 100
    batch_size: int = 64
    eval_every: int = 1
    select: str = "last"
    amp: str = "none"
    compile: bool = False
    divergence: float = 1000.0


@dataclass
class DiagnosticsConf:
    """Implicit-bias probes at every evaluation (:mod:`shiftkit.diagnostics`): weight norm, per-group
    minimum training margins and, given a ``reference`` run directory (or its ``model.pt``), the distance
    and normalized-direction gap to that run's weights; the run then also writes ``model.pt`` and
    ``run.json`` records the epoch where training error reaches zero."""

    enabled: bool = False
    reference: Optional[str] = None


@dataclass
class CheckpointConf:
    """Checkpoints (:mod:`shiftkit.checkpoint`): written to the run directory's ``checkpoint.pt`` after
    every ``every``-th epoch (0: never) once ``interval`` seconds have passed since the last one (0: at
    every such epoch); a rerun of the same command resumes from it. A finished run deletes its checkpoint
    unless ``keep``; a failed one keeps its last good checkpoint."""

    every: int = 1
    interval: float = 60.0
    keep: bool = False


@dataclass
class Config:
    data: Any = MISSING
    model: Any = MISSING
    loss: Any = MISSING
    weighting: Any = MISSING
    sampler: Any = MISSING
    optim: Any = MISSING
    logger: Any = MISSING
    procedure: Any = MISSING
    train: TrainConf = field(default_factory=TrainConf)
    diagnostics: DiagnosticsConf = field(default_factory=DiagnosticsConf)
    checkpoint: CheckpointConf = field(default_factory=CheckpointConf)
    seed: int = 0
    device: str = "auto"
    out: str = "results"
    name: Optional[str] = None
    #: The preset (``experiment=NAME``) the run came from and the scale of the reproduction it belongs to:
    #: labels only, in the run's label and folder but not in its identity (shiftkit.labels).
    preset: Optional[str] = None
    scale: Optional[str] = None
    ensemble: bool = False
    save_weights: Optional[bool] = None


def _supported(tp: Any) -> Any:
    """The annotation if OmegaConf can validate it, else ``Any``."""
    if tp in _SCALARS:
        return tp
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (list, typing.List) and args and args[0] in _SCALARS:
        return List[args[0]]
    if origin in (dict, typing.Dict, collections.abc.Mapping):
        return Dict[str, Any]
    if origin is typing.Union and len(args) == 2 and type(None) in args:
        inner = _supported(next(a for a in args if a is not type(None)))
        return Optional[inner] if inner is not Any else Any
    return Any


def _hints(fn: Any) -> Dict[str, Any]:
    if dataclasses.is_dataclass(fn):
        return typing.get_type_hints(fn)
    return typing.get_type_hints(fn.__init__ if inspect.isclass(fn) else fn)


def _default(fn: Any, key: str, param: inspect.Parameter) -> Any:
    """A parameter's default; for dataclasses, default factories are called."""
    if dataclasses.is_dataclass(fn):
        spec = {f.name: f for f in dataclasses.fields(fn)}[key]
        if spec.default_factory is not dataclasses.MISSING:
            return spec.default_factory()
    return param.default


def schema(group: str, name: str) -> type:
    """A dataclass with ``name`` and the typed, defaulted options of ``name`` in ``group``'s registry: the
    constructor's hyperparameters, then the options the registry shares among its names."""
    registry = GROUPS[group]
    fields: list = [("name", str, field(default=name))]
    for fn, params in ((registry.get(name), hyperparameters(registry.get(name))),
                       (registry.shared, registry.shared_options())):
        hints = _hints(fn) if params else {}
        for key, param in params.items():
            fields.append((key, _supported(hints.get(key, Any)), _field(fn, key, param)))
    return dataclasses.make_dataclass(f"{group}_{name}", fields)


def _field(fn: Any, key: str, param: inspect.Parameter):
    default = _default(fn, key, param)
    if default is inspect.Parameter.empty:
        return field(default=MISSING)
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda d=default: list(d))
    if isinstance(default, collections.abc.Mapping):
        return field(default_factory=lambda d=default: dict(d))
    return field(default=default)


def register_configs() -> None:
    """Store the top-level schema and one schema per registered name in Hydra's ConfigStore."""
    store = ConfigStore.instance()
    store.store(name="base_config", node=Config)
    for group, registry in GROUPS.items():
        for name in registry.names():
            store.store(group=group, name=name, node=schema(group, name))


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


def experiments() -> List[str]:
    """Names of the presets in ``conf/experiment/`` (``experiment=NAME``)."""
    folder = importlib.resources.files("shiftkit.conf") / "experiment"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


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
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        raise ShiftkitError(one_line(exc)) from None
    finally:
        GlobalHydra.instance().clear()
    return cfg


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


def _preset(parsed) -> Optional[str]:
    """The last ``experiment=NAME`` among the overrides (``None`` when there is none)."""
    chosen = None
    for o in parsed:
        if o.key_or_group == "experiment" and not o.is_delete():
            value = o.value()
            chosen = None if value is None else str(value)
    return chosen


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
