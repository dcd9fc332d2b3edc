"""Optimizers and learning-rate schedules by name; the training loop builds them, methods never do.

A registered optimizer is a dataclass of its hyperparameters with ``make(params, epochs)`` returning the
torch optimizer and an epoch-wise ``LambdaLR`` schedule. The [W] experiments use SGD with a constant rate
and no weight decay (docs/METHODS.md#protocol-wang2022); [AB] and the LDAM-DRW recipe use a linear warm-up then step decays
(``schedule="multistep"``, docs/METHODS.md#autobalance-schedules, docs/METHODS.md#recipe-ldam-drw).

>>> spec = build("sgd", lr=0.1, schedule="multistep", milestones=[2], warmup_epochs=1)
>>> [round(spec.factor(e, epochs=4), 3) for e in range(4)]
[1.0, 1.0, 0.1, 0.1]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, List, Tuple

import torch

from .errors import ShiftkitError
from .registry import Registry

OPTIMIZERS = Registry("optim")
register = OPTIMIZERS.register
names = OPTIMIZERS.names


def build(name: str, **kwargs) -> "OptimSpec":
    return OPTIMIZERS.build(name, **kwargs)


def _constant(epoch: int, epochs: int, spec: "OptimSpec") -> float:
    return 1.0


def _cosine(epoch: int, epochs: int, spec: "OptimSpec") -> float:
    span = max(epochs - spec.warmup_epochs, 1)
    return 0.5 * (1.0 + math.cos(math.pi * (epoch - spec.warmup_epochs) / span))


def _multistep(epoch: int, epochs: int, spec: "OptimSpec") -> float:
    return spec.gamma ** sum(epoch >= m for m in spec.milestones)


SCHEDULES = {"constant": _constant, "cosine": _cosine, "multistep": _multistep}


@dataclass
class OptimSpec:
    """Hyperparameters shared by all optimizers: rate, weight decay and the schedule.

    ``schedule``: ``constant``, ``cosine`` (to 0 at the last epoch) or ``multistep`` (times ``gamma`` at
    each of ``milestones``), after ``warmup_epochs`` of linear warm-up.
    """

    #: The search's space (docs/METHODS.md#search): SubpopBench's weight decay, 10^U(-6, -3); a learning
    #: rate around the default, 10^U(-3, -1) for SGD (Adam's below).
    search_space = {"lr": "loguniform(0.001, 0.1)", "weight_decay": "loguniform(1e-6, 0.001)"}

    lr: float = 0.01
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup_epochs: int = 0
    milestones: List[int] = field(default_factory=list)
    gamma: float = 0.1

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ShiftkitError(f"optim.lr must be > 0, got {self.lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ShiftkitError(f"optim.weight_decay must be a finite number >= 0, got {self.weight_decay}")
        if self.warmup_epochs < 0:
            raise ShiftkitError(f"optim.warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if self.schedule not in SCHEDULES:
            raise ShiftkitError(f"unknown schedule '{self.schedule}'; choose one of: {', '.join(SCHEDULES)}")
        if not (math.isfinite(self.gamma) and self.gamma > 0):
            raise ShiftkitError(f"optim.gamma (the multistep decay factor) must be > 0, got {self.gamma}")
        bad = [m for m in self.milestones if isinstance(m, bool) or not isinstance(m, int) or m < 1]
        if bad:
            raise ShiftkitError(f"optim.milestones must be epochs >= 1, got {list(self.milestones)}")
        self.check()

    def check(self) -> None:
        """The optimizer's own hyperparameters (a subclass's), refused before anything trains."""

    def factor(self, epoch: int, epochs: int) -> float:
        """Learning-rate multiplier during ``epoch`` (0-based)."""
        if epoch < self.warmup_epochs:
            return (epoch + 1) / self.warmup_epochs
        return SCHEDULES[self.schedule](epoch, epochs, self)

    def optimizer(self, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
        raise NotImplementedError

    def make(self, params, epochs: int) -> Tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        opt = self.optimizer(params)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda e: self.factor(e, epochs))


@register("sgd")
@dataclass
class SGD(OptimSpec):
    """Stochastic gradient descent with (heavy-ball or Nesterov) momentum."""

    momentum: float = 0.9
    nesterov: bool = False

    def check(self) -> None:
        if not 0 <= self.momentum < 1:
            raise ShiftkitError(f"optim.momentum must lie in [0, 1), got {self.momentum}")
        if self.nesterov and self.momentum == 0:
            raise ShiftkitError("optim.nesterov=true needs optim.momentum > 0")

    def optimizer(self, params):
        return torch.optim.SGD(
            params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay, nesterov=self.nesterov
        )


@register("adam")
@dataclass
class Adam(OptimSpec):
    """Adam (decoupled weight decay when ``decoupled=True``, i.e. AdamW)."""

    search_space = {"lr": "loguniform(0.0001, 0.01)", "weight_decay": "loguniform(1e-6, 0.001)"}

    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    decoupled: bool = False

    def check(self) -> None:
        for key in ("beta1", "beta2"):
            if not 0 <= getattr(self, key) < 1:
                raise ShiftkitError(f"optim.{key} must lie in [0, 1), got {getattr(self, key)}")

    def optimizer(self, params):
        cls = torch.optim.AdamW if self.decoupled else torch.optim.Adam
        return cls(params, lr=self.lr, betas=(self.beta1, self.beta2), weight_decay=self.weight_decay)
