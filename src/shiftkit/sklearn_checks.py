""":class:`~shiftkit.sklearn.ShiftClassifier`'s hyperparameters: checked before ``fit`` touches the data,
handed to the parts it builds by name, and named in error messages as the estimator's parameters rather
than shiftkit's configuration keys."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from numbers import Integral, Real
from typing import Dict

from sklearn.base import BaseEstimator

from . import losses, models, optim, sampling, weighting
from .registry import DATA_STATISTICS
from .train import parse_select

#: Options the estimator gives a model unless ``model_options`` sets them: the registry's MLP (2 x 512,
#: [W]'s image MLP, docs/METHODS.md#model-mlp) is far wider than tabular data needs and would make every fit slow.
_MODEL_DEFAULTS = {"mlp": {"width": 128}}
#: Keys of shiftkit's configuration that messages from the training loop and the optimizer name, and the
#: estimator's parameter that sets each (``optim.<key>`` is ``optimizer_options['<key>']``, except ``lr``).
_PARAMETER_OF_KEY = {
    "train.epochs": "epochs",
    "train.batch_size": "batch_size",
    "train.select": "select",
    "train.divergence": "the divergence check",
}
_CONFIG_KEY = re.compile(r"(?<![\w.])(train|optim|loss|weighting|sampler|model)\.([a-z_]+)\b")
_OPTIONS_OF_PART = {"optim": "optimizer_options", "loss": "loss_options", "weighting": "weighting_options",
                    "sampler": "sampler_options", "model": "model_options"}


def _check_integer(name: str, value, least: int, meaning: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < least:
        raise ValueError(f"{name} must be an integer >= {least}{meaning}, got {value!r}")


def options(est: BaseEstimator, param: str) -> dict:
    """The options ``param`` (``loss_options``, ...) holds, checked: a dict without data statistics."""
    value = getattr(est, param)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{param} must be a dict or None, got {type(value).__name__}")
    computed = sorted(set(value) & set(DATA_STATISTICS))
    if computed:
        raise ValueError(f"{param}: {', '.join(computed)} are computed from the training data in fit; remove them")
    return dict(value)


def optimizer_options(est: BaseEstimator) -> dict:
    """``optimizer_options`` with ``lr`` in it, set in one of the two places."""
    chosen = options(est, "optimizer_options")
    if est.lr is not None:
        if "lr" in chosen:
            raise ValueError("set the learning rate once: lr or optimizer_options['lr'], not both")
        chosen["lr"] = est.lr
    return chosen


def check_hyperparameters(est: BaseEstimator) -> None:
    """What can be refused before touching the data; an unknown name is a one-line ValueError that lists
    the choices (``Registry.get``)."""
    for registry, name in ((losses.LOSSES, est.loss), (weighting.WEIGHTINGS, est.weighting),
                           (sampling.SAMPLERS, est.sampler), (models.MODELS, est.model),
                           (optim.OPTIMIZERS, est.optimizer)):
        registry.get(name)
    _check_integer("epochs", est.epochs, 1)
    _check_integer("batch_size", est.batch_size, 0, " (0: full batch)")
    if est.lr is not None and (isinstance(est.lr, bool) or not isinstance(est.lr, Real)
                               or not 0 < est.lr < math.inf):
        raise ValueError(f"lr must be a finite number > 0 or None, got {est.lr!r}")
    if not (est.class_weight is None or isinstance(est.class_weight, Mapping)
            or (isinstance(est.class_weight, str) and est.class_weight == "balanced")):
        raise ValueError(
            f"class_weight must be None, 'balanced' or a dict {{label: weight}}, got {est.class_weight!r}"
        )
    if not 0 <= est.val_fraction < 1:
        raise ValueError(f"val_fraction must lie in [0, 1), got {est.val_fraction}")
    if parse_select(est.select) is not None and est.val_fraction == 0:
        raise ValueError(f"select='{est.select}' picks an epoch on validation rows: set val_fraction > 0")


def parameter_names(est: BaseEstimator, message: str) -> str:
    """``message`` with each configuration key (``train.epochs``, ``optim.momentum``) replaced by the
    estimator's parameter that sets it (``epochs``, ``optimizer_options['momentum']``)."""

    def name(match: "re.Match") -> str:
        key = match.group(0)
        if key in _PARAMETER_OF_KEY:
            return _PARAMETER_OF_KEY[key]
        part, option = match.groups()
        if key == "optim.lr" and (est.lr is not None or "lr" not in (est.optimizer_options or {})):
            return "lr"
        if part == "train":
            return option
        return f"{_OPTIONS_OF_PART[part]}['{option}']"

    return _CONFIG_KEY.sub(name, message)


def build_parts(est: BaseEstimator, stats: Dict[str, object]) -> Dict[str, object]:
    """The arguments of :func:`shiftkit.train.fit` that the names choose, built with ``stats``."""
    model_options = {**_MODEL_DEFAULTS.get(est.model, {}), **options(est, "model_options")}
    return {
        "model": models.build(est.model, **model_options, **stats),
        "loss": losses.build(est.loss, **options(est, "loss_options"), **stats),
        "weighting": weighting.build(est.weighting, **options(est, "weighting_options"), **stats),
        "sampler": sampling.build(est.sampler, **options(est, "sampler_options"), **stats),
        "optim": optim.build(est.optimizer, **optimizer_options(est)),
    }
