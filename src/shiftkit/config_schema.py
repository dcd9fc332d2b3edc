"""The configuration's schemas: the top-level :class:`Config` with its fixed sections (``train``,
``diagnostics``, ``checkpoint``), and one structured config per registered name, its fields the
constructor's keyword hyperparameters typed by their annotations and defaulted by their defaults
(:func:`schema`), stored in Hydra's ConfigStore by :func:`register_configs`."""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from . import augment, data, losses, models, optim, procedures, sampling, tracking, weighting
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
    "augment": augment.AUGMENTATIONS,
}
_SCALARS = (int, float, bool, str)


@dataclass
class TrainConf:
    """The loop's settings (``batch_size=0``: full batch; ``select``: ``last`` or ``best:<metric>``;
    ``amp``: ``auto`` (bf16 where it is native and verified for the model, else float32:
    :mod:`shiftkit.precision`), ``none`` or ``bf16``; ``compile``: run the model through ``torch.compile``; ``divergence``: a
    run fails once an epoch's mean training loss exceeds this many times its initial level, 0 for never;
    non-finite losses and weights always fail it, :mod:`shiftkit.divergence`)."""

    epochs: int = 100
    batch_size: int = 64
    eval_every: int = 1
    select: str = "last"
    amp: str = "auto"
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
    augment: Any = MISSING
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

