"""A finished run's model, ready for inference: ``shiftkit.load(run_dir)``.

Every finished run keeps its weights (``weights.safetensors``: the evaluation ``train.select`` chose, the
last one by default; ``weights-final.safetensors`` too when an earlier one was chosen), unless
``save_weights=false`` or, left unset, the state dict is larger than 64 MiB. :func:`load` rebuilds the
model from the run's ``run.json`` (its config and the data statistics it was built with) and loads them.

>>> from shiftkit import load                                          # doctest: +SKIP
>>> run = load("results/digits_binary/ce+erm/seed0-1169e7da03")     # doctest: +SKIP
>>> run.predict(x)            # labels; run.logits(x) the logits      # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict

import torch
from torch import Tensor, nn

from . import models, rundir
from .data.pipeline import Pipeline
from .errors import ShiftkitError
from .models import weights

WHICH = {"selected": rundir.WEIGHTS_FILE, "final": rundir.FINAL_WEIGHTS_FILE}


@dataclass
class LoadedRun:
    """A run's model (evaluation mode, on the CPU) with what inference needs: ``pipeline`` prepares raw
    inputs as training did (``uint8`` images to normalized floats; features pass through), ``statistics``
    are the data statistics the model was built with (``input_shape``, ``num_classes``, counts), ``config``
    the run's resolved config. With ``data.features_from`` the model is the head: its inputs are features."""

    model: nn.Module
    pipeline: Pipeline
    statistics: Dict[str, Any]
    config: Dict[str, Any]
    which: str
    epoch: int
    record: Dict[str, Any] = field(repr=False, default_factory=dict)

    @torch.no_grad()
    def logits(self, x: Tensor) -> Tensor:
        """``[N, K]`` logits of raw inputs ``x`` ``[N, *input_shape]``."""
        x = torch.as_tensor(x)
        expected = tuple(self.statistics["input_shape"])
        if tuple(x.shape[1:]) != expected:
            raise ShiftkitError(f"this model takes inputs of shape [N, {', '.join(map(str, expected))}], got "
                                f"{list(x.shape)}")
        device = next(iter(self.model.parameters())).device
        return self.model(self.pipeline(x.to(device), train=False))

    def predict(self, x: Tensor) -> Tensor:
        """``[N]`` predicted labels of raw inputs ``x``."""
        return self.logits(x).argmax(dim=1)


def load(run_dir, which: str = "selected") -> LoadedRun:
    """The model of the finished run in ``run_dir`` (module docstring); ``which``: ``selected`` (what the
    run reports as its result) or ``final`` (its last epoch; the same file unless an earlier evaluation
    was selected)."""
    if which not in WHICH:
        raise ShiftkitError(f"which must be 'selected' or 'final', got '{which}'")
    folder = Path(run_dir).expanduser()
    record = rundir.finished(folder)
    if record is None:
        raise ShiftkitError(f"{folder} is not a finished run (no done marker)")
    saved = record.get("weights")
    if not saved:
        raise ShiftkitError(f"{folder} kept no weights (save_weights=false, a state dict over 64 MiB, or a run "
                            "from before runs kept them); train it again with save_weights=true")
    file = folder / (saved.get("final_file", saved["file"]) if which == "final" else saved["file"])
    statistics = record["data"].get("statistics")
    config = record["config"]
    options = {k: v for k, v in config["model"].items() if k not in ("name", "weights", "freeze")}
    net = models.build(config["model"]["name"], **options, **statistics)
    weights.load(net, weights.read(file, "shiftkit.load"), f"shiftkit.load: {file}", config["model"]["name"])
    net.eval()
    epoch = record["selected_epoch"] if which == "selected" or "final_file" not in saved else config["train"]["epochs"]
    return LoadedRun(net, Pipeline(**record["data"]["pipeline"]), statistics, config, which, epoch, record)
