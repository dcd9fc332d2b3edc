"""The batched random resized crop (group_DRO's Waterbirds / CelebA augmentation): boxes drawn as torchvision's
``RandomResizedCrop.get_params``, bilinear resampling as crop-then-``interpolate``, seeding, errors, builders."""

import dataclasses
import json
import math
import random

import pytest
import torch
import torch.nn.functional as F

from shiftkit import data
from shiftkit.data.pipeline import Pipeline, resample_boxes, sample_boxes
from shiftkit.errors import ShiftkitError
from test_data_files import _celeba, _waterbirds

WATERBIRDS_CROP = [0.7, 1.0, 0.75, 4 / 3]  # group_DRO data/cub_dataset.py
CELEBA_CROP = [0.7, 1.0, 1.0, 4 / 3]  # group_DRO data/celebA_dataset.py
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("SHIFTKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SHIFTKIT_DATA", raising=False)


def _images(n=6, c=3, h=12, w=12, seed=0):
    return torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _get_params(rng, height, width, scale, ratio):
    """torchvision's ``RandomResizedCrop.get_params`` (torchvision/transforms/transforms.py), with ``rng``
    a ``random.Random`` in place of torch's global generator; also returns whether it fell back."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect_ratio = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            i = rng.randint(0, height - h)
            j = rng.randint(0, width - w)
            return (i, j, h, w), False
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w = width
        h = height
    return ((height - h) // 2, (width - w) // 2, h, w), True


def _old_augment(x, crop_padding, flip, generator):
    """The padded crop and flip as they were before resized crops existed, draw for draw."""
    n, _, h, w = x.shape
    p = crop_padding
    padded = F.pad(x, (p, p, p, p))
    dy = torch.randint(0, 2 * p + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * p + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
    x = padded[torch.arange(n)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None], rows, cols]
    if flip:
        x = torch.where((torch.rand(n, generator=generator) < 0.5)[:, None, None, None], x.flip(3), x)
    return x


def test_default_pipeline_is_unchanged_and_evaluation_never_augments():
    x = _images(n=16)
    p = Pipeline(mean=MEAN, std=STD, crop_padding=2, flip=True)
    assert p.resized_crop is None and dataclasses.asdict(p)["resized_crop"] is None
    normalized = Pipeline(mean=MEAN, std=STD)(x)
    out = p(x, train=True, generator=torch.Generator().manual_seed(4))
    assert torch.equal(out, _old_augment(normalized, 2, True, torch.Generator().manual_seed(4)))
    assert not Pipeline(mean=MEAN, std=STD).augments
    crop = Pipeline(mean=MEAN, std=STD, flip=True, resized_crop=WATERBIRDS_CROP)
    assert crop.augments and Pipeline(resized_crop=WATERBIRDS_CROP).augments
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    assert torch.equal(crop(x, train=False, generator=gen), normalized)
    assert torch.equal(gen.get_state(), state)  # no draw at all in evaluation


def test_full_scale_and_unit_ratio_on_a_square_image_is_the_identity():
    x = _images(n=8, h=12, w=12)
    p = Pipeline(mean=MEAN, std=STD, resized_crop=[1.0, 1.0, 1.0, 1.0])
    out = p(x, train=True, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, Pipeline(mean=MEAN, std=STD)(x), rtol=0, atol=1e-5)
    assert sample_boxes(8, 12, 12, (1, 1), (1, 1)).tolist() == [[0, 0, 12, 12]] * 8


@pytest.mark.parametrize(
    "height, width, crop",
    [(224, 224, WATERBIRDS_CROP), (224, 224, CELEBA_CROP), (30, 50, WATERBIRDS_CROP), (20, 20, [0.9, 1, 0.5, 2])],
)
def test_boxes_follow_torchvision_get_params(height, width, crop):
    n = 20000
    scale, ratio = crop[:2], crop[2:]
    boxes = sample_boxes(n, height, width, scale, ratio, torch.Generator().manual_seed(0)).double()
    rng = random.Random(0)
    reference = [_get_params(rng, height, width, scale, ratio) for _ in range(n)]
    ref = torch.tensor([b for b, _ in reference], dtype=torch.float64)
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (h >= 1).all() and (w >= 1).all()
    assert (top + h <= height).all() and (left + w <= width).all()  # every box inside the image

    fell = [box for box, fallback in reference if fallback]
    if fell:  # how often the central fallback box comes out (it may also be drawn: count it in both)
        ours = (boxes == torch.tensor(fell[0], dtype=torch.float64)).all(1).double().mean()
        theirs = (ref == torch.tensor(fell[0], dtype=torch.float64)).all(1).double().mean()
        assert abs(ours - theirs) < 0.02, (ours, theirs)
    for a, b in ((h * w / (height * width), ref[:, 2] * ref[:, 3] / (height * width)),
                 (torch.log(w / h), torch.log(ref[:, 3] / ref[:, 2])),
                 (top / height, ref[:, 0] / height), (left / width, ref[:, 1] / width)):
        assert abs(a.mean() - b.mean()) < 0.01, (a.mean(), b.mean())  # standard errors are below 0.002
        assert abs(a.std() - b.std()) < 0.01, (a.std(), b.std())
    # Area and ratio within bounds, up to rounding w and h by half a pixel each; the fallback's ratio is the
    # image's clamped to the bounds, and here it keeps at least scale_min of the area, so all boxes qualify.
    assert ((w + 0.5) * (h + 0.5) >= scale[0] * height * width).all()
    assert ((w - 0.5) * (h - 0.5) <= scale[1] * height * width).all()
    assert ((w + 0.5) / (h - 0.5) >= ratio[0]).all() and ((w - 0.5) / (h + 0.5) <= ratio[1]).all()


def test_fallback_is_torchvision_central_crop():
    # No candidate ever fits (a 10x40 strip cannot hold 70% of its area at ratio <= 4/3): every box falls back.
    for height, width, crop in ((10, 40, WATERBIRDS_CROP), (40, 10, CELEBA_CROP)):
        expected, fell = _get_params(random.Random(0), height, width, crop[:2], crop[2:])
        assert fell
        assert sample_boxes(5, height, width, crop[:2], crop[2:]).tolist() == [list(expected)] * 5
    assert _get_params(random.Random(0), 10, 40, WATERBIRDS_CROP[:2], WATERBIRDS_CROP[2:])[0] == (0, 13, 10, 13)


@pytest.mark.parametrize("height, width", [(8, 8), (6, 9)])
def test_resampling_a_box_is_cropping_then_bilinear_interpolation(height, width):
    x = torch.rand(4, 3, height, width, generator=torch.Generator().manual_seed(2))
    boxes = torch.tensor([[0, 0, height, width], [1, 2, 5, 4], [2, 1, 4, width - 1], [height - 1, width - 2, 1, 2]])
    out = resample_boxes(x, boxes)
    for i, (t, l, h, w) in enumerate(boxes.tolist()):
        crop = x[i : i + 1, :, t : t + h, l : l + w]
        expected = F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=False)
        torch.testing.assert_close(out[i : i + 1], expected, rtol=0, atol=1e-5)


def test_resized_crop_is_seeded_and_flips():
    x = _images(n=32)
    p = Pipeline(mean=MEAN, std=STD, flip=True, resized_crop=WATERBIRDS_CROP)
    a = p(x, train=True, generator=torch.Generator().manual_seed(5))
    b = p(x, train=True, generator=torch.Generator().manual_seed(5))
    c = p(x, train=True, generator=torch.Generator().manual_seed(6))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    # The same boxes without the flip: each example is the unflipped crop or its mirror image.
    unflipped = Pipeline(mean=MEAN, std=STD, resized_crop=WATERBIRDS_CROP)(
        x, train=True, generator=torch.Generator().manual_seed(5)
    )
    mirrored = [torch.equal(a[i], unflipped[i].flip(2)) for i in range(len(x))]
    assert all(mirrored[i] or torch.equal(a[i], unflipped[i]) for i in range(len(x))) and 0 < sum(mirrored) < len(x)


def test_one_batched_call_whatever_the_batch_size(monkeypatch):
    calls = {"rand": 0, "grid_sample": 0}
    rand, grid_sample = torch.rand, F.grid_sample

    def counting_rand(*args, **kwargs):
        calls["rand"] += 1
        return rand(*args, **kwargs)

    def counting_grid_sample(*args, **kwargs):
        calls["grid_sample"] += 1
        return grid_sample(*args, **kwargs)

    monkeypatch.setattr(torch, "rand", counting_rand)
    monkeypatch.setattr(F, "grid_sample", counting_grid_sample)
    p = Pipeline(flip=True, resized_crop=CELEBA_CROP)
    counts = []
    for n in (1, 64):
        calls.update(rand=0, grid_sample=0)
        p(_images(n=n), train=True, generator=torch.Generator().manual_seed(0))
        counts.append(dict(calls))
    assert counts[0] == counts[1] and counts[0]["grid_sample"] == 1


@pytest.mark.parametrize(
    "values, match",
    [
        ([0.0, 1.0, 1.0, 1.0], "scale"),
        ([0.8, 0.7, 1.0, 1.0], "scale"),
        ([0.7, 1.1, 1.0, 1.0], "scale"),
        ([0.7, 1.0, 0.0, 1.0], "ratio"),
        ([0.7, 1.0, 1.5, 1.0], "ratio"),
        ([0.7, 1.0, 1.0, math.inf], "ratio"),
        ([0.7, 1.0, 1.0], "4|scale_min, scale_max, ratio_min, ratio_max"),
        (["a", 1.0, 1.0, 1.0], "numbers"),
        (0.7, "numbers"),
    ],
)
def test_bad_resized_crops(values, match):
    with pytest.raises(ShiftkitError, match=match) as err:
        Pipeline(resized_crop=values)
    assert "\n" not in str(err.value)


def test_resized_crop_excludes_padded_crop_and_is_json():
    with pytest.raises(ShiftkitError, match="not both"):
        Pipeline(crop_padding=4, resized_crop=WATERBIRDS_CROP)
    p = Pipeline(resized_crop=(0.7, 1, 0.75, 4 / 3))
    assert p.resized_crop == WATERBIRDS_CROP  # a list of floats, as run.json holds it
    assert json.loads(json.dumps(dataclasses.asdict(p)))["resized_crop"] == WATERBIRDS_CROP


def test_waterbirds_and_celeba_builders_pass_augment(tmp_path):
    wb = _waterbirds(tmp_path / "wb")
    cel = _celeba(tmp_path / "celeba", "csv")
    builds = {
        "waterbirds": (WATERBIRDS_CROP, lambda **kw: data.build("waterbirds", image_size=8, root=str(wb), **kw)),
        "celeba": (CELEBA_CROP, lambda **kw: data.build(
            "celeba", train_fraction=0.5, test_per_group=1, image_size=10, root=str(cel), **kw)),
    }
    for name, (crop, build) in builds.items():
        plain, augmented = build(), build(augment=True)
        assert plain.pipeline == Pipeline(mean=MEAN, std=STD) and not plain.pipeline.augments, name
        assert augmented.pipeline == Pipeline(mean=MEAN, std=STD, flip=True, resized_crop=crop), name
        assert augmented.pipeline.resized_crop == crop and augmented.pipeline.flip, name
        assert torch.equal(augmented.train.x, plain.train.x)  # stored images are the same; only batches change
        x = augmented.train.x
        out = augmented.pipeline(x, train=True, generator=torch.Generator().manual_seed(0))
        assert out.shape == x.shape and torch.equal(augmented.pipeline(x), plain.pipeline(x))
