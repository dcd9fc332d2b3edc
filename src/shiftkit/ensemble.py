"""Many seeds in one process: the members of a seed sweep train as one vectorized ensemble.

Every claim in this field is a mean over seeds. Where the model is small, one step of S stacked models
(``torch.func.stack_module_state`` + ``functional_call`` + ``vmap``) costs far less than S steps, so
:func:`fit_ensemble` trains S members at once, in the one loop of :mod:`shiftkit.train` with the member
axis of :mod:`shiftkit.members`. Each member keeps what makes it the run of its seed: its own
initialization (built after ``torch.manual_seed(seed)``), its own data order and augmentation (its own
generators), its own weighting-scheme state (the scheme's pure step runs under ``vmap`` on the members'
stacked states) and its own model selection. SGD and Adam act element-wise, so one optimizer over the
stacked parameters is S independent optimizers; the objective is the sum of the members' objectives, so
no member's gradient sees another's loss. Losses are per-example and shared (they hold no training
state). Like a single run, an ensemble checkpoints its whole state, every member's included, at epoch
ends and inside epochs, and resumes exactly (:mod:`shiftkit.checkpoint`).

What a member axis cannot serve is refused in one place (:func:`shiftkit.members.refuse`): models with
BatchNorm (``vmap`` cannot update running statistics) or frozen parameters, samplers whose epochs differ
in length between seeds (``undersample``), diagnostics, an outer update (AutoBalance) and ``torchrun``;
the command line then runs the members one after another. An ensemble saves per-step overhead, not arithmetic: it pays for
models too small to fill the machine (3.4x for ten seeds of a 2 x 128 MLP on 2 CPU cores, 1.2x at the demo's 2 x 512); on the CPU,
vmapped convolutions become grouped convolutions that run slower than separate ones. So where a stacked
ensemble would be slower than its seeds one by one (:func:`slower`: convolutions on the CPU, measured by ``benchmarks/seeds.py``;
docs/PERFORMANCE.md#ensembles), the command line runs them one by one too and says why in one line;
:func:`fit_ensemble`, called directly, always stacks.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence

from torch import nn

from .checkpoint import Checkpoint
from .data.base import Splits
from .divergence import DEFAULT_FACTOR
from .members import EnsembleUnsupported, Stacked, refuse
from .optim import OptimSpec
from .sampling import Sampler
from .selection import FitResult
from .train import fit_members
from .weighting import Weighting

__all__ = ["EnsembleUnsupported", "Stacked", "fit_ensemble", "refuse", "slower"]


def fit_ensemble(
    models: List[nn.Module],
    splits: Splits,
    loss: nn.Module,
    weightings: List[Weighting],
    optim: OptimSpec,
    *,
    seeds: List[int],
    epochs: int,
    batch_size: int = 64,
    eval_every: int = 1,
    select: str = "last",
    samplers: Optional[List[Sampler]] = None,
    device: str = "cpu",
    amp: str = "none",
    compile: bool = False,
    on_eval: Optional[Callable[[int, dict], None]] = None,
    checkpoint: Optional[Checkpoint] = None,
    divergence: float = DEFAULT_FACTOR,
) -> List[FitResult]:
    """Train ``models[s]`` with ``weightings[s]``, ``samplers[s]`` and ``seeds[s]`` for every member ``s``,
    as :func:`shiftkit.train.fit` would one by one; ``on_eval(s, record)`` per member and evaluation.
    The members end holding their final (or selected) weights; ``compile`` compiles the vmapped forward.
    With a ``checkpoint`` the ensemble saves its whole state (the stacked weights, the optimizer and
    schedule, the loss, and every member's weighting, sampler, selection, selected weights and
    generators) and resumes from the state the checkpoint holds, finishing as if never interrupted.
    Each member's epochs are checked for divergence as a single run's are (``divergence``,
    :mod:`shiftkit.divergence`); a member that fails stops the ensemble, naming its seed."""
    return fit_members(
        Stacked(models, device, compile), splits, loss, weightings, optim, seeds=seeds, samplers=samplers,
        epochs=epochs, batch_size=batch_size, eval_every=eval_every, select=select, device=device, amp=amp,
        on_eval=on_eval, checkpoint=checkpoint, divergence=divergence,
    )


def slower(models: Sequence[nn.Module], device: str, batch_size: int = 0) -> Optional[str]:
    """Why a stacked ensemble of ``models`` would train slower on ``device`` than the members one by one,
    or None where it is not: on the CPU, convolutions (``vmap`` makes them grouped convolutions, about twice
    as slow there). Linear models stack at every width: where a step is bound by arithmetic (the demo's
    2 x 512 MLP) stacking measured 0.77 to 1.23 times sequential, i.e. the same within noise, and 1.09 on
    ``wang2022-fig3``'s MLP (``benchmarks/seeds.py``, docs/PERFORMANCE.md#ensembles); on a GPU, stacking is
    faster at every size we measured. ``batch_size`` is accepted for rules that depend on it."""
    if not str(device).startswith("cpu") or not models:
        return None
    if any(isinstance(m, nn.modules.conv._ConvNd) for m in models[0].modules()):
        return "on the CPU, stacked convolutions train slower than one model at a time"
    return None
