"""Named reproductions: the default demo (:mod:`.demo`) and the papers' figures and tables, one
registered reproduction per file (``shiftkit reproduce NAME``; :mod:`.reproduction`). Every module of
this package is imported here, so a new reproduction needs nothing but its file and its decorator."""

import importlib
import pkgutil

from .reproduction import REPRODUCTIONS, SCALES, Claim, Context, Reproduction, Summary, names, register, reproduce

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["REPRODUCTIONS", "SCALES", "Claim", "Context", "Reproduction", "Summary", "names", "register", "reproduce"]
