"""Run identity: which configs are the same run, and where it lives.

A run's directory is ``<out>/<data>/<label>/seed<seed>-<hash>`` (:mod:`shiftkit.labels`: the data and
label name what differs between runs). The hash covers the whole config but :data:`EXECUTION_KEYS` (how a
run executes, not what it computes) and the label keys ``preset`` and ``scale``, so a repeated sweep
finds finished runs and skips them (docs/SWEEPS.md). Options added since a run was made leave its hash
alone while they hold the defaults they had before they existed, and a procedure is hashed as earlier
versions recorded it (:func:`shiftkit.procedures.legacy_identity`): results stay valid across versions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Dict

from . import labels, precision, procedures
from .config import DiagnosticsConf
from .models import weights

__all__ = ["EXECUTION_KEYS", "comparable", "config_hash", "run_dir"]


#: Keys that say how and where a run executes, not what it computes: left out of run identities. Dotted
#: keys name one option of a group (``train.divergence`` decides whether a run is accepted, not its numbers).
EXECUTION_KEYS = ("out", "device", "ensemble", "checkpoint", "logger", "train.divergence", "save_weights")
_ALWAYS = object()
#: Keys left out of run identities while they hold their defaults, so that adding them kept the
#: identities (and ``done`` markers) of runs made before they existed: ``(key, default, group names)``, the
#: names of the group's registry for which the key is new (None: all of them).
_NEUTRAL_DEFAULTS = [
    ("diagnostics", dataclasses.asdict(DiagnosticsConf()), None),
    ("augment", {"name": "none"}, None),
    ("search.augment_lr", 0.001, None),
    ("loss.cluster_init", "mean", None),
    ("model.weights", None, None),
    ("model.freeze", "none", None),
    ("data.features_from", None, None),
    ("data.features_weights", None, None),
    ("data.features_options", {}, None),
    ("data.augment", False, ("waterbirds", "celeba")),
    ("data.split", "official", ("waterbirds",)),
    ("data.split_seed", 0, ("waterbirds",)),
    ("loss.type", "logit", ("poly",)),
    ("weighting.form", "top_k", ("cvar",)),
    ("weighting.automatic_adjustment", False, ("group_dro",)),
    ("weighting.gamma", 0.1, ("group_dro",)),
]
#: Options naming a weight file, and the option naming the architecture it is for: identities hold the
#: file's sha256 in place of its path (a moved file names the same run, a changed one another).
_WEIGHT_FILES = (("model.weights", "model.name"), ("data.features_weights", "data.features_from"))


def _without(cfg: Dict[str, Any], key: str, unless: Any = _ALWAYS) -> None:
    """Remove the (possibly dotted) ``key`` from ``cfg`` in place; with ``unless``, only while it holds
    that value."""
    *path, last = key.split(".")
    node = cfg
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict) and last in node and (unless is _ALWAYS or node[last] == unless):
        del node[last]


def _select(cfg: Dict[str, Any], key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def comparable(cfg: Dict[str, Any], drop=EXECUTION_KEYS) -> Dict[str, Any]:
    """A copy of ``cfg`` as run identities see it: without ``drop`` and the label keys, and without the
    options that hold the defaults they had before they existed (so that runs of every version compare)."""
    kept = json.loads(json.dumps(cfg))
    precision.settle(kept)  # an unresolved train.amp=auto names the run it resolves to
    procedures.legacy_identity(kept)  # a procedure as earlier versions recorded it: their runs keep their hash
    for key in (*drop, *labels.LABEL_KEYS):
        _without(kept, key)
    for key, default, names in _NEUTRAL_DEFAULTS:
        if names is None or _select(kept, key.split(".")[0] + ".name") in names:
            _without(kept, key, unless=default)
    return kept


def config_hash(cfg: Dict[str, Any], drop=EXECUTION_KEYS) -> str:
    kept = comparable(cfg, drop)
    for key, architecture in _WEIGHT_FILES:
        spec = _select(kept, key)
        if spec is not None:
            group, option = key.split(".")
            kept[group][option] = weights.identity(_select(kept, architecture), spec, key)
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:10]


def run_dir(cfg: Dict[str, Any]) -> Path:
    """``<out>/<data>/<label>/seed<N>-<hash>`` (:func:`shiftkit.labels.folder`)."""
    return Path(cfg["out"]) / labels.folder(cfg) / f"seed{cfg['seed']}-{config_hash(cfg)}"
