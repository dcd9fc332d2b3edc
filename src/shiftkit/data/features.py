"""Frozen features for linear probes: the options every dataset shares, ``features_from`` (a backbone),
``features_weights`` and ``features_options``.

``data.features_from=resnet18 data.features_weights=FILE`` replaces every split's inputs by the penultimate
features of that backbone (the model without its head, :func:`shiftkit.models.weights.split_head`) in
evaluation mode, computed once per split and kept under ``$SHIFTKIT_CACHE/features`` (default
``~/.cache/shiftkit/features``). Any model then trains on them as on tabular data (``model=linear``: a
linear probe, [AB]'s Waterbirds setting; ``model=mlp``), with every loss, weighting and sampler, and a
sweep over seeds trains as one vectorized ensemble.

- ``features_weights``: a weight file or ``imagenet`` (:mod:`shiftkit.models.weights`); unset, the
  backbone keeps a fixed random initialization (seed 0): random features, a baseline.
- ``features_options``: the backbone's own options (``{width: 16}``).
- The cache file is named by a hash of everything the features depend on: the backbone, its options,
  the weight file's sha256, the split's input pipeline and the bytes of its inputs. Changed images, a
  retrained weight file or another option compute new features; nothing stale is reused. Files are
  written atomically; a damaged one is recomputed.
- The features are computed on the GPU when there is one, else the CPU, in float32, 256 images a batch.
  Augmentation cannot apply to fixed features, so a dataset whose pipeline augments is refused.

>>> import torch
>>> from shiftkit import data
>>> splits = data.build("digits_binary", features_from="mlp", features_options={"width": 8, "depth": 1})
>>> splits.input_shape, splits.pipeline.augments
((8,), False)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

from ..errors import ShiftkitError
from .base import Split, Splits
from .images import cache_dir, read_cached, write_cached
from .pipeline import Pipeline

#: Bumped whenever extraction changes, so that old cache files are never reused.
_VERSION = 1
_BATCH = 256


def _input_digest(x: torch.Tensor) -> str:
    array = np.ascontiguousarray(x.detach().cpu().numpy())
    digest = hashlib.blake2b(repr((array.shape, str(array.dtype))).encode(), digest_size=20)
    digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def _key(split: Split, pipeline: Pipeline, describe: Dict[str, Any]) -> str:
    text = json.dumps({"v": _VERSION, **describe, "pipeline": dataclasses.asdict(pipeline)}, sort_keys=True)
    return hashlib.sha256(f"{text}\0{_input_digest(split.x)}".encode()).hexdigest()[:40]


@torch.no_grad()
def _extract(backbone: torch.nn.Module, split: Split, pipeline: Pipeline, device: str) -> np.ndarray:
    out = []
    for start in range(0, len(split), _BATCH):
        batch = pipeline(split.x[start : start + _BATCH].to(device), train=False)
        out.append(backbone(batch).float().flatten(1).cpu())
    return torch.cat(out).numpy()


def _features(split: Split, backbone, pipeline: Pipeline, describe: Dict[str, Any], dim: int, device: str) -> Split:
    file = cache_folder() / f"{_key(split, pipeline, describe)}.npy"
    array = read_cached(file, (len(split), dim), np.float32)
    if array is None:
        array = _extract(backbone, split, pipeline, device)
        if not np.isfinite(array).all():
            raise ShiftkitError(f"data.features_from={describe['features_from']}: the backbone gives non-finite features "
                                "(broken weights?)")
        write_cached(file, array, "features")
    return Split(torch.from_numpy(array), split.y, split.g, split.num_classes, split.num_groups)


def finish(
    name: str,
    splits: Splits,
    features_from: Optional[str] = None,
    features_weights: Optional[str] = None,
    features_options: Dict[str, Any] = {},  # noqa: B006  (read only; the config schema's default)
) -> Splits:
    """Every dataset's shared options (module docstring): ``splits`` with inputs replaced by features."""
    if features_from is None:
        if features_weights is not None or features_options:
            raise ShiftkitError("data.features_weights and data.features_options need data.features_from=<backbone>")
        return splits
    if splits.pipeline.augments:
        raise ShiftkitError(f"data.features_from computes each input's features once, so data={name} cannot augment them;"
                            " turn its augmentation off")
    from ..models import build, weights  # models import data statistics, not datasets: no cycle at run time

    torch.manual_seed(0)  # the head is dropped; without weights, the random backbone is the same every time
    net = build(features_from, input_shape=splits.input_shape, num_classes=splits.num_classes,
                weights=features_weights, **dict(features_options))
    backbone, head = weights.split_head(net)
    if not isinstance(head, torch.nn.Linear):
        raise ShiftkitError(f"data.features_from={features_from}: its head is not one linear layer, so shiftkit cannot tell "
                            "its penultimate features")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    backbone.to(device).eval()
    described = {"features_from": features_from, "options": dict(features_options),
                 "weights": weights.describe(features_from, features_weights, "data.features_weights")["sha256"]
                 if features_weights is not None else None}
    made = [_features(s, backbone, splits.pipeline, described, head.in_features, device)
            for s in (splits.train, splits.val, splits.test)]
    info = {**splits.info, "features": {**described, "dim": head.in_features,
                                        "weights_file": getattr(net, "weights_info", {}).get("file")}}
    return Splits(*made, info=info, pipeline=Pipeline())


def cache_folder() -> Path:
    """Where feature files are kept."""
    return cache_dir() / "features"
