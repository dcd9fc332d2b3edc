"""Procedures: how one run trains, registered like losses (``procedure=NAME``, ``shiftkit list procedure``).

A plain run fits once (``procedure=plain``, the default). A multi-phase method (AutoBalance's search then
retraining; two-stage methods such as JTT or DFR) is one registered :class:`Procedure` in one file: its
options come from its constructor's signature like any method's, :meth:`Procedure.check` refuses bad
settings before any run of a sweep trains, :meth:`Procedure.run` trains its phases through
:func:`shiftkit.train.fit` with the run's :class:`Job`, and :meth:`Procedure.resume` reads what its
checkpoints say. The runner (:func:`shiftkit.runner.run`) does everything else the same way for every
procedure: the run directory, ``metrics.jsonl``, the tracker, failures, weights and ``run.json``.

>>> names()
['autobalance', 'crt', 'dfr', 'jtt', 'plain']
>>> build("plain").alone is None
True
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from torch import nn

from ..checkpoint import Checkpoint
from ..data.base import Splits
from ..registry import Registry
from ..selection import FitResult

PROCEDURES = Registry("procedure")
register = PROCEDURES.register

__all__ = ["PROCEDURES", "Job", "Outcome", "Procedure", "build", "names", "register", "settings"]


@dataclass
class Job:
    """What a procedure trains with: the run's composed config (``cfg``; ``plain``, resolved to plain
    values), its data, the parts its config names (``parts``: model, loss, weighting, sampler, optim; built
    after ``torch.manual_seed(seed)``), the device, ``write`` (each evaluation record: ``metrics.jsonl``,
    the tracker and the caller's ``on_eval``), the probe (diagnostics, or None), the run's checkpoint (its
    state loaded, if any) and its directory (``out``; a procedure may write files there, e.g. plots, on
    the primary process). ``make_model()`` builds a fresh model of the config."""

    cfg: Any
    plain: Dict[str, Any]
    splits: Splits
    parts: Dict[str, Any]
    device: str
    write: Callable[[dict], None]
    probe: Optional[Callable] = None
    checkpoint: Optional[Checkpoint] = None
    out: Optional[Path] = None
    make_model: Optional[Callable[[], nn.Module]] = None

    def fit(self, model: Optional[nn.Module] = None, **changes: Any) -> FitResult:
        """:func:`shiftkit.train.fit` with this run's parts and settings (``train.*``, seed, device, probe,
        checkpoint, ``write``), any of them replaced by ``changes`` (``epochs=``, ``splits=``, ``loss=``,
        ``weighting=``, ``outer=``, ``on_eval=``...)."""
        from ..train import fit

        parts = {k: v for k, v in self.parts.items() if k != "model"}
        settings = {**self.plain["train"], "seed": self.plain["seed"], "device": self.device, "on_eval": self.write,
                    "probe": self.probe, "checkpoint": self.checkpoint, "splits": self.splits, **parts}
        settings.update(changes)
        return fit(model if model is not None else self.parts["model"], **settings)


@dataclass
class Outcome:
    """What a procedure's run produced: the result that is the run's (its metrics go into ``run.json``),
    the model that holds its weights, and the extra ``run.json`` entries it adds."""

    result: FitResult
    model: nn.Module
    extra: Dict[str, Any] = field(default_factory=dict)


class Procedure:
    """Base class of procedures. A subclass's constructor takes its options (``procedure.<option>``).

    - ``alone``: why the seeds of a sweep cannot train as one vectorized ensemble (None where they can:
      only a procedure that is one plain fit);
    - :meth:`validate` checks settings from the config alone; :meth:`check` with the data and built parts
      (both before any run of a sweep trains);
    - :meth:`epochs` is what a run's progress counts;
    - :meth:`resume` reads a checkpoint state: the ``run.json`` entries that say where it resumed and
      each member's evaluation records to rewrite into ``metrics.jsonl``;
    - ``takes_augment``: whether it trains with an ``augment`` policy (docs/METHODS.md#augment);
    - :meth:`run` trains.
    """

    alone: Optional[str] = "a procedure of several phases trains each seed on its own"
    takes_augment = False

    def validate(self, plain: Dict[str, Any]) -> None:
        """Refuse settings that cannot run, from the resolved config alone."""

    def check(self, plain: Dict[str, Any], splits: Splits, parts: Dict[str, Any]) -> None:
        """Refuse settings that cannot run on these data with these parts (built on the meta device)."""

    def epochs(self, plain: Dict[str, Any]) -> int:
        """The epochs a run trains in all its phases (for progress)."""
        return plain["train"]["epochs"]

    def resume(self, state: Dict[str, Any]) -> Tuple[Dict[str, Any], List[List[dict]]]:
        """``(run.json entries, each member's evaluation records)`` of a run resumed from checkpoint
        ``state`` (one member, or the members of an ensemble)."""
        from ..train import saved_histories

        return {"resumed_from_epoch": state["epoch"]}, saved_histories(state)

    def run(self, job: Job) -> Outcome:
        raise NotImplementedError


def build(name: str, **options: Any) -> Procedure:
    """Build a registered procedure with its options."""
    return PROCEDURES.build(name, **options)


def names() -> List[str]:
    return PROCEDURES.names()


#: The identity of a plain run's procedure in the records of earlier versions: the settings of the
#: AutoBalance search they always carried, switched off. Run identities map procedures onto it so that
#: every run made before procedures existed keeps its directory (:func:`legacy_identity`).
LEGACY_SEARCH = {
    "enabled": False, "objective": "balanced_ce", "objective_options": {}, "start_epoch": None, "every": 20,
    "batches": 10, "terms": 5, "step": 1.0, "curvature_batches": 1, "stop_on_growth": True, "upper_lr": 0.01,
    "retrain_epochs": None, "retrain_on": "train+val", "interpolate_clusters": True,
}


def legacy_identity(cfg: Dict[str, Any]) -> None:
    """Rewrite a config's ``procedure`` in place as earlier versions recorded it, where it has such a
    form: ``plain`` as :data:`LEGACY_SEARCH`, ``autobalance`` as its options with ``enabled: true``, under
    ``search``. Other procedures stay as they are."""
    node = cfg.get("procedure")
    if not isinstance(node, dict) or node.get("name") not in ("plain", "autobalance"):
        return
    options = {k: v for k, v in cfg.pop("procedure").items() if k != "name"}
    cfg["search"] = dict(LEGACY_SEARCH) if node["name"] == "plain" else {"enabled": True, **options}


def settings(config: Dict[str, Any]) -> Dict[str, Any]:
    """A run record's procedure as ``{"name": ..., **options}``, for the records of every version (earlier
    ones held AutoBalance's options under ``search`` with ``enabled``)."""
    if "procedure" in config:
        return dict(config["procedure"])
    search = dict(config.get("search") or {})
    if search.pop("enabled", False):
        return {"name": "autobalance", **search}
    return {"name": "plain"}


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
