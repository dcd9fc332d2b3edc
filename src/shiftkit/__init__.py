"""shiftkit: classifiers that do well on every class and group, not only on average.

>>> from shiftkit import losses, weighting, metrics, data
>>> "poly" in losses.names() and "iw" in weighting.names()
True

The subpackages load when first used (``shiftkit.losses``, ``from shiftkit import data``), so that the
command line starts, and answers Ctrl-C, before PyTorch has loaded.
"""

import importlib

__version__ = "0.1.0"

__all__ = ["augment", "data", "losses", "metrics", "models", "optim", "sampling", "weighting", "__version__"]
#: Names that are functions, loaded on first use like the subpackages.
_FUNCTIONS = ["load"]


def __getattr__(name: str):
    if name == "load":  # shiftkit.load(run_dir): a finished run's model (shiftkit.inference)
        return importlib.import_module(".inference", __name__).load
    if name in __all__:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'shiftkit' has no attribute '{name}'")


def __dir__():
    return sorted([*globals(), *__all__, *_FUNCTIONS])
