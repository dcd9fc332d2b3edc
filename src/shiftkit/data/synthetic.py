"""Synthetic data: [W]'s two Gaussians (docs/METHODS.md#data-two_gaussians)."""

from __future__ import annotations

import torch

from ..errors import ShiftkitError
from . import register
from .base import Split, Splits


def _truncated_gaussian(n: int, center, radius: float, gen: torch.Generator) -> torch.Tensor:
    """``N(0, I_2)`` points projected into the ball of ``radius``, then shifted to ``center``."""
    z = torch.randn(n, 2, generator=gen)
    z = z * (radius / z.norm(dim=1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0)
    return z + torch.tensor(center, dtype=z.dtype)


def _draw(n_minority: int, n_majority: int, radius: float, gen: torch.Generator) -> Split:
    x = torch.cat(
        [
            _truncated_gaussian(n_minority, (0.0, 5.0), radius, gen),
            _truncated_gaussian(n_majority, (5.0, 0.0), radius, gen),
        ]
    )
    y = torch.cat([torch.zeros(n_minority), torch.ones(n_majority)]).long()
    return Split(x, y, y.clone(), 2, 2)


@register("two_gaussians")
def two_gaussians(
    n_minority: int = 20,
    n_majority: int = 200,
    radius: float = 5.0,
    test_per_class: int = 500,
    seed: int = 1,
) -> Splits:
    """[W] Figure 1 (docs/METHODS.md#data-two_gaussians): minority class 0 around (0, 5), majority class 1 around (5, 0), each
    ``N(0, I_2)`` projected into the ball of ``radius``. The true boundary is ``x_1 = x_0``. Validation
    is a fresh draw with the training proportions; the test set is balanced. Groups are the classes.
    """
    if min(n_minority, n_majority, test_per_class) < 1 or radius <= 0:
        raise ShiftkitError("two_gaussians: counts must be >= 1 and radius > 0")
    gen = torch.Generator().manual_seed(seed)
    train = _draw(n_minority, n_majority, radius, gen)
    val = _draw(n_minority, n_majority, radius, gen)
    test = _draw(test_per_class, test_per_class, radius, gen)
    return Splits(train, val, test, info={"true_boundary": "x1 = x0"})
