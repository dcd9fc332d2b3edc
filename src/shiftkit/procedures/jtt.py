"""Just Train Twice (Liu et al. 2021; docs/METHODS.md#procedure-jtt): find the training examples an
early-stopped ERM model gets wrong, then train a fresh model on a training set where they repeat."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from ..errors import ShiftkitError
from ..sampling import Sampler
from . import Job, Outcome, Procedure, register
from .two_stage import RETRAIN, first_phase, phase, resume_point, summary, tagged

IDENTIFY = "identify"


class Upsampled(Sampler):
    """Epochs over an upsampled training set: ``index`` lists each training example once per copy (an
    error set's examples ``1 + lambda_up`` times), and every epoch is a fresh random order of that list,
    as a shuffled loader over the original code's concatenated dataset draws it. No example is copied.

    >>> s = Upsampled(torch.tensor([0, 1, 2, 1, 1]))
    >>> sorted(s.epoch(None, None, torch.Generator().manual_seed(0)).tolist())
    [0, 1, 1, 1, 2]
    """

    def __init__(self, index: Tensor):
        super().__init__("group")
        self.index = index

    def epoch(self, y: Tensor, g: Tensor, generator: torch.Generator) -> Tensor:
        return self.index[torch.randperm(len(self.index), generator=generator)]


def upsampled_index(errors: Tensor, lambda_up: int) -> Tensor:
    """Every training example once, then ``lambda_up`` more copies of each error (JTT's
    ``ConcatDataset([train, Subset(train, errors * lambda_up)])``).

    >>> upsampled_index(torch.tensor([False, True, False, True]), 2).tolist()
    [0, 1, 2, 3, 1, 3, 1, 3]
    """
    wrong = torch.nonzero(errors.cpu()).squeeze(1)
    return torch.cat([torch.arange(len(errors)), wrong.repeat(lambda_up)])


@torch.no_grad()
def mistakes(model: nn.Module, job: Job) -> Tensor:
    """``bool [N]``: the training examples ``model`` misclassifies, predicted in evaluation mode."""
    train, out = job.splits.train, []
    was_training = model.training
    model.eval()
    for start in range(0, len(train), 1024):
        x = job.splits.pipeline(train.x[start:start + 1024].to(job.device), train=False)
        out.append(model(x).argmax(1).cpu())
    model.train(was_training)
    return torch.cat(out) != train.y.cpu()


@register("jtt")
class JTT(Procedure):
    """Just Train Twice: upsample the errors of an early-stopped ERM model, retrain a fresh one.

    Phase ``identify`` trains a fresh model with the run's loss and optimizer for ``identify_epochs``
    epochs (T; unset: ``identify_fraction`` of ``train.epochs``, rounded, at least 1) and takes its
    final weights' mistakes on the training split, in evaluation mode, as the error set. Phase
    ``retrain`` trains the run's model (fresh, from the run's seed) for ``train.epochs`` epochs on the
    training split upsampled as in the released code (``run_expt.py``): every example once plus
    ``lambda_up`` copies of each error, so an error appears ``1 + lambda_up`` times (the paper's
    Algorithm 1 writes λ_up times). The copies are indices drawn by the retraining's sampler, not copied
    inputs: each epoch is a random order of the ``N + lambda_up·|errors|`` entries, which is what the
    original's shuffled loader over the concatenated set draws, without copying images. The run's
    selection rule picks the retrained weights; the training metrics are those of the original split.

    Defaults for our small data: T = 20% of ``train.epochs`` (the paper's Waterbirds schedule, 60 of
    300 epochs) and ``lambda_up`` = 10 (SubpopBench's default; the paper tunes 20, 50, 100 on
    Waterbirds and CelebA). Search space: SubpopBench's, ``jtt_lambda`` 10^U(0, 2.5) as copies and
    ``first_stage_step_frac`` U(0.2, 0.8) as ``identify_fraction``. Both phases are ERM (``weighting=erm``,
    ``sampler=none``; other settings are refused). ``run.json`` adds ``identified_errors``, the errors per
    group (``error_groups``), ``upsampled_size`` and the identification's metrics; ``metrics.jsonl`` lines
    carry ``"phase": "identify"`` or ``"retrain"``. A stopped run resumes in the phase it stopped in and
    never trains a finished identification again.
    """

    search_space = {"lambda_up": "intloguniform(1, 316)", "identify_fraction": "uniform(0.2, 0.8)"}

    def __init__(self, lambda_up: int = 10, identify_epochs: Optional[int] = None, identify_fraction: float = 0.2):
        self.lambda_up, self.identify_epochs, self.identify_fraction = lambda_up, identify_epochs, identify_fraction

    def validate(self, plain: Dict[str, Any]) -> None:
        if isinstance(self.lambda_up, bool) or not isinstance(self.lambda_up, int) or self.lambda_up < 1:
            raise ShiftkitError(f"procedure.lambda_up must be an integer >= 1 (extra copies of each error), "
                                f"got {self.lambda_up}")
        if self.identify_epochs is not None and self.identify_epochs < 1:
            raise ShiftkitError(f"procedure.identify_epochs must be >= 1 (or unset: identify_fraction of train.epochs),"
                                f" got {self.identify_epochs}")
        if not 0 < self.identify_fraction <= 1:
            raise ShiftkitError(f"procedure.identify_fraction must lie in (0, 1], got {self.identify_fraction}")
        if plain["weighting"]["name"] != "erm" or plain["sampler"]["name"] != "none":
            raise ShiftkitError(
                "procedure=jtt trains both phases with weighting=erm and sampler=none (it upsamples the errors "
                f"itself); got weighting={plain['weighting']['name']}, sampler={plain['sampler']['name']}")

    def identify(self, plain: Dict[str, Any]) -> int:
        """T, the identification's epochs."""
        if self.identify_epochs is not None:
            return self.identify_epochs
        return max(1, round(self.identify_fraction * plain["train"]["epochs"]))

    def epochs(self, plain: Dict[str, Any]) -> int:
        return self.identify(plain) + plain["train"]["epochs"]

    def resume(self, state: Dict[str, Any]) -> Tuple[Dict[str, Any], List[List[dict]]]:
        return resume_point(state, IDENTIFY, "procedure=jtt")

    def run(self, job: Job) -> Outcome:
        def train(checkpoint):
            torch.manual_seed(job.plain["seed"])
            first = job.make_model()
            result = job.fit(first, epochs=self.identify(job.plain), select="last", checkpoint=checkpoint,
                             on_eval=tagged(job, IDENTIFY))
            return result, {"errors": mistakes(first, job)}

        identified, done = first_phase(job, IDENTIFY, train, restore=lambda kept: None)
        errors = done["kept"]["errors"]
        index = upsampled_index(errors, self.lambda_up)
        batch_size = job.plain["train"]["batch_size"] or len(index)  # full batch: the whole upsampled set
        result = job.fit(sampler=Upsampled(index), batch_size=batch_size, on_eval=tagged(job, RETRAIN),
                         checkpoint=phase(job.checkpoint, RETRAIN, first=done))
        groups = torch.bincount(job.splits.train.g.cpu()[errors], minlength=job.splits.num_groups).tolist()
        extra = {"identified_errors": int(errors.sum()), "error_groups": groups, "upsampled_size": len(index),
                 "identify_epochs": self.identify(job.plain), "identification": summary(identified)}
        return Outcome(result, job.parts["model"], extra)
