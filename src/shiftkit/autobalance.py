"""AutoBalance's bilevel search (Li et al. 2021, Algorithm 1; docs/METHODS.md#protocol-autobalance) around the one training loop.

:class:`AutoBalanceSearch` is the ``outer`` object of :func:`shiftkit.train.fit` (an outer update of the
loss's learnable parameters around the same loop, never a second loop: docs/METHODS.md#protocol-autobalance): every
``every`` optimizer steps from epoch ``start_epoch`` on, it computes the implicit hypergradient of a
validation objective (:mod:`shiftkit.objectives`) with respect to the ``autobalance`` loss's α = (l, Δ[, w])
by :func:`shiftkit.bilevel.hypergradient` and takes one step of its own upper optimizer on α.
:func:`search_and_retrain` runs the whole algorithm: search, freeze α*, retrain a fresh model on train+val.
The outer update and the checks of a search's settings live in :mod:`shiftkit.autobalance_search`.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Union

import torch
from torch import nn

from . import augment as augmentations
from . import weighting
from .autobalance_search import DEFAULT_UPPER, AutoBalanceSearch, check_loss, check_search, learned  # noqa: F401
from .checkpoint import Checkpoint, phase, rng_states, set_rng_states
from .data.base import Split, Splits
from .errors import ShiftkitError
from .optim import OptimSpec
from .train import FitResult, fit


@dataclass
class SearchResult:
    """Both phases of Algorithm 1: the search's and the retraining's :class:`FitResult`, α* (as searched,
    per cluster), its path, and the retrained model."""

    search: FitResult
    retrain: FitResult
    alpha: Dict[str, list]
    history: List[dict] = field(default_factory=list)
    model: Optional[nn.Module] = None
    #: The augmentation the retraining used (its ``record()``: operations, per-class values), if any.
    augment: Optional[dict] = None


def merge_train_val(splits: Splits) -> Splits:
    """Step 4 of docs/METHODS.md#autobalance-algorithm (S_T ← S_T ∪ S_V): the training split becomes train + validation. ``val`` stays for
    reporting only and is then **not held out** (its metrics are training metrics); ``test`` is unchanged."""
    t, v = splits.train, splits.val
    merged = Split(torch.cat([t.x, v.x]), torch.cat([t.y, v.y]), torch.cat([t.g, v.g]), t.num_classes, t.num_groups)
    info = {**splits.info, "val_in_train": True}
    return Splits(merged, splits.val, splits.test, info=info, pipeline=splits.pipeline)


def search_and_retrain(
    make_model: Callable[[], nn.Module],
    splits: Splits,
    loss: nn.Module,
    optim: OptimSpec,
    *,
    search_epochs: int,
    retrain_epochs: int,
    batch_size: int = 64,
    seed: int = 0,
    device: str = "cpu",
    search_options: Optional[dict] = None,
    fit_options: Optional[dict] = None,
    retrain_on: str = "train+val",
    interpolate_clusters: Union[bool, str] = True,
    checkpoint: Optional[Checkpoint] = None,
    augment=None,
) -> SearchResult:
    """Algorithm 1 (docs/METHODS.md#autobalance-algorithm) end to end with :func:`~shiftkit.train.fit` and ERM weighting.

    (a) search: ``fit`` a model from ``make_model()`` (after ``torch.manual_seed(seed)``) for ``search_epochs``
    with ``outer=AutoBalanceSearch(model, loss, splits, epochs=search_epochs, **search_options)``;
    (b) α* = the loss's final hyperparameters; (c) re-seed, build a fresh model and ``fit`` it for
    ``retrain_epochs`` on :func:`merge_train_val` with a frozen copy of the loss (α* fixed, no gradient).
    ``retrain_on="train"`` retrains on the training split alone instead, so that the final model sees the
    same examples as baselines trained on ``train`` (the validation set then only steers α; the algorithm's
    retraining step merges them, the default).

    With ``cluster_size > 1``, ``interpolate_clusters`` says which per-class values the retraining uses:
    ``True`` (default) always interpolates between the clusters' centres (:meth:`AutoBalance.per_class`);
    ``False`` keeps the clusters' step function (each class its cluster's value); ``"unless_la"`` follows
    the released ``retraining.py``, which interpolates only when the search did not start from LA: it
    sets ``group_size = 1`` (and ``get_init_dy`` / ``get_init_ly`` then interpolate) only when
    ``ly_LA_tau`` is unset, and a search from ``ly_init: LA`` retrains with the clusters' step function
    (``loss_adjust_cross_entropy``'s ``repeat_interleave(group_size)``). Here "from LA" means the loss's
    ``init`` is ``"la"`` or ``"group_la"``. ``True`` thus differs from the released code for searches
    from LA only.

    ``loss`` is modified in place by the search. ``fit_options`` (eval_every, select, ...) go to both fits.
    The code retrains 200 epochs after a 300-epoch search on CIFAR (docs/METHODS.md#autobalance-schedules).

    With a ``checkpoint`` (:class:`shiftkit.checkpoint.Checkpoint`, its state loaded or not) both phases
    checkpoint into its one file, whose ``"phase"`` says which phase it resumes: the search saves its
    loop with the outer update (:meth:`AutoBalanceSearch.state_dict`); once the search has finished, its
    result (its :class:`FitResult`, the loss's state, α's history) is saved with ``"phase": "retrain"``
    and stays in every later save, so a run killed while retraining resumes the retraining and never
    redoes the search. Either way the result is exactly that of a run never interrupted.

    ``augment`` (:mod:`shiftkit.augment`) augments every training batch of both phases; a learned one
    (``augment=policy``) is part of α: tuned by the search, then frozen for the retraining
    (docs/METHODS.md#augment-search). Its clusters keep their values in the retraining (no
    interpolation).
    """
    interpolate = _interpolates(loss, retrain_on, interpolate_clusters)
    fit_options = dict(fit_options or {})
    state = checkpoint.state if checkpoint is not None else None
    done = state["search"] if state is not None and state.get("phase") == "retrain" else None
    if done is None:
        torch.manual_seed(seed)
        model = make_model()
        search = AutoBalanceSearch(model, loss, splits, epochs=search_epochs, batch_size=batch_size, seed=seed,
                                   device=device, augment=augment, **(search_options or {}))
        searched = fit(model, splits, loss, weighting.build("erm"), optim, epochs=search_epochs,
                       batch_size=batch_size, seed=seed, device=device, outer=search,
                       checkpoint=phase(checkpoint, "search"), augment=augment, **fit_options)
        search.record(search_epochs)
        done = {"result": dataclasses.asdict(searched), "history": search.history, "loss": _kept(loss),
                "rng": rng_states()}
        if augmentations.active(augment):
            done["augment"] = _kept(augment)
        if checkpoint is not None and checkpoint.every:  # the phase boundary: never redo a finished search
            checkpoint.save({"phase": "retrain", "search": done})
    else:  # the search had finished: take its result and the RNG states it left
        searched = FitResult(**done["result"])
        loss.load_state_dict(done["loss"])
        if "augment" in done:
            augment.load_state_dict(done["augment"])
        set_rng_states(done["rng"])
    alpha = {k: v.detach().cpu().tolist() for k, v in learned(loss).items()}
    frozen = _retraining_loss(loss, interpolate)
    policy = _frozen(augment) if augmentations.active(augment) else None
    torch.manual_seed(seed)
    retrain_splits = merge_train_val(splits) if retrain_on == "train+val" else splits
    model = make_model()
    retrained = fit(model, retrain_splits, frozen, weighting.build("erm"), optim, epochs=retrain_epochs,
                    batch_size=batch_size, seed=seed, device=device, augment=policy,
                    checkpoint=phase(checkpoint, "retrain", search=done), **fit_options)
    return SearchResult(searched, retrained, alpha, done["history"], model, policy.record() if policy else None)


def _kept(module: nn.Module) -> dict:
    """``module``'s state on the host, for the phase boundary's checkpoint."""
    return {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in module.state_dict().items()}


def _frozen(module: nn.Module) -> nn.Module:
    """A copy with nothing to learn (α* fixed for the retraining): no gradient, none kept."""
    frozen = copy.deepcopy(module).requires_grad_(False)
    for p in frozen.parameters():
        p.grad = None
    return frozen


def _interpolates(loss: nn.Module, retrain_on: str, interpolate_clusters: Union[bool, str]) -> bool:
    """Whether the retraining interpolates the clusters' values (:func:`search_and_retrain`), after checking
    ``retrain_on`` and ``interpolate_clusters``."""
    if retrain_on not in ("train+val", "train"):
        raise ShiftkitError(f"procedure.retrain_on must be 'train+val' or 'train', got '{retrain_on}'")
    if isinstance(interpolate_clusters, str):
        if interpolate_clusters != "unless_la":
            raise ShiftkitError("procedure.interpolate_clusters must be true, false or 'unless_la', "
                                f"got '{interpolate_clusters}'")
        interpolate = getattr(loss, "init", None) not in ("la", "group_la")
    else:
        interpolate = bool(interpolate_clusters)
    return interpolate


def _retraining_loss(loss: nn.Module, interpolate: bool) -> nn.Module:
    """The searched loss with α* fixed, per class when it interpolates the clusters: no gradient, none kept."""
    return _frozen(loss.per_class() if interpolate and hasattr(loss, "per_class") else loss)


def resume_point(state: Dict[str, Any]) -> tuple:
    """Where a search run's checkpoint state resumes, ``(phase, epoch)`` (the epochs done in that phase),
    and the evaluations before it, each tagged with its ``"phase"`` as in ``metrics.jsonl``."""
    if state.get("phase") not in ("search", "retrain"):
        raise ShiftkitError("this checkpoint is not an AutoBalance search's; delete it to start the run over")
    records = [] if "epoch" not in state else [{"phase": state["phase"], **r} for r in state["selection"]["history"]]
    if state["phase"] == "retrain":
        records = [{"phase": "search", **r} for r in state["search"]["result"]["history"]] + records
    return state["phase"], state.get("epoch", 0), records

