"""shiftkit: classifiers that do well on every class and group, not only on average.

>>> from shiftkit import losses, weighting, metrics, data
>>> "poly" in losses.names() and "iw" in weighting.names()
True
"""

__version__ = "0.1.0"

from . import data, losses, metrics, models, optim, sampling, weighting  # noqa: E402

__all__ = ["data", "losses", "metrics", "models", "optim", "sampling", "weighting", "__version__"]
