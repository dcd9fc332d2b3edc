"""Products of weighting schemes: ``chain(a, b)`` weighs each example by ``a``'s weight times ``b``'s.

Each member keeps its own state (the chain's state nests them as ``parts.0.<key>``, ``parts.1.<key>``, ...,
as ``state_dict`` does, and ``update`` threads each through its member), sees the same detached losses,
and receives the loop's epoch hook.

>>> import torch
>>> from shiftkit import weighting
>>> both = weighting.chain(weighting.build("iw", group_counts=[3, 1]), weighting.build("erm"))
>>> both.weights(torch.ones(2), torch.tensor([0, 1]), torch.tensor([0, 1]))
tensor([0.6667, 2.0000])
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Dict, List, Mapping, Optional, Sequence

from torch import Tensor, nn

from ..errors import ShiftkitError
from . import WEIGHTINGS, Weighting, register


class Chain(Weighting):
    """The product of the weights of ``parts``."""

    def __init__(self, *parts: Weighting):
        super().__init__()
        if not parts:
            raise ShiftkitError("a chain of weightings needs at least one scheme")
        self.parts = nn.ModuleList(parts)

    def _split(self, state: Dict[str, Tensor]) -> List[Dict[str, Tensor]]:
        """Each part's state, from the chain's (keys ``parts.<i>.<key>``, as in ``state_dict``)."""
        parts = [{} for _ in self.parts]
        for key, value in state.items():
            _, i, rest = key.split(".", 2)
            parts[int(i)][rest] = value
        return parts

    @staticmethod
    def _join(states: List[Dict[str, Tensor]]) -> Dict[str, Tensor]:
        return {f"parts.{i}.{key}": value for i, state in enumerate(states) for key, value in state.items()}

    def update(self, losses: Tensor, y: Tensor, g: Optional[Tensor], state):
        return self._join([part.update(losses, y, g, s) for part, s in zip(self.parts, self._split(state))])

    def begin_epoch(self, epoch: int, state):
        return self._join([part.begin_epoch(epoch, s) for part, s in zip(self.parts, self._split(state))])

    def weigh(self, losses: Tensor, y: Tensor, g: Optional[Tensor], state) -> Tensor:
        states = self._split(state)
        w = self.parts[0].weigh(losses, y, g, states[0])
        for part, s in zip(self.parts[1:], states[1:]):
            w = w * part.weigh(losses, y, g, s)
        return w


def chain(*schemes: Weighting) -> Chain:
    """Multiply the weights of several schemes, e.g. ``chain(build("iw"), build("group_dro"))``."""
    return Chain(*schemes)


@register("chain")
def chained(
    schemes: List[str] = ("iw", "group_dro"),
    options: Mapping[str, Any] = MappingProxyType({}),
    class_counts: Optional[Sequence[int]] = None,
    group_counts: Optional[Sequence[int]] = None,
) -> Chain:
    """Build a chain by names; ``options`` maps a member's name to its hyperparameters. From the
    command line: ``weighting=chain weighting.schemes=[iw,group_dro] +weighting.options.iw.exponent=2``."""
    options = dict(options)
    unknown = set(options) - set(schemes)
    if unknown:
        raise ShiftkitError(f"options given for {sorted(unknown)}, which are not in {list(schemes)}")
    if "chain" in schemes:
        raise ShiftkitError("schemes cannot contain another chain")
    return Chain(
        *(WEIGHTINGS.build(name, class_counts=class_counts, group_counts=group_counts, **dict(options.get(name) or {}))
          for name in schemes)
    )
