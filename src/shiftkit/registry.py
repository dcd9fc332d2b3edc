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
passed to a constructor only when its signature names them (every build accepts class_counts
and group_counts and ignores what a method does not use, so a generic loop always passes both). Hyperparameters are checked strictly: an
option a method does not have is an error that lists the options it has.

Registering stamps the name on the class (or function): ``obj.name`` is its registered name, so a method
never spells it a second time; a class that sets a different ``name`` of its own is refused. A
:class:`~shiftkit.errors.ShiftkitError` raised by a constructor reaches the caller prefixed with the
registry's kind and the name (``loss 'la': tau must be ...``), unless the message already says where it
comes from: it starts with that prefix, with the group's config key (``optim.lr ...``, ``logger=...``) or
with the name itself (``celeba: ...``).

>>> Double.name
'double'
>>> @REG.register("strict")
... class Strict:
...     def __init__(self, size: int = 1):
...         if size < 1:
...             raise ShiftkitError(f"size must be >= 1, got {size}")
>>> REG.build("strict", size=0)
Traceback (most recent call last):
...
shiftkit.errors.ShiftkitError: toy 'strict': size must be >= 1, got 0

A registry may have *shared* options, which every name takes: ``shared(name, obj, **options)`` runs after
each build and returns the object to use (models: ``weights`` and ``freeze``, :mod:`shiftkit.models.weights`;
datasets: ``features_from``, :mod:`shiftkit.data.features`). Its keyword parameters after the first two are the
shared options; they are configured like a name's own.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, List, Optional

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
    """A mapping from names to constructors, with strict, friendly building (and optional shared options,
    see the module docstring)."""

    def __init__(self, kind: str, shared: Optional[Callable[..., Any]] = None):
        self.kind = kind
        self.shared = shared
        self._items: Dict[str, Callable] = {}

    def register(self, name: str) -> Callable[[Callable], Callable]:
        def decorator(obj: Callable) -> Callable:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            clash = set(hyperparameters(obj)) & set(self.shared_options())
            if clash:
                raise ValueError(f"{self.kind} '{name}' has its own option(s) {sorted(clash)}, which every {self.kind} shares")
            own = getattr(obj, "__dict__", {}).get("name", name)
            if own != name:
                says = "its class says" if inspect.isclass(obj) else "it says"
                raise ValueError(f"{self.kind} '{name}': {getattr(obj, '__qualname__', obj)} is registered as '{name}' "
                                 f"but {says} name = {own!r}; remove its name attribute (registering sets it)")
            _stamp(obj, name)
            self._items[name] = obj
            return obj

        return decorator

    def prefixed(self, name: str, message: str) -> str:
        """``message`` of a constructor of ``name``, prefixed ``<kind> '<name>': `` unless it already says
        where it comes from (the prefix, the group's config key, or the name itself, see the module docstring).

        >>> reg = Registry("loss")
        >>> reg.prefixed("la", "tau must be >= 0, got -1")
        "loss 'la': tau must be >= 0, got -1"
        >>> reg.prefixed("la", "loss 'la' needs class_counts")
        "loss 'la' needs class_counts"
        """
        here = f"{self.kind} '{name}'"
        if message.startswith((here, f"{self.kind}.", f"{self.kind}=", f"{name}:", f"{name} ")):
            return message
        return f"{here}: {message}"

    def shared_options(self) -> Dict[str, inspect.Parameter]:
        """The options every name takes (the shared function's keyword parameters after ``name, obj``)."""
        if self.shared is None:
            return {}
        params = list(inspect.signature(self.shared).parameters.values())[2:]
        return {p.name: p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}

    def options(self, name: str) -> Dict[str, inspect.Parameter]:
        """Every configurable option of ``name``: its own hyperparameters, then the shared ones."""
        return {**hyperparameters(self.get(name)), **self.shared_options()}

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
        options, shared = self.options(name), self.shared_options()
        target = fn.__init__ if inspect.isclass(fn) else fn
        accepted = set(inspect.signature(target).parameters)
        for key in kwargs:
            if key not in DATA_STATISTICS and key not in options:
                listed = ", ".join(options) or "none"
                raise ShiftkitError(f"{self.kind} '{name}' has no option '{key}'; its options: {listed}")
        try:
            obj = fn(**{k: v for k, v in kwargs.items() if k in accepted and k not in shared})
        except ShiftkitError as error:
            if error.args and isinstance(error.args[0], str):
                error.args = (self.prefixed(name, error.args[0]),) + error.args[1:]
            raise
        if self.shared is None:
            return obj
        return self.shared(name, obj, **{k: v for k, v in kwargs.items() if k in shared})


def _stamp(obj: Callable, name: str) -> None:
    """Set ``obj.name`` to its registered name, where ``obj`` takes attributes (classes and functions do;
    built-in types do not, and are left as they are)."""
    if not (inspect.isclass(obj) or inspect.isfunction(obj)):
        return
    try:
        obj.name = name
    except (AttributeError, TypeError):
        pass
