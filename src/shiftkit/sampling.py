"""Index samplers: which training examples enter each epoch, in which order (docs/METHODS.md#samplers).

A sampler never mutates a dataset; it returns indices into the training split, drawn with the run's
generator (so a seed fixes them). ``none`` is the plain shuffled epoch of the [W] code (``shuffle=True``,
docs/METHODS.md#sampler-none); ``undersample``, ``resample`` and ``balanced`` change which examples are seen, by group
(default) or by class, and combine with any loss and weighting.

>>> import torch
>>> y = torch.tensor([0, 0, 0, 0, 1])
>>> gen = torch.Generator().manual_seed(0)
>>> sorted(build("none").epoch(y, y, gen).tolist())
[0, 1, 2, 3, 4]
>>> sorted(torch.bincount(y[build("balanced").epoch(y, y, gen)]).tolist())   # 5 draws, as equal as can be
[2, 3]
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .errors import ShiftkitError
from .registry import Registry

SAMPLERS = Registry("sampler")
register = SAMPLERS.register
names = SAMPLERS.names


def build(name: str, **kwargs) -> "Sampler":
    return SAMPLERS.build(name, **kwargs)


class Sampler:
    """Base class: ``epoch(y, g, generator) -> Tensor`` of training indices for one epoch.

    ``by`` chooses the categories a sampler balances: ``"group"`` (the example's group, which is its
    class where a dataset has no attribute) or ``"class"``.
    """

    def __init__(self, by: str = "group"):
        if by not in ("group", "class"):
            raise ShiftkitError(f"by must be 'group' or 'class', got '{by}'")
        self.by = by

    def categories(self, y: Tensor, g: Tensor) -> Tensor:
        return y if self.by == "class" else g

    def epoch(self, y: Tensor, g: Tensor, generator: torch.Generator) -> Tensor:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Samplers without state have nothing to restore."""


def _inverse_frequency(cats: Tensor) -> Tensor:
    """``1 / n_{c(i)}`` per example: equal total mass per present category."""
    counts = torch.bincount(cats)
    return 1.0 / counts[cats].double()


@register("none")
class Shuffle(Sampler):
    """Every training example once per epoch, in a fresh random order."""

    def __init__(self):
        super().__init__("group")

    def epoch(self, y: Tensor, g: Tensor, generator: torch.Generator) -> Tensor:
        return torch.randperm(y.shape[0], generator=generator)


@register("undersample")
class Undersample(Sampler):
    """[W]'s undersampling (docs/METHODS.md#sampler-undersample): keep example ``i`` iff ``U_i <= n_min / n_{c(i)}``.

    Each category keeps ``n_min`` examples in expectation (the counts are random, as in the [W] code).
    The subset is drawn once, at the first epoch, from the run's generator, then reshuffled every epoch;
    it is never redrawn. No reweighting is implied: combine with ``weighting=erm`` for [W]'s CE+US.
    """

    def __init__(self, by: str = "group"):
        super().__init__(by)
        self.kept: Optional[Tensor] = None

    def epoch(self, y: Tensor, g: Tensor, generator: torch.Generator) -> Tensor:
        if self.kept is None:
            cats = self.categories(y, g)
            counts = torch.bincount(cats)
            keep_prob = counts[counts > 0].min().double() / counts[cats].double()
            self.kept = torch.nonzero(torch.rand(len(cats), generator=generator, dtype=torch.float64) <= keep_prob).squeeze(1)
        return self.kept[torch.randperm(len(self.kept), generator=generator)]

    def state_dict(self) -> dict:
        return {"kept": self.kept}

    def load_state_dict(self, state: dict) -> None:
        self.kept = state["kept"]


@register("resample")
class Resample(Sampler):
    """Draw ``N`` examples i.i.d. with replacement, ``P(i) ∝ 1 / n_{c(i)}`` (the [W] code's ``weighted``
    sampler / ``resampled`` wrapper; [Z]'s IW by sampling; docs/METHODS.md#sampler-resample): every category is equally likely
    per draw, and an epoch has the size of the training set."""

    def epoch(self, y: Tensor, g: Tensor, generator: torch.Generator) -> Tensor:
        p = _inverse_frequency(self.categories(y, g))
        return torch.multinomial(p, len(p), replacement=True, generator=generator)


@register("balanced")
class Balanced(Sampler):
    """Stratified balanced epochs: each present category contributes ``N / C`` examples (the remainder
    to randomly chosen categories), taken from shuffled passes over the category (so a small category's
    examples repeat as evenly as possible), then shuffled together. Unlike ``resample`` the per-epoch
    counts are exact."""

    def epoch(self, y: Tensor, g: Tensor, generator: torch.Generator) -> Tensor:
        cats = self.categories(y, g)
        present = torch.unique(cats)
        n = len(cats)
        quota = torch.full((len(present),), n // len(present), dtype=torch.long)
        quota[torch.randperm(len(present), generator=generator)[: n % len(present)]] += 1
        chosen = []
        for c, q in zip(present.tolist(), quota.tolist()):  # a loop over categories, not examples
            members = torch.nonzero(cats == c).squeeze(1)
            reps = -(-q // len(members))
            pool = torch.cat([members[torch.randperm(len(members), generator=generator)] for _ in range(reps)])
            chosen.append(pool[:q])
        picked = torch.cat(chosen)
        return picked[torch.randperm(n, generator=generator)]
