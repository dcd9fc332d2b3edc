"""Named registries: one extension is one decorated class or function in one file.

>>> REG = Registry("toy")
>>> @REG.register("double")
... class Double:
...     def __init__(self, factor: float = 2.0):
...         self.factor = factor
>>> REG.names()
['double']
>>> REG.build("double", factor=3.0, class_counts=[5, 1]).factor   # data statistics ignored if unused
3.0
>>> REG.build("triple")
Traceback (most recent call last):
...
shiftkit.errors.ShiftkitError: unknown toy 'triple'; choose one of: double

Data statistics (``class_counts``, ``group_counts`` and the other names in :data:`DATA_STATISTICS`) are
passed to a constructor only when its signature names them (DESIGN.md: "every build accepts class_counts
and group_counts and ignores what a method does not use"). Hyperparameters are checked strictly: an
option a method does not have is an error that lists the options it has.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, List

from .errors import ShiftkitError

#: Keyword arguments computed from the data at build time, never written into configs.
DATA_STATISTICS = ("class_counts", "group_counts", "num_classes", "num_groups", "input_shape")


def hyperparameters(fn: Callable) -> Dict[str, inspect.Parameter]:
    """The configurable keyword parameters of a constructor: its signature minus data statistics."""
    target = fn.__init__ if inspect.isclass(fn) else fn
    params = list(inspect.signature(target).parameters.values())
    if inspect.isclass(fn):
        params = params[1:]  # self
    return {
        p.name: p
        for p in params
        if p.name not in DATA_STATISTICS and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }


class Registry:
    """A mapping from names to constructors, with strict, friendly building."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: Dict[str, Callable] = {}

    def register(self, name: str) -> Callable[[Callable], Callable]:
        def decorator(obj: Callable) -> Callable:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = obj
            return obj

        return decorator

    def names(self) -> List[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def get(self, name: str) -> Callable:
        if name not in self._items:
            raise ShiftkitError(
                f"unknown {self.kind} '{name}'; choose one of: {', '.join(self.names())}"
            )
        return self._items[name]

    def build(self, name: str, **kwargs: Any) -> Any:
        """Construct ``name`` with its hyperparameters and whichever data statistics it accepts."""
        fn = self.get(name)
        options = hyperparameters(fn)
        target = fn.__init__ if inspect.isclass(fn) else fn
        accepted = set(inspect.signature(target).parameters)
        for key in kwargs:
            if key not in DATA_STATISTICS and key not in options:
                listed = ", ".join(options) or "none"
                raise ShiftkitError(f"{self.kind} '{name}' has no option '{key}'; its options: {listed}")
        used = {k: v for k, v in kwargs.items() if k in accepted}
        return fn(**used)
