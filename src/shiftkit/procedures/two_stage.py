"""What the two-stage procedures share (JTT, DFR, cRT: docs/METHODS.md#procedure-jtt,
docs/METHODS.md#procedure-dfr, docs/METHODS.md#procedure-crt): a first phase whose result a killed run never
trains again, each phase's view of the run's one checkpoint, the records a resumed run rewrites, and the
penultimate features of a trained model.

A run's checkpoint holds ``"phase"``: the first phase's name while it trains (its loop's state, as
:func:`shiftkit.train.fit` saves it), then ``"retrain"`` once it has finished, with what the second phase
needs from it under ``"first"`` (its :class:`~shiftkit.selection.FitResult`, what the procedure kept, the
RNG states) in every later save.

>>> state = {"phase": "retrain", "first": {"result": {"history": [{"epoch": 1}, {"epoch": 2}]}}}
>>> resume_point(state, "erm", "procedure=dfr")
({'resumed_from_epoch': 0, 'resumed_from_phase': 'retrain'}, [[{'phase': 'erm', 'epoch': 1}, {'phase': 'erm', 'epoch': 2}]])
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from ..checkpoint import Checkpoint, PhaseCheckpoint, phase, rng_states, set_rng_states  # noqa: F401
from ..data.base import Split, Splits
from ..data.pipeline import Pipeline
from ..errors import ShiftkitError
from ..models import weights
from ..selection import FitResult
from . import Job

#: The second phase's name in checkpoints and ``metrics.jsonl``.
RETRAIN = "retrain"
_BATCH = 1024


def tagged(job: Job, name: str) -> Callable[[dict], None]:
    """The job's writer, each record tagged ``"phase": name``."""
    return lambda record: job.write({"phase": name, **record})


def first_phase(job: Job, name: str, train: Callable[[Optional[PhaseCheckpoint]], Tuple[FitResult, Any]],
                restore: Callable[[Any], None]) -> Tuple[FitResult, Dict[str, Any]]:
    """The first phase, once: ``train(phase_checkpoint)`` returns its result and what the second phase
    needs (tensors, numbers, containers), saved at the phase boundary; a run whose checkpoint is past the
    boundary gets them back through ``restore(kept)`` with the RNG states the phase left, and trains
    nothing. Returns the result and the boundary's record (``"first"`` of every later save)."""
    state = job.checkpoint.state if job.checkpoint is not None else None
    if state is not None and state.get("phase") == RETRAIN:
        done = state["first"]
        restore(done["kept"])
        set_rng_states(done["rng"])
        return FitResult(**done["result"]), done
    result, kept = train(phase(job.checkpoint, name))
    done = {"result": dataclasses.asdict(result), "kept": kept, "rng": rng_states()}
    if job.checkpoint is not None and job.checkpoint.every:  # never train a finished first phase again
        job.checkpoint.save({"phase": RETRAIN, "first": done})
    return result, done


def resume_point(state: Dict[str, Any], first: str, who: str) -> Tuple[Dict[str, Any], List[List[dict]]]:
    """``(run.json entries, [records])`` of a run resumed from ``state``: the phase and the epochs done in
    it, and the evaluations before it, tagged with their phases as in ``metrics.jsonl``."""
    name = state.get("phase")
    if name not in (first, RETRAIN):
        raise ShiftkitError(f"this checkpoint is not a {who} run's; delete it to start the run over")
    records = [{"phase": name, **r} for r in state["selection"]["history"]] if "epoch" in state else []
    if name == RETRAIN:
        records = [{"phase": first, **r} for r in state["first"]["result"]["history"]] + records
    return {"resumed_from_epoch": state.get("epoch", 0), "resumed_from_phase": name}, [records]


def summary(result: FitResult) -> Dict[str, Any]:
    """A phase's result as ``run.json`` holds it (its evaluations are in ``metrics.jsonl``)."""
    return {"final": result.final, "selected": result.selected, "selected_epoch": result.selected_epoch,
            "seconds": round(result.seconds, 3), "steps": result.steps}


#: The first phase of the procedures that start from an ordinary fit (cRT, DFR).
ERM = "erm"


def ordinary_fit(job: Job) -> Tuple[FitResult, Dict[str, Any]]:
    """The run's ordinary fit as a first phase (:func:`first_phase`, named :data:`ERM`): trained once, the
    model's weights kept at the boundary; the model is left trained, on the job's device."""
    model = job.parts["model"]

    def train(checkpoint):
        result = job.fit(checkpoint=checkpoint, on_eval=tagged(job, ERM))
        return result, {"model": cpu_state(model)}

    result, done = first_phase(job, ERM, train, restore=lambda kept: model.load_state_dict(kept["model"]))
    model.to(job.device)
    return result, done


def cpu_state(model: nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def linear_head(model: nn.Module, who: str) -> Tuple[str, nn.Linear]:
    """The model's head (:func:`shiftkit.models.weights.head_name`), which must be one linear layer with a
    bias: the second phase replaces it."""
    name = weights.head_name(model)
    head = getattr(model, name)
    if not isinstance(head, nn.Linear) or head.bias is None:
        what = "a linear layer without bias" if isinstance(head, nn.Linear) else f"a {type(head).__name__}"
        raise ShiftkitError(f"{who} retrains the model's head, which must be one linear layer with a bias; "
                            f"its head '{name}' is {what}")
    return name, head


@torch.no_grad()
def features(model: nn.Module, split: Split, pipeline: Pipeline, device: str) -> Split:
    """``split`` with its inputs replaced by the model's penultimate features (the model without its head,
    :func:`shiftkit.models.weights.split_head`), computed once in evaluation mode, without gradients,
    on ``device``; labels, groups and sample weights stay."""
    backbone, _ = weights.split_head(model)
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(split), _BATCH):
        batch = pipeline(split.x[start:start + _BATCH].to(device), train=False)
        out.append(backbone(batch).float().flatten(1))
    model.train(was_training)
    x = torch.cat(out) if out else torch.zeros(0, getattr(model, weights.head_name(model)).in_features, device=device)
    return Split(x, split.y.to(device), split.g.to(device), split.num_classes, split.num_groups,
                 None if split.weight is None else split.weight.to(device))


def feature_splits(model: nn.Module, splits: Splits, device: str) -> Splits:
    """Every split's penultimate features (:func:`features`), with an identity pipeline."""
    made = [features(model, s, splits.pipeline, device) for s in (splits.train, splits.val, splits.test)]
    return Splits(*made, info=splits.info, pipeline=Pipeline())


def with_head(model: nn.Module, name: str, head_state: Optional[Dict[str, torch.Tensor]]):
    """The model's CPU state dict with its head's entries replaced by ``head_state`` (None stays None)."""
    if head_state is None:
        return None
    full = cpu_state(model)
    full.update({f"{name}.{k}": v.detach().cpu().clone() for k, v in head_state.items()})
    return full
