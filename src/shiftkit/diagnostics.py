"""Implicit-bias probes: what a run that asks for them (``diagnostics.enabled=true``) logs at every
evaluation, beside the metrics (:mod:`shiftkit.metrics`).

[W] and [Z] explain reweighting through the implicit bias of gradient descent: once a model interpolates,
its parameters grow without bound along a direction that the loss's tail decides, and importance weights
on an exponentially-tailed loss stop changing that direction (docs/METHODS.md#protocol-zhai2023, docs/METHODS.md#headline-zhai2023). These probes measure it:

- ``weight_norm``: ``‖θ‖``, all parameters as one vector (it grows without bound after interpolation
  under CE, [Z] §4);
- ``distance`` and ``direction_gap`` to a reference run (e.g. the ERM run of the same seed):
  ``‖θ − θ_ref‖`` and ``‖θ/‖θ‖ − θ_ref/‖θ_ref‖‖`` ([Z] Figure 1 and Appendix C, docs/METHODS.md#protocol-zhai2023);
- ``min_margin``: per group, the smallest training margin ``f_y(x) − max_{k≠y} f_k(x)`` (docs/METHODS.md#quirk-poly:
  multiclass margin; positive for every group once the training data are interpolated);
- ``interpolation_epoch``: the first evaluation epoch whose training error is zero (in ``run.json``).

A reference is a run directory holding ``model.pt`` (written by every run with diagnostics enabled: the
weights the run ends with, i.e. the selected ones under ``train.select=best:...``) or such a file itself;
the gap is measured against that run's end point at every evaluation.

>>> import torch
>>> theta, ref = torch.tensor([3.0, 4.0]), torch.tensor([0.0, 2.0])
>>> weight_norm(theta), round(distance(theta, ref), 4), round(direction_gap(theta, ref), 4)
(5.0, 3.6056, 0.6325)
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import torch
from torch import Tensor, nn

from . import files
from .data.base import Split
from .data.pipeline import Pipeline
from .errors import ShiftkitError
from .losses import margin

#: The file a run with diagnostics writes, and that a reference points to.
WEIGHTS_FILE = "model.pt"


def flat_parameters(model: nn.Module) -> Tensor:
    """Every parameter of ``model`` as one float64 CPU vector, in ``named_parameters()`` order."""
    return torch.cat([p.detach().reshape(-1).to("cpu", torch.float64) for p in model.parameters()])


def weight_norm(params: Tensor) -> float:
    """``‖θ‖_2``."""
    return float(params.double().norm())


def distance(params: Tensor, reference: Tensor) -> float:
    """``‖θ − θ_ref‖_2`` ([Z] Figure 1 (b), (c))."""
    _same_shape(params, reference)
    return float((params.double() - reference.double()).norm())


def direction_gap(params: Tensor, reference: Tensor) -> float:
    """``‖θ/‖θ‖ − θ_ref/‖θ_ref‖‖_2`` in [0, 2] ([Z] Appendix C); NaN if either vector is zero."""
    _same_shape(params, reference)
    return float(direction_gaps(params, reference))


def direction_gaps(params: Tensor, reference: Tensor) -> Tensor:
    """:func:`direction_gap` over the last axis of broadcast batches of parameter vectors (float64).

    >>> direction_gaps(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), torch.tensor([0.0, 2.0]))
    tensor([1.4142,    nan], dtype=torch.float64)
    """
    a, b = params.double(), reference.double()
    unit_a, unit_b = a / a.norm(dim=-1, keepdim=True), b / b.norm(dim=-1, keepdim=True)
    return (unit_a - unit_b).norm(dim=-1)


def _same_shape(params: Tensor, reference: Tensor) -> None:
    if params.shape != reference.shape:
        raise ShiftkitError(
            f"diagnostics: the reference has {reference.numel()} parameters, this model {params.numel()};"
            " a reference must be a run of the same architecture"
        )


@torch.no_grad()
def group_min_margins(
    model: nn.Module, split: Split, pipeline: Optional[Pipeline] = None, batch_size: int = 4096
) -> List[Optional[float]]:
    """Per group, the smallest margin ``f_y − max_{k≠y} f_k`` over the split (``None`` for an empty
    group); inputs go through ``pipeline`` without augmentation, the model in evaluation mode."""
    pipeline = pipeline or Pipeline()
    was_training = model.training
    model.eval()
    smallest = torch.full((split.num_groups,), float("inf"), device=split.y.device)
    for idx in torch.arange(len(split), device=split.y.device).split(batch_size):
        m = margin(model(pipeline(split.x[idx])).float(), split.y[idx])
        smallest = smallest.scatter_reduce(0, split.g[idx], m, reduce="amin")
    model.train(was_training)
    return [v if v != float("inf") else None for v in smallest.tolist()]


def interpolation_epoch(history: List[dict]) -> Optional[int]:
    """The first evaluation epoch with training accuracy 1 (zero training error), or ``None``.

    >>> interpolation_epoch([{"epoch": 5, "train": {"acc": 0.9}}, {"epoch": 10, "train": {"acc": 1.0}}])
    10
    """
    return next((r["epoch"] for r in history if r["train"]["acc"] == 1.0), None)


def reference_file(path: str) -> Path:
    """The ``model.pt`` a reference names (a run directory, or the file itself), or a one-line error."""
    file = Path(path)
    file = file / WEIGHTS_FILE if file.is_dir() else file
    if not file.is_file():
        raise ShiftkitError(
            f"diagnostics.reference: no {WEIGHTS_FILE} at {file}; give a run directory of a run with"
            " diagnostics.enabled=true, or its model.pt"
        )
    return file


def load_reference(path: str) -> Tensor:
    """The flat parameters of a reference: a run directory with ``model.pt``, or such a file."""
    state = torch.load(reference_file(path), map_location="cpu", weights_only=True)
    return torch.cat([v.reshape(-1).double() for v in state["parameters"]])


def save_weights(model: nn.Module, path: Path) -> None:
    """Write ``model``'s parameters (in ``parameters()`` order) and state dict to ``path`` atomically."""
    state = {"parameters": [p.detach().cpu() for p in model.parameters()], "state_dict": model.state_dict()}
    files.save_torch(state, path)


class Probe:
    """The diagnostics of one run: ``probe(model, train_split, pipeline) -> dict``, called by the loop at
    every evaluation (``fit(..., probe=...)``) with the split it trains on.

    >>> import torch
    >>> from shiftkit.data.base import Split
    >>> net = torch.nn.Linear(2, 2, bias=False)
    >>> _ = net.weight.data.copy_(torch.eye(2))
    >>> train = Split(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1]), torch.tensor([0, 1]), 2, 2)
    >>> Probe()(net, train)
    {'weight_norm': 1.4142135623730951, 'min_margin': [2.0, 1.0]}
    """

    def __init__(self, reference: Optional[Tensor] = None):
        self.reference = reference

    def __call__(self, model: nn.Module, train: Split, pipeline: Optional[Pipeline] = None) -> Dict[str, object]:
        params = flat_parameters(model)
        out: Dict[str, object] = {"weight_norm": weight_norm(params), "min_margin": group_min_margins(model, train, pipeline)}
        if self.reference is not None:
            out["distance"] = distance(params, self.reference)
            out["direction_gap"] = direction_gap(params, self.reference)
        return out
