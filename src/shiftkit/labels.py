"""What tells runs apart, said one way everywhere: progress lines, launcher lines, report rows and tables,
and the folders runs are written to.

A run's **method** is its ``name`` if it has one, else its loss, weighting and sampler with the options
that differ from their defaults (``poly(alpha=2)+iw``). Its **label** adds the preset it came from
(``experiment=NAME``) and the scale of the reproduction it belongs to, so that four presets named
``Poly+IW`` print as four labels. Its **data** label is the dataset with the options that change the
data (``tabular(path=adult/train.csv)``, ``digits_binary(imbalance=100)``): a report prints one table per
data label, and a run's folder is ``<out>/<data>/<label>/seed<N>-<hash>``.

>>> cfg = {"name": "Poly+IW", "preset": "wang_poly_iw", "scale": "tiny", "seed": 0,
...        "data": {"name": "digits_binary", "imbalance": 100.0}}
>>> label(cfg)
'Poly+IW [wang_poly_iw, tiny]'
>>> data(cfg)
'digits_binary(imbalance=100)'
>>> label(cfg, with_data=True)
'Poly+IW [wang_poly_iw, tiny] on digits_binary(imbalance=100)'
>>> folder(cfg).as_posix()
'digits_binary(imbalance=100)/Poly+IW@wang_poly_iw@tiny'
"""

from __future__ import annotations

import functools
import re
from pathlib import Path, PurePath
from typing import Any, Dict, List, Optional

#: Groups whose non-default options enter the method, in label order.
METHOD_GROUPS = ("loss", "weighting", "sampler")
#: Top-level keys that name a run without changing what it computes: in its label and folder, not in its
#: identity (its hash).
LABEL_KEYS = ("preset", "scale")
#: Characters kept in folder names; others become ``_``.
_UNSAFE = re.compile(r"[^A-Za-z0-9_.,=+()\[\]@-]+")
#: The longest folder name a label makes (the hash after it keeps folders apart).
_LONGEST = 120


def short(value: Any) -> str:
    """Compact, quote-free rendering for labels: 2.0 -> 2, [a, b] -> [a,b], {a: {b: 1}} -> a.b=1.

    >>> short(2.0), short([1, 2.5]), short({"width": 16}), short("a b")
    ('2', '[1,2.5]', 'width=16', 'ab')
    """
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(short(v) for v in value) + "]"
    if isinstance(value, dict):
        return ",".join(f"{k}.{short(v)}" if isinstance(v, dict) else f"{k}={short(v)}" for k, v in value.items())
    return str(value).replace(" ", "")


def _path_like(key: str, value: Any) -> bool:
    return isinstance(value, str) and ("/" in value or "\\" in value or key in ("root", "path", "file", "groups"))


def _value(key: str, value: Any) -> str:
    """An option's value as labels show it: a file or folder by its last two path components."""
    if _path_like(key, value):
        parts = PurePath(value.replace("\\", "/")).parts
        return "/".join(p for p in parts[-2:] if p not in ("/",)) or value
    return short(value)


@functools.lru_cache(maxsize=None)
def _defaults(group: str, name: str) -> Dict[str, Any]:
    """A group member's defaults (cached: a report labels every record; read, never changed)."""
    from omegaconf import OmegaConf

    from .config import schema

    return OmegaConf.to_container(OmegaConf.structured(schema(group, name)))


def changed(group: str, node: Dict[str, Any]) -> List[str]:
    """A group's options that differ from their defaults, as ``key=value``."""
    defaults = _defaults(group, node["name"])
    return [f"{k}={_value(k, v)}" for k, v in node.items() if k != "name" and defaults.get(k) != v]


#: Procedures a label leaves out: a plain run, and AutoBalance, whose loss names it (labels and folders
#: of earlier runs stay as they were).
_UNNAMED_PROCEDURES = ("plain", "autobalance")


def _with_options(group: str, node: Dict[str, Any]) -> str:
    options = changed(group, node)
    return f"{node['name']}({','.join(options)})" if options else node["name"]


def method(cfg: Dict[str, Any], options: bool = True) -> str:
    """``name`` if given, else the loss, weighting, (if any) sampler and augmentation with their changed options,
    e.g. ``poly(alpha=2)+iw(exponent=1.5)``; with ``options=False`` the names alone (``poly+iw``)."""
    if cfg.get("name"):
        return str(cfg["name"])
    shown = _with_options if options else (lambda group, node: node["name"])
    parts = [shown(g, cfg[g]) for g in METHOD_GROUPS if not (g == "sampler" and cfg[g]["name"] == "none")]
    augment = cfg.get("augment") or {"name": "none"}
    if augment["name"] != "none":  # e.g. ce+erm+policy(per=shared)
        parts.append(shown("augment", augment))
    procedure = cfg.get("procedure") or {"name": "plain"}
    if procedure["name"] not in _UNNAMED_PROCEDURES:  # e.g. jtt:ce+erm
        return f"{shown('procedure', procedure)}:" + "+".join(parts)
    return "+".join(parts)


def data(cfg: Dict[str, Any]) -> str:
    """The dataset with the options that differ from its defaults (paths by their last two parts)."""
    return _with_options("data", cfg["data"])


def _tags(cfg: Dict[str, Any]) -> List[str]:
    """The run's preset and scale, those it has."""
    return [str(cfg[k]) for k in LABEL_KEYS if cfg.get(k)]


def label(cfg: Dict[str, Any], with_data: bool = False, method_text: Optional[str] = None) -> str:
    """The run's label: its method, then in brackets its preset and reproduction scale where it has them;
    ``with_data`` adds ``on <data>`` when the data's options are not the defaults. ``method_text`` stands
    for the method where a record already holds it."""
    text = method(cfg) if method_text is None else method_text
    tags = _tags(cfg)
    if tags:
        text += f" [{', '.join(tags)}]"
    if with_data and "data" in cfg:
        shown = data(cfg)
        if shown != cfg["data"]["name"]:
            text += f" on {shown}"
    return text


def slug(text: str) -> str:
    """``text`` as one folder name: unsafe characters become ``_``, and it is cut to a safe length."""
    name = _UNSAFE.sub("_", text).strip("_") or "_"
    return name if len(name) <= _LONGEST else name[: _LONGEST - 1] + "~"


def folder(cfg: Dict[str, Any]) -> Path:
    """``<data>/<method>[@preset][@scale]``: where below ``out`` a run's seeds are written."""
    return Path(slug(data(cfg))) / slug("@".join([method(cfg), *_tags(cfg)]))
