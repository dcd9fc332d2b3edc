"""The on-device input pipeline: normalization, padded random crop and flip, batched and seeded."""

import pytest
import torch
import torch.nn.functional as F

from shiftkit.data.pipeline import Pipeline
from shiftkit.errors import ShiftkitError


def _images(n=6, c=3, h=5, w=7, seed=0):
    return torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_normalization_per_channel():
    x = _images()
    out = Pipeline(mean=[0.1, 0.2, 0.3], std=[0.5, 0.25, 2.0])(x)
    expected = (x.float() / 255 - torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)) / torch.tensor([0.5, 0.25, 2.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(out, expected)
    assert torch.equal(Pipeline()(torch.ones(2, 3)), torch.ones(2, 3))  # float features pass through


def test_crop_is_a_window_of_the_padded_image_and_flip_mirrors():
    x = _images().float()
    p = 2
    out = Pipeline(crop_padding=p)(x, train=True, generator=torch.Generator().manual_seed(1))
    padded = F.pad(x, (p, p, p, p))
    for i in range(len(x)):  # the reference: some window of the padded image, per example
        windows = [padded[i, :, dy : dy + 5, dx : dx + 7] for dy in range(2 * p + 1) for dx in range(2 * p + 1)]
        assert any(torch.equal(out[i], win) for win in windows)
    flipped = Pipeline(flip=True)(x, train=True, generator=torch.Generator().manual_seed(3))
    for i in range(len(x)):
        assert torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(2))


def test_augmentation_is_seeded_and_only_in_training():
    x = _images(n=64)
    p = Pipeline(crop_padding=4, flip=True)
    a = p(x, train=True, generator=torch.Generator().manual_seed(5))
    b = p(x, train=True, generator=torch.Generator().manual_seed(5))
    c = p(x, train=True, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(p(x, train=False), x.float() / 255)


def test_bad_pipelines():
    with pytest.raises(ShiftkitError):
        Pipeline(mean=[0.5])
    with pytest.raises(ShiftkitError):
        Pipeline(mean=[0.5], std=[0.0])
    with pytest.raises(ShiftkitError, match="images"):
        Pipeline(flip=True)(torch.zeros(3, 4), train=True)
