"""AutoBalance's bilevel search (Li et al. 2021, Algorithm 1; docs/METHODS.md#protocol-autobalance) around the one training loop.

:class:`AutoBalanceSearch` is the ``outer`` object of :func:`shiftkit.train.fit` (an outer update of the
loss's learnable parameters around the same loop, never a second loop: docs/METHODS.md#protocol-autobalance): every
``every`` optimizer steps from epoch ``start_epoch`` on, it computes the implicit hypergradient of a
validation objective (:mod:`shiftkit.objectives`) with respect to the ``autobalance`` loss's α = (l, Δ[, w])
by :func:`shiftkit.bilevel.hypergradient` and takes one step of its own upper optimizer on α.
:func:`search_and_retrain` runs the whole algorithm: search, freeze α*, retrain a fresh model on train+val.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Union

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from . import objectives, weighting
from .bilevel import output_hypergradient
from .checkpoint import Checkpoint, rng_states, set_rng_states
from .data.base import Split, Splits
from .errors import ShiftkitError
from .optim import OptimSpec
from .optim import build as build_optim
from .train import FitResult, fit

#: Upper optimizer of docs/METHODS.md#autobalance-hypergradient (released CIFAR-10 config): SGD, momentum 0.9, up_lr 0.01, weight decay
#: 1e-4. The code's up_lr_warmup (10 epochs on CIFAR-10) is left at 0 so that short runs move α at once.
DEFAULT_UPPER = dict(lr=0.01, momentum=0.9, weight_decay=1e-4)


@contextlib.contextmanager
def _frozen_batchnorm_stats(model: nn.Module):
    """BatchNorm keeps using batch statistics (train mode, as in the code) but does not update its running
    statistics: the hypergradient's extra forward passes must not change the model, and torch.func forbids
    writing traced values into the buffers."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for m in norms:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in norms:
            m.track_running_stats = True


def check_loss(loss: nn.Module, where: str = "AutoBalanceSearch: the loss") -> None:
    """A search needs a loss with something to learn: a ``hyperparameters()`` dict that is not empty."""
    learnable = loss.hyperparameters() if hasattr(loss, "hyperparameters") else None
    if not learnable:
        raise ShiftkitError(f"{where} has nothing to learn; search with loss=autobalance (its loss.learn names"
                            " what the search tunes)")


def check_search(*, epochs: int, start_epoch: Optional[int], every: int, batches: int, terms: int, step: float,
                 curvature_batches: Optional[int], batch_size: int = 1, prefix: str = "procedure.") -> None:
    """The search's schedule and series settings, named ``prefix + key`` (``procedure.every`` on the
    command line): refused before anything trains."""
    for key, value in (("every", every), ("batches", batches)):
        if value < 1:
            raise ShiftkitError(f"{prefix}{key} must be >= 1, got {value}")
    if batch_size < 1 or epochs < 1:
        raise ShiftkitError(f"{prefix}batch_size and epochs must be >= 1, got {batch_size} and {epochs}")
    if start_epoch is not None and not 0 <= start_epoch < epochs:
        raise ShiftkitError(f"{prefix}start_epoch must lie in [0, epochs={epochs}), got {start_epoch}")
    if terms < 0:
        raise ShiftkitError(f"{prefix}terms (of the Neumann series) must be >= 0, got {terms}")
    if not (math.isfinite(step) and step > 0):
        raise ShiftkitError(f"{prefix}step (of the Neumann series) must be a finite number > 0, got {step}")
    if curvature_batches is not None and not 1 <= curvature_batches <= batches:
        raise ShiftkitError(f"{prefix}curvature_batches must lie in [1, batches={batches}], got {curvature_batches}")


class AutoBalanceSearch:
    """Upper-level updates of the ``autobalance`` loss's α inside :func:`~shiftkit.train.fit` (docs/METHODS.md#autobalance-algorithm).

    At each optimizer step ``step`` with ``epoch >= start_epoch`` and ``step % every == 0``:

    - draw ``batches`` train batches B_T and ``batches`` validation batches B_V of ``batch_size`` each
      (own ``torch.Generator`` seeded by ``seed``; train inputs through ``splits.pipeline`` with its
      augmentation, validation inputs without);
    - ``inner(θ, α) = (1/b) Σ_{B ∈ B_T} mean_{i ∈ B} ℓ_train(y_i, f_θ(x_i); α)`` (model and loss both by
      ``torch.func.functional_call``), ``outer(θ) = (1/b) Σ_{B ∈ B_V} objective(f_θ(B))``;
    - ``α.grad`` ≈ ``-(∂²L_in/∂θ∂α)ᵀ H⁻¹ ∇_θ L_out`` by :func:`shiftkit.bilevel.output_hypergradient`
      (the value of ``hypergradient(inner, outer, θ, α, terms, step)`` when ``curvature_batches=None``
      and ``stop_on_growth=False``), then one step of the upper optimizer on ``loss.hyperparameters()``.

    Defaults and their source: ``every=20`` (code ``iter_interval``; 30 on ImageNet/iNat), ``batches=10``
    (code ``train_batches``/``val_batches``), ``terms=5``, ``step=1.0`` (code Neumann series),
    ``upper`` = SGD(lr 0.01, momentum 0.9, weight decay 1e-4) (code CIFAR-10; the paper says lr 0.05),
    ``objective="balanced_ce"`` (docs/METHODS.md#objective-balanced_ce, class imbalance). ``start_epoch=None`` means
    ``round(0.4·epochs)`` (code: 120 of 300 CIFAR epochs; the paper's warm-up t1).

    The upper schedule runs on the bilevel phase's own clock: during epoch e its rate is
    ``lr · upper.factor(e - start_epoch, epochs - start_epoch)`` (linear warm-up from start_epoch as in
    the code); milestones therefore count from start_epoch (code's absolute milestone m -> m - start_epoch).

    ``curvature_batches=1`` (``None``: all ``batches``, the code's estimator): the Neumann series' Hessian
    comes from the first train batch only, while ∇_θ L_out uses all ``batches`` validation batches and
    the mixed term all ``batches`` train batches (:func:`shiftkit.bilevel.output_hypergradient`). Each
    Hessian-vector product then costs one batch instead of ``batches``; this is what brings the search
    under twice the cost of ERM (benchmarks/autobalance.py). [INFERRED: a curvature mini-batch as in
    Hessian-free optimization; measured against the code's estimator in docs/PERFORMANCE.md.]

    ``stop_on_growth=True`` (ours; ``False`` is the code's plain series) drops the Neumann terms from the
    first one that grows (:func:`shiftkit.bilevel.neumann_inverse_hvp`): identical where the series
    converges, bounded where it diverges, which on ``fmnist_spurious`` otherwise blew α up (measured,
    docs/REPRODUCTION.md).

    α moves only at hyper-updates, as in Algorithm 1. The released ``train_epoch`` (``core/trainer.py``)
    also takes one more upper step after every training iteration of a bilevel epoch, on the plain
    ``cross_entropy`` of one validation batch, which does not depend on ``dy`` or ``ly``
    (``up_optimizer.zero_grad(); up_loss.backward(); up_optimizer.step()``). On PyTorch >= 2 that step
    does nothing: ``zero_grad()`` sets the gradients to ``None``, the backward pass leaves them ``None``
    and SGD skips parameters without a gradient, so neither α nor the momentum buffers change (the model
    gradients it writes are cleared before the training step). Only on PyTorch < 2, where ``zero_grad()``
    filled zeros, did it move α, by weight decay and the momentum of the last hyper-update. It has no
    counterpart here.

    ``self.history``: one entry per :meth:`record` (each epoch start; :func:`search_and_retrain` adds the
    final state), ``{"epoch", "updates", <name>: nested list}`` for every hyperparameter, for run.json
    and plots. ``self.last_hypergradient`` holds the last applied hypergradient (dict of tensors).
    The loss's ``.grad`` is overwritten, not accumulated: fit's backward pass also writes into it.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: nn.Module,
        splits: Splits,
        objective: str = "balanced_ce",
        objective_options: Optional[dict] = None,
        *,
        epochs: int,
        start_epoch: Optional[int] = None,
        every: int = 20,
        batches: int = 10,
        terms: int = 5,
        step: float = 1.0,
        curvature_batches: Optional[int] = 1,
        stop_on_growth: bool = True,
        upper: Optional[OptimSpec] = None,
        batch_size: int = 64,
        seed: int = 0,
        device: str = "cpu",
    ):
        check_loss(loss)
        check_search(epochs=epochs, start_epoch=start_epoch, every=every, batches=batches, terms=terms, step=step,
                     curvature_batches=curvature_batches, batch_size=batch_size, prefix="AutoBalanceSearch: ")
        start_epoch = round(0.4 * epochs) if start_epoch is None else start_epoch
        self.model, self.loss, self.pipeline = model, loss, splits.pipeline
        self.train, self.val = splits.train.to(device), splits.val.to(device)
        self.objective = objectives.build(objective, num_classes=splits.num_classes, num_groups=splits.num_groups,
                                          **(objective_options or {}))
        self.objective.validate(self.val.y, self.val.g)
        self.begin, self.every, self.batches, self.terms, self.step_size = start_epoch, every, batches, terms, step
        self.stop_on_growth = stop_on_growth
        self.batch_size, self.device = batch_size, device
        self.curvature_batches = batches if curvature_batches is None else curvature_batches
        self.gen = torch.Generator().manual_seed(seed)
        self.aug_gen = torch.Generator(device=device).manual_seed(seed) if self.pipeline.augments else None
        self.upper = upper or build_optim("sgd", **DEFAULT_UPPER)
        self.opt, self.schedule = self.upper.make(list(loss.hyperparameters().values()), epochs - start_epoch)
        self.epoch, self.updates = -1, 0
        self.history: List[dict] = []
        self.last_hypergradient: Optional[Dict[str, Tensor]] = None

    # ---- the hooks fit calls --------------------------------------------------------------------------
    def start_epoch(self, epoch: int) -> None:
        """Record α entering ``epoch`` and advance the upper schedule once per bilevel epoch."""
        if epoch > self.begin:
            self.schedule.step()
        self.epoch = epoch
        self.record(epoch)

    def after_step(self, step: int) -> None:
        if self.epoch < self.begin or step % self.every:
            return
        hparams = self.loss.hyperparameters()
        hyper = self.hypergradient(*self.draw())
        for name, p in hparams.items():
            p.grad = hyper[name].to(p.dtype)
        self.opt.step()
        self.last_hypergradient = hyper
        self.updates += 1

    # ---- checkpoints (fit saves and restores the outer update with the rest of the loop) --------------
    def state_dict(self) -> dict:
        """Everything the search carries between steps: the upper optimizer and its schedule, the bilevel
        clock, the α history, the last hypergradient and the generators that draw the hyper-batches and
        their augmentation. α itself lives in the loss's state."""
        return {
            "optimizer": self.opt.state_dict(), "schedule": self.schedule.state_dict(),
            "epoch": self.epoch, "updates": self.updates, "history": copy.deepcopy(self.history),
            "last_hypergradient": self.last_hypergradient, "generator": self.gen.get_state(),
            "augment_generator": self.aug_gen.get_state() if self.aug_gen is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.opt.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.epoch, self.updates, self.history = state["epoch"], state["updates"], copy.deepcopy(state["history"])
        # The flag PyTorch's schedulers read to warn of a schedule step before any optimizer step; it is not
        # in the optimizer's state, so a resumed search would warn where the uninterrupted one did not.
        self.opt._opt_called = self.updates > 0
        self.last_hypergradient = state["last_hypergradient"]
        self.gen.set_state(state["generator"])
        if self.aug_gen is not None:
            self.aug_gen.set_state(state["augment_generator"])

    # ---- pieces, public for tests and for custom loops -----------------------------------------------
    def draw(self):
        """Index tensors ``[b, batch_size]`` into train and validation: each row one batch, drawn without
        replacement (a fresh permutation per pass) as the code's data loaders do."""
        return tuple(self._indices(len(s)) for s in (self.train, self.val))

    def _indices(self, n: int) -> Tensor:
        need = self.batches * self.batch_size
        perms = [torch.randperm(n, generator=self.gen) for _ in range(math.ceil(need / n))]
        return torch.cat(perms)[:need].view(self.batches, self.batch_size).to(self.device)

    def stacked(self, split: Split, index: Tensor, train: bool) -> tuple:
        """Inputs ``[b, batch_size, ...]`` (train inputs through the pipeline with augmentation, batch by
        batch), labels and groups ``[b, batch_size]``."""
        x = torch.stack([self.pipeline(split.x[i], train=train, generator=self.aug_gen) for i in index])
        return x, split.y[index], split.g[index]

    def hypergradient(self, train_index: Tensor, val_index: Tensor) -> Dict[str, Tensor]:
        """The hypergradient of the objective on the validation batches w.r.t. the loss's α, with the
        training loss on the train batches, at the model's current θ (:func:`bilevel.output_hypergradient`).

        The training loss is the mean over the ``b`` train batches of each batch's mean loss, the objective
        the mean of its value on each validation batch; every batch is its own forward pass (BatchNorm
        normalizes it by its own statistics). On a GPU the batches go through the model together under
        ``torch.func.vmap``; on a CPU one at a time, since a 640-image pass is slower there than ten
        64-image passes (the chunks of :func:`bilevel.output_hypergradient`; the same value either way).
        The Neumann series' Hessian is that of the training loss on the first ``curvature_batches`` batches.
        """
        (xt, yt, gt), (xv, yv, gv) = self.stacked(self.train, train_index, True), self.stacked(self.val, val_index, False)
        buffers = dict(self.model.named_buffers())
        model, loss, objective = self.model, self.loss, self.objective
        alpha = {k: v.detach() for k, v in self.loss.hyperparameters().items()}

        def logits(params, x):  # x [n, batch, ...] -> [n, batch, K], one forward pass per batch
            if len(x) == 1:
                return functional_call(model, {**params, **buffers}, (x[0],))[None]
            return vmap(lambda xb: functional_call(model, {**params, **buffers}, (xb,)))(x)

        def train_loss(z, hparams, y, g):
            return functional_call(loss, hparams, (z.flatten(0, 1), y.flatten(), g.flatten())).mean()

        def outer(params, s):
            z = logits(params, xv[s])
            return torch.stack([objective(zb, yb, gb) for zb, yb, gb in zip(z, yv[s], gv[s])]).mean()

        c = self.curvature_batches

        def curvature(params):
            return train_loss(logits(params, xt[:c]), alpha, yt[:c], gt[:c])

        chunks = [slice(None)] if xt.device.type == "cuda" else [slice(i, i + 1) for i in range(len(xt))]
        outputs = [lambda p, s=s: logits(p, xt[s]) for s in chunks]
        losses_ = [lambda z, h, s=s: train_loss(z, h, yt[s], gt[s]) for s in chunks]
        outers = [lambda p, s=s: outer(p, s) for s in chunks]
        params = dict(self.model.named_parameters())
        with _frozen_batchnorm_stats(self.model):
            return output_hypergradient(outputs, losses_, outers, params, alpha, self.terms, self.step_size,
                                        curvature, self.stop_on_growth)

    def record(self, epoch: int) -> None:
        """Append α's current values (one host transfer per call, once per epoch)."""
        alpha = {k: v.detach().cpu().tolist() for k, v in self.loss.hyperparameters().items()}
        self.history.append({"epoch": epoch, "updates": self.updates, **alpha})


@dataclass
class SearchResult:
    """Both phases of Algorithm 1: the search's and the retraining's :class:`FitResult`, α* (as searched,
    per cluster), its path, and the retrained model."""

    search: FitResult
    retrain: FitResult
    alpha: Dict[str, list]
    history: List[dict] = field(default_factory=list)
    model: Optional[nn.Module] = None


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
    """
    if retrain_on not in ("train+val", "train"):
        raise ShiftkitError(f"procedure.retrain_on must be 'train+val' or 'train', got '{retrain_on}'")
    if isinstance(interpolate_clusters, str):
        if interpolate_clusters != "unless_la":
            raise ShiftkitError("procedure.interpolate_clusters must be true, false or 'unless_la', "
                                f"got '{interpolate_clusters}'")
        interpolate = getattr(loss, "init", None) not in ("la", "group_la")
    else:
        interpolate = bool(interpolate_clusters)
    fit_options = dict(fit_options or {})
    state = checkpoint.state if checkpoint is not None else None
    done = state["search"] if state is not None and state.get("phase") == "retrain" else None
    if done is None:
        torch.manual_seed(seed)
        model = make_model()
        search = AutoBalanceSearch(model, loss, splits, epochs=search_epochs, batch_size=batch_size, seed=seed,
                                   device=device, **(search_options or {}))
        searched = fit(model, splits, loss, weighting.build("erm"), optim, epochs=search_epochs,
                       batch_size=batch_size, seed=seed, device=device, outer=search,
                       checkpoint=_phase(checkpoint, "search"), **fit_options)
        search.record(search_epochs)
        kept = {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in loss.state_dict().items()}
        done = {"result": dataclasses.asdict(searched), "history": search.history, "loss": kept, "rng": rng_states()}
        if checkpoint is not None and checkpoint.every:  # the phase boundary: never redo a finished search
            checkpoint.save({"phase": "retrain", "search": done})
    else:  # the search had finished: take its result and the RNG states it left
        searched = FitResult(**done["result"])
        loss.load_state_dict(done["loss"])
        set_rng_states(done["rng"])
    alpha = {k: v.detach().cpu().tolist() for k, v in loss.hyperparameters().items()}
    if interpolate and hasattr(loss, "per_class"):
        frozen = loss.per_class()
    else:
        frozen = copy.deepcopy(loss).requires_grad_(False)
    for p in frozen.parameters():
        p.grad = None
    torch.manual_seed(seed)
    retrain_splits = merge_train_val(splits) if retrain_on == "train+val" else splits
    model = make_model()
    retrained = fit(model, retrain_splits, frozen, weighting.build("erm"), optim, epochs=retrain_epochs,
                    batch_size=batch_size, seed=seed, device=device,
                    checkpoint=_phase(checkpoint, "retrain", search=done), **fit_options)
    return SearchResult(searched, retrained, alpha, done["history"], model)


class _Phase:
    """One phase's view of a search run's checkpoint, as :func:`~shiftkit.train.fit` uses it: the loaded
    state only if it is this phase's loop, and saves tagged with the phase (and ``extra``, the finished
    search's result while retraining)."""

    def __init__(self, checkpoint: Checkpoint, phase: str, **extra):
        self.checkpoint, self.phase, self.extra, self.path = checkpoint, phase, extra, checkpoint.path
        state = checkpoint.state
        self.state = state if state is not None and state.get("phase") == phase and "epoch" in state else None

    def due(self, epoch: int, epochs: int) -> bool:
        return self.checkpoint.due(epoch, epochs)

    def due_within(self) -> bool:
        return self.checkpoint.due_within()

    def save(self, state: Dict[str, Any]) -> None:
        self.checkpoint.save({**state, **self.extra, "phase": self.phase})


def _phase(checkpoint: Optional[Checkpoint], phase: str, **extra) -> Optional[_Phase]:
    return None if checkpoint is None else _Phase(checkpoint, phase, **extra)


def resume_point(state: Dict[str, Any]) -> tuple:
    """Where a search run's checkpoint state resumes, ``(phase, epoch)`` (the epochs done in that phase),
    and the evaluations before it, each tagged with its ``"phase"`` as in ``metrics.jsonl``."""
    if state.get("phase") not in ("search", "retrain"):
        raise ShiftkitError("this checkpoint is not an AutoBalance search's; delete it to start the run over")
    records = [] if "epoch" not in state else [{"phase": state["phase"], **r} for r in state["selection"]["history"]]
    if state["phase"] == "retrain":
        records = [{"phase": "search", **r} for r in state["search"]["result"]["history"]] + records
    return state["phase"], state.get("epoch", 0), records
