"""Plugins: modules of one's own that register methods, loaded wherever shiftkit runs (docs/PLUGINS.md).

A plugin is any importable module that registers methods when it is imported
(``@shiftkit.losses.register("mine")`` and the like). :func:`load` imports

- every module named in ``$SHIFTKIT_PLUGINS`` (comma-separated: ``mypkg.methods,other.losses``), and
- every entry point of the group ``shiftkit.plugins`` of the installed distributions (its value is a module,
  or ``module:object``).

The command line calls it before it reads its arguments, and so does every job of a launcher sweep
(:func:`shiftkit.launch.task`), so that ``loss=mine`` composes, validates and builds in the worker processes
too. Loading is idempotent: a module is imported once per process, however often :func:`load` runs. A
module that fails to import stops with one :class:`~shiftkit.errors.ShiftkitError` line that names it,
where it was named, and the original error.

>>> names_in("mypkg.methods, other.losses,,")
['mypkg.methods', 'other.losses']
>>> import os
>>> os.environ[ENV] = "no_such_plugin_module"
>>> load()
Traceback (most recent call last):
...
shiftkit.errors.ShiftkitError: plugin 'no_such_plugin_module' (from $SHIFTKIT_PLUGINS) could not be imported: ModuleNotFoundError: No module named 'no_such_plugin_module'
>>> del os.environ[ENV]
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from typing import Callable, Iterator, List, Optional, Set, Tuple

from .errors import ShiftkitError

#: The environment variable that names plugin modules, comma-separated.
ENV = "SHIFTKIT_PLUGINS"
#: The entry-point group that installed distributions declare their plugins in.
GROUP = "shiftkit.plugins"

#: What this process has loaded: module names (``$SHIFTKIT_PLUGINS``) and entry-point values.
_done: Set[str] = set()
_order: List[str] = []


def names_in(value: Optional[str]) -> List[str]:
    """The module names of a ``$SHIFTKIT_PLUGINS`` value: comma-separated, spaces and empty entries ignored."""
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def _entry_point_origin(ep: importlib.metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    of = f" of {dist.metadata['Name']} {dist.version}" if dist is not None else ""
    return f"entry point '{ep.name}'{of} in group {GROUP}"


def _candidates() -> Iterator[Tuple[str, str, Callable[[], object]]]:
    """``(key, origin, loader)`` of every plugin named now: the environment's first, then entry points."""
    for module in names_in(os.environ.get(ENV)):
        yield module, f"from ${ENV}", lambda module=module: importlib.import_module(module)
    for ep in importlib.metadata.entry_points(group=GROUP):
        yield ep.value, _entry_point_origin(ep), ep.load


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def load() -> List[str]:
    """Import every plugin not loaded yet (``$SHIFTKIT_PLUGINS``, then the ``shiftkit.plugins`` entry
    points); return those this call loaded. A plugin that fails to import raises one-line
    :class:`~shiftkit.errors.ShiftkitError`; it is tried again by the next call."""
    new = []
    for key, origin, loader in _candidates():
        if key in _done:
            continue
        try:
            loader()
        except Exception as exc:
            raise ShiftkitError(f"plugin '{key}' ({origin}) could not be imported: {_first_line(exc)}") from exc
        _done.add(key)
        _order.append(key)
        new.append(key)
    return new


def loaded() -> List[str]:
    """Every plugin this process has loaded, in the order it was loaded (for diagnostics)."""
    return list(_order)
