"""Shared test data helpers."""

import torch

from shiftkit.data.base import Split, Splits


def with_attribute(splits: Splits, seed: int = 0) -> Splits:
    """Binary-label splits with groups g = 2y + a for a pseudo-random bit a, so that every weighting
    applies (``deo_mix`` needs that layout) while the images and labels stay the same."""
    gen = torch.Generator().manual_seed(seed)

    def tag(s: Split) -> Split:
        return Split(s.x, s.y, 2 * s.y + torch.randint(0, 2, s.y.shape, generator=gen), 2, 4)

    return Splits(tag(splits.train), tag(splits.val), tag(splits.test), info=splits.info, pipeline=splits.pipeline)
