"""Divergence: a run whose training broke never becomes a result.

The loop keeps each step's objective and the sum of its per-example losses on the device (a list of
0-dim tensors: no host synchronization inside an epoch) and checks them once, at the epoch's end, in one
transfer together with the finiteness of every parameter. An epoch fails when

* a step's objective was NaN or infinite;
* a parameter is NaN or infinite at the epoch's end (an overflowing gradient leaves the weights broken
  while the objective it came from was still finite);
* the epoch's mean per-example training loss exceeds ``factor × max(L₀, 1)``, where ``L₀`` is the mean
  per-example loss of the run's first step (the model at its initialization) and ``factor`` is
  ``train.divergence`` (default 1000; 0 turns this rule off). The per-example loss, not the weighted
  objective, is watched, so that the weights' scale (Group DRO, RGD, signed ``deo_mix`` weights) never
  moves the threshold; the floor of 1 keeps a model that starts near zero loss from being judged against
  a tiny reference. A classification loss that climbs a thousand times above its value at
  initialization has left any regime in which its metrics mean something: with cross-entropy on two
  classes the threshold is a mean loss of 1000, a mean logit margin of about -1000.

A failed epoch raises :class:`NonFiniteLoss` (or :class:`Diverged`) naming the first bad step, before
the epoch is evaluated or checkpointed, so that neither an evaluation line nor a checkpoint is ever
written from broken weights.

>>> import torch
>>> watch = Watch(factor=1000.0)
>>> tally = Tally(first_step=0)
>>> for loss in (0.75, 0.5):
...     tally.add(torch.tensor(loss), torch.tensor(loss * 4), 4)
>>> watch.check(tally, epoch=0, params=[torch.ones(3)])
[0.625]
>>> tally = Tally(first_step=2)
>>> tally.add(torch.tensor(5e3), torch.tensor(2e4), 4)
>>> watch.check(tally, epoch=1, params=[torch.ones(3)])  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
shiftkit.divergence.Diverged: the training loss diverged at step 2 (epoch 2): its mean 5e+03 ...
"""

from __future__ import annotations

import math
from typing import Iterable, List, Optional, Sequence

import torch
from torch import Tensor

from .errors import ShiftkitError

#: ``train.divergence``'s default: how far above its initial level the mean training loss may climb.
DEFAULT_FACTOR = 1000.0


class NonFiniteLoss(ShiftkitError):
    """Training broke: a non-finite objective or parameter. ``step`` and ``epoch`` (0-based) say where;
    ``at_start`` is true when the loss was already non-finite at the run's first step, before any update
    (then the loss's settings or the data are at fault, not the learning rate). ``what`` is the message
    without its hint, so that a caller that knows the run's settings can give a better one
    (:meth:`with_hint`)."""

    def __init__(self, what: str, hint: str, step: int, epoch: int, at_start: bool = False):
        super().__init__(f"{what}; {hint}")
        self.what, self.hint, self.step, self.epoch, self.at_start = what, hint, step, epoch, at_start

    def with_hint(self, hint: str) -> "NonFiniteLoss":
        return type(self)(self.what, hint, self.step, self.epoch, self.at_start)


class Diverged(NonFiniteLoss):
    """The mean training loss exploded far above its initial level (finite, but no longer training)."""


class Tally:
    """One epoch's per-step values, kept on the device until :meth:`Watch.check`: each step's objective,
    the sum of its per-example losses (0-dim tensors, or ``[S]`` for ``S`` ensemble members) and its
    batch size. ``first_step`` is the run's step number of the epoch's first step."""

    def __init__(self, first_step: int, objectives: Sequence[Tensor] = (), losses: Sequence[Tensor] = (),
                 sizes: Sequence[int] = ()):
        self.first_step = first_step
        self.objectives, self.losses, self.sizes = list(objectives), list(losses), list(sizes)

    def add(self, objective: Tensor, loss_sum: Tensor, size: int) -> None:
        self.objectives.append(objective.detach())
        self.losses.append(loss_sum.detach())
        self.sizes.append(int(size))

    def state_dict(self) -> dict:
        """What a checkpoint inside the epoch keeps (stacked, on the CPU)."""
        stack = (lambda values: torch.stack(values).cpu()) if self.sizes else (lambda values: torch.zeros(0))
        return {"first_step": self.first_step, "objectives": stack(self.objectives), "losses": stack(self.losses),
                "sizes": list(self.sizes)}

    @classmethod
    def from_state(cls, state: dict, device) -> "Tally":
        return cls(state["first_step"], list(state["objectives"].to(device)), list(state["losses"].to(device)),
                   state["sizes"])


def _finite_params(params: Sequence[Tensor], members: Optional[int]) -> Tensor:
    """Whether every parameter is finite: a 0-dim bool, or ``[S]`` (per member of stacked parameters).
    A NaN or infinity anywhere makes its tensor's sum non-finite, and one sum per tensor costs a fraction
    of an element-wise test (a sum overflows only for weights near float32's limit, which have diverged
    anyway)."""
    if not params:
        return torch.tensor(True) if members is None else torch.ones(members, dtype=torch.bool)
    # at least float32, so that the sum of a half-precision tensor cannot overflow where its values do not
    wide = [torch.promote_types(p.dtype, torch.float32) for p in params]
    if members is None:
        return torch.stack([p.detach().sum(dtype=t) for p, t in zip(params, wide)]).isfinite().all()
    sums = [p.detach().reshape(members, -1).sum(1, dtype=t) for p, t in zip(params, wide)]
    return torch.stack(sums).isfinite().all(0)


class Watch:
    """The divergence rule of this module for one run (or ``members`` stacked runs): ``check`` an epoch's
    :class:`Tally`. ``reference`` holds each member's ``L₀`` once the first epoch is checked, and is part
    of a checkpoint (``state_dict``) so that a resumed run judges its epochs exactly as before."""

    def __init__(self, factor: float = DEFAULT_FACTOR, members: Optional[int] = None,
                 who: Sequence[str] = ("",)):
        if not (math.isfinite(factor) and factor >= 0) or 0 < factor <= 1:
            raise ShiftkitError(f"train.divergence must be 0 (off) or a finite factor > 1, got {factor}")
        self.factor, self.members = float(factor), members
        self.who = list(who) if members is not None else [""]
        self.reference: List[Optional[float]] = [None] * (members or 1)

    def state_dict(self) -> dict:
        return {"reference": list(self.reference)}

    def load_state_dict(self, state: dict) -> None:
        if len(state["reference"]) != len(self.reference):
            raise ValueError(f"a divergence reference of {len(state['reference'])} members for {len(self.reference)}")
        self.reference = list(state["reference"])

    def clean(self, tally: Tally, params: Iterable[Tensor]) -> bool:
        """Whether a part of an epoch is fit to be checkpointed: every objective and parameter finite and
        no step's mean loss above the threshold. It raises nothing and changes nothing, so that whether a run
        fails never depends on when it happened to save; the epoch's :meth:`check` decides (one sync)."""
        if not tally.sizes:
            return True
        steps, members = len(tally.sizes), self.members or 1
        losses = torch.stack(tally.losses).float().reshape(steps, members)
        sizes = torch.tensor(tally.sizes, dtype=torch.float32, device=losses.device).unsqueeze(1)
        reference = torch.tensor([r if r is not None else math.nan for r in self.reference], device=losses.device)
        reference = torch.where(reference.isnan(), losses[0] / sizes[0], reference).clamp(min=1.0)
        calm = (losses / sizes <= self.factor * reference).all() if self.factor else torch.tensor(True)
        finite = torch.stack(tally.objectives).isfinite().all() & _finite_params(list(params), self.members).all()
        return bool(finite & calm.to(finite.device))

    def check(self, tally: Tally, epoch: int, params: Iterable[Tensor]) -> List[float]:
        """Raise if the epoch failed (module docstring); else return each member's mean objective over the
        epoch (the ``train_loss`` of its records). One device-to-host transfer."""
        members = self.members or 1
        params = list(params)
        steps = len(tally.sizes)
        if steps == 0:
            values = _finite_params(params, self.members).float().reshape(-1).tolist()
            objectives = losses = [[] for _ in range(members)]
        else:
            objectives_t = torch.stack(tally.objectives).float().reshape(steps, members)
            losses_t = torch.stack(tally.losses).float().reshape(steps, members)
            ok = _finite_params(params, self.members).float().reshape(members)
            flat = torch.cat([objectives_t.t().reshape(-1), losses_t.t().reshape(-1), ok]).tolist()  # the sync
            objectives = [flat[s * steps:(s + 1) * steps] for s in range(members)]
            losses = [flat[(members + s) * steps:(members + s + 1) * steps] for s in range(members)]
            values = flat[2 * members * steps:]
        means = []
        for s in range(members):
            self._check_member(s, tally, epoch, objectives[s], losses[s], values[s] > 0.5)
            total = sum(o * n for o, n in zip(objectives[s], tally.sizes))
            means.append(total / max(sum(tally.sizes), 1))
        return means

    def _check_member(self, s: int, tally: Tally, epoch: int, objectives: List[float], losses: List[float],
                      params_ok: bool) -> None:
        who, sizes = self.who[s], tally.sizes
        where = lambda t: f"step {tally.first_step + t} (epoch {epoch + 1})"  # noqa: E731
        bad = next((t for t, o in enumerate(objectives) if not math.isfinite(o)), None)
        if bad is not None:
            at_start = tally.first_step + bad == 0
            raise NonFiniteLoss(f"the training loss{who} became non-finite at {where(bad)}",
                                "the model diverged: try a lower optim.lr", tally.first_step + bad, epoch, at_start)
        if not params_ok:
            last = len(sizes) - 1
            raise NonFiniteLoss(f"the model's parameters{who} became non-finite by {where(max(last, 0))}",
                                "the gradients overflowed: try a lower optim.lr", tally.first_step + last, epoch)
        if not sizes:
            return
        if self.reference[s] is None:
            self.reference[s] = losses[0] / sizes[0]
        if self.factor == 0:
            return
        threshold = self.factor * max(self.reference[s], 1.0)
        mean = sum(losses) / sum(sizes)
        if mean > threshold:
            t = next((t for t, (l, n) in enumerate(zip(losses, sizes)) if l / n > threshold), len(sizes) - 1)
            raise Diverged(
                f"the training loss{who} diverged at {where(t)}: its mean {mean:.3g} over the epoch is more than"
                f" {self.factor:g} times max(1, its first step's {self.reference[s]:.3g}) (train.divergence)",
                "try a lower optim.lr", tally.first_step + t, epoch,
            )
