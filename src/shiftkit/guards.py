"""Argument checks of the losses, weightings and metrics: a one-line :class:`ShiftkitError` that names the
argument, instead of an ``IndexError`` deep in PyTorch, a device-side assert, or a silently wrong result
(an index past a table wraps or reads the wrong entry; ``[B, 1]`` against ``[B]`` broadcasts).

Two kinds of check, by cost:

- **Shapes and dtypes** (``logits [B, K]``, ``losses [B]``, ``y [B]`` and ``g [B]`` integer ids) read
  only tensor metadata, on the host: free, always on.
- **Ranges** (``0 <= y < K``, ``0 <= g < G``) read the values: one device-to-host synchronization per
  call on a GPU (the ids' minima and maxima in one transfer). On by default, for users' own loops, and
  skipped inside :func:`trusted`, which shiftkit's own loops enter because their ids were checked once,
  when the splits were built (:class:`~shiftkit.data.base.Split` validates ``y`` and ``g``), so that a
  training step keeps no host synchronization (docs/PERFORMANCE.md).

>>> import torch
>>> from shiftkit import losses
>>> losses.build("ce")(torch.zeros(2, 3), torch.tensor([0, 3]))
Traceback (most recent call last):
...
shiftkit.errors.ShiftkitError: loss 'ce': y must lie in [0, 3) (3 classes), found 0..3
>>> with trusted():   # validated data: no range check, no host synchronization
...     losses.build("ce")(torch.zeros(2, 3), torch.tensor([0, 2])).shape
torch.Size([2])
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator, List, Optional, Tuple

import torch
from torch import Tensor

from .errors import ShiftkitError

# A context variable, not a global: a block entered in one thread (or task) does not switch off the
# checks of another.
_TRUSTED: ContextVar[bool] = ContextVar("shiftkit_guards_trusted", default=False)


@contextmanager
def trusted() -> Iterator[None]:
    """Skip the range checks inside the block (shape checks still run); nests, and restores on exit.
    Also a decorator, ``@guards.trusted()``, for a whole loop function.

    For loops over data whose ids were validated once (shiftkit's ``fit`` over its
    :class:`~shiftkit.data.base.Split` s); an id out of range there is then undefined behaviour, as in
    PyTorch (an ``IndexError`` on the CPU, a device-side assert on a GPU).
    """
    token = _TRUSTED.set(True)
    try:
        yield
    finally:
        _TRUSTED.reset(token)


def _traced(tensor: Tensor) -> bool:
    """Whether ``tensor`` is traced by ``torch.func`` (under ``vmap`` or ``grad``): its values cannot be
    read on the host, so only its shape is checked (the caller's unbatched call checks its ranges)."""
    return torch._C._functorch.is_functorch_wrapped_tensor(tensor)


def _shape(tensor: Tensor) -> List[int]:
    return list(tensor.shape)


def _ids(where: str, name: str, ids: Tensor, what: str, batch_name: str, batch: Tensor) -> None:
    """``ids`` must be a 1-D integer tensor with one entry per row of ``batch``."""
    if ids.dtype == torch.bool or ids.is_floating_point() or ids.is_complex():
        raise ShiftkitError(f"{where}: {name} must hold integer {what} ids, got dtype {ids.dtype}")
    if ids.shape != batch.shape[:1]:
        rows = "rows" if batch.dim() == 2 else "entries"
        raise ShiftkitError(f"{where}: {name} must be [B] with one {what} per example, B = {batch.shape[0]} as "
                            f"the {rows} of {batch_name} {_shape(batch)}, got shape {_shape(ids)}")


def check(
    where: str,
    y: Tensor,
    g: Optional[Tensor] = None,
    *,
    logits: Optional[Tensor] = None,
    losses: Optional[Tensor] = None,
    preds: Optional[Tensor] = None,
    num_classes: Optional[int] = None,
    num_groups: Optional[int] = None,
) -> None:
    """Check one call's arguments; ``where`` (``"loss 'ce'"``) starts the message.

    The batch is the rows of ``logits`` ``[B, K]`` or the entries of ``losses`` or ``preds`` ``[B]``
    (one of the three); ``y`` and ``g`` (if given) must be integer ids, one per example. ``num_classes`` (for
    ``logits``: ``K`` unless given) and ``num_groups`` bound ``y`` and ``g``, unless :func:`trusted`; a
    bound of ``None`` means the caller does not use those ids, and they are not read.
    """
    if logits is not None:
        if logits.dim() != 2:
            raise ShiftkitError(f"{where}: logits must be [B, K], one row of K class scores per example, "
                                f"got shape {_shape(logits)}")
        name, batch = "logits", logits
        num_classes = logits.shape[1] if num_classes is None else num_classes
    else:
        name, batch = ("losses", losses) if losses is not None else ("preds", preds)
        if batch.dim() != 1:
            raise ShiftkitError(f"{where}: {name} must be [B], one per example, got shape {_shape(batch)}")
    _ids(where, "y", y, "class", name, batch)
    if g is not None:
        _ids(where, "g", g, "group", name, batch)
    if batch.shape[0] == 0 or _TRUSTED.get() or _traced(y):
        return
    bounded: List[Tuple[str, Tensor, int, str]] = []
    if num_classes is not None:
        bounded.append(("y", y, num_classes, "classes"))
    if num_groups is not None and g is not None:
        bounded.append(("g", g, num_groups, "groups"))
    if not bounded:
        return
    # The one host synchronization: every minimum and maximum in one transfer.
    ends = torch.stack([e for _, ids, _, _ in bounded for e in torch.aminmax(ids.long())]).tolist()
    for (name, _, bound, what), lo, hi in zip(bounded, ends[::2], ends[1::2]):
        if lo < 0 or hi >= bound:
            raise ShiftkitError(f"{where}: {name} must lie in [0, {bound}) ({bound} {what}), found {lo}..{hi}")
