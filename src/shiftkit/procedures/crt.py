"""Classifier re-training (cRT; Kang et al. 2020, "Decoupling representation and classifier";
docs/METHODS.md#procedure-crt): train as usual, then re-initialize the head and retrain it alone,
class-balanced, on the frozen representation."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Optional

import torch
from torch import nn

from .. import sampling, weighting
from ..errors import ShiftkitError
from ..models import weights
from . import Job, Outcome, Procedure, register
from .two_stage import (ERM, RETRAIN, feature_splits, linear_head, ordinary_fit, phase, resume_point, summary,
                        tagged, with_head)

BALANCE = ("sampling", "weighting")


@torch.no_grad()
def reinitialize(head: nn.Linear, seed: int) -> None:
    """PyTorch's default initialization of a linear layer, ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for its
    weight and bias, drawn on the CPU from ``seed`` (the same on every device, the global RNG untouched).

    >>> layer = nn.Linear(4, 2)
    >>> reinitialize(layer, 0)
    >>> bool(layer.weight.abs().max() <= 0.5)
    True
    """
    gen = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(head.in_features)
    for p in (head.weight, head.bias):
        p.copy_((torch.rand(p.shape, generator=gen, dtype=torch.float64) * 2 - 1) * bound)


@register("crt")
class CRT(Procedure):
    """Classifier re-training: retrain a re-initialized head on the frozen features, class-balanced.

    Phase ``erm`` is the run's ordinary fit (any loss, weighting and sampler). Phase ``retrain``
    re-initializes the head (PyTorch's default initialization of a linear layer, drawn from the run's
    seed) and trains it alone for ``retrain_epochs`` epochs (Kang et al.'s 10) with the run's loss and optimizer
    (``lr``: the run's ``optim.lr`` unless set), the backbone frozen: ``balance="sampling"`` draws
    balanced epochs by ``by`` (``sampler=balanced``: every class equally often, Kang et al.'s
    class-aware sampling), ``balance="weighting"`` weighs each example by the inverse frequency of its
    class (``weighting=iw``, SubpopBench's ``ReWeightCRT``). ``by="group"`` balances groups instead
    (SubpopBench's ``CRT`` sets ``group_balanced``). Without augmentation the backbone's features are
    computed once per split, in evaluation mode, and the head trains on them; with augmentation the
    whole model trains with its backbone frozen (``model.freeze=backbone``), each batch augmented.
    ``run.json`` adds the ERM phase's metrics and how the head was retrained (``crt``); ``metrics.jsonl``
    lines carry ``"phase": "erm"`` or ``"retrain"``. A stopped run resumes in the phase it stopped in.
    """

    #: SubpopBench tunes cRT's second stage through the run's optimizer only (its ``lr`` and
    #: ``weight_decay``, ``optim``'s space); cRT's own options have no published space.
    search_space: Dict[str, str] = {}

    def __init__(self, retrain_epochs: int = 10, balance: str = "sampling", by: str = "class",
                 lr: Optional[float] = None):
        self.retrain_epochs, self.balance, self.by, self.lr = retrain_epochs, balance, by, lr

    def validate(self, plain: Dict[str, Any]) -> None:
        if self.retrain_epochs < 1:
            raise ShiftkitError(f"procedure.retrain_epochs must be >= 1, got {self.retrain_epochs}")
        if self.balance not in BALANCE:
            raise ShiftkitError(f"procedure.balance must be 'sampling' or 'weighting', got '{self.balance}'")
        if self.by not in ("class", "group"):
            raise ShiftkitError(f"procedure.by must be 'class' or 'group', got '{self.by}'")
        if self.lr is not None and not self.lr > 0:
            raise ShiftkitError(f"procedure.lr must be > 0 (or unset: optim.lr), got {self.lr}")

    def check(self, plain: Dict[str, Any], splits, parts: Dict[str, Any]) -> None:
        linear_head(parts["model"], "procedure=crt")

    def epochs(self, plain: Dict[str, Any]) -> int:
        return plain["train"]["epochs"] + self.retrain_epochs

    def resume(self, state: Dict[str, Any]):
        return resume_point(state, ERM, "procedure=crt")

    def balancing(self, job: Job) -> Dict[str, Any]:
        """The retraining's sampler and weighting."""
        stats = job.splits.statistics()
        if self.balance == "sampling":
            return {"sampler": sampling.build("balanced", by=self.by), "weighting": weighting.build("erm")}
        return {"sampler": sampling.build("none"), "weighting": weighting.build("iw", by=self.by, **stats)}

    def run(self, job: Job) -> Outcome:
        self.check(job.plain, job.splits, job.parts)  # before the first phase trains, as a sweep checks it
        model = job.parts["model"]
        erm, done = ordinary_fit(job)
        name, head = linear_head(model, "procedure=crt")
        reinitialize(head, job.plain["seed"])
        optim = job.parts["optim"] if self.lr is None else dataclasses.replace(job.parts["optim"], lr=self.lr)
        settings = {**self.balancing(job), "optim": optim, "epochs": self.retrain_epochs,
                    "on_eval": tagged(job, RETRAIN), "checkpoint": phase(job.checkpoint, RETRAIN, first=done)}
        cached = not job.splits.pipeline.augments
        if cached:  # the frozen backbone's features, once per split; the head trains on them
            result = job.fit(head, splits=feature_splits(model, job.splits, job.device), probe=None, **settings)
            result.final_state = with_head(model, name, result.final_state)
        else:
            result = job.fit(weights.frozen(model, "backbone"), **settings)
        extra = {"erm": summary(erm), "crt": {"retrain_epochs": self.retrain_epochs, "balance": self.balance, "by": self.by,
                                              "features": "cached" if cached else "frozen backbone"}}
        return Outcome(result, model, extra)
