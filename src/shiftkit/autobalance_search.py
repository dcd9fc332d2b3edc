"""AutoBalance's outer update (Li et al. 2021, Algorithm 1; docs/METHODS.md#protocol-autobalance):
:class:`AutoBalanceSearch`, the ``outer`` object of :func:`shiftkit.train.fit` that moves the
``autobalance`` loss's α by the implicit hypergradient of a validation objective, and the checks of a
search's loss and settings (:mod:`shiftkit.autobalance_alpha`).
:func:`shiftkit.autobalance.search_and_retrain` runs the whole algorithm around it.
"""

from __future__ import annotations

import contextlib
import copy
import math
from typing import Dict, List, Optional

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from . import augment as augmentations
from . import objectives
from .autobalance_alpha import AUGMENT, augmenter, check_loss, check_search, learned  # noqa: F401
from .bilevel import output_hypergradient
from .data.base import Split, Splits
from .optim import OptimSpec
from .optim import build as build_optim

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

    ``augment`` (:mod:`shiftkit.augment`): the training batches of the hypergradient are augmented too, and
    a learned augmentation's logits join α (:meth:`alpha`; docs/METHODS.md#augment-search), stepped by
    their own Adam at ``augment_lr`` (MADAO's policy optimizer) on ``upper``'s schedule, while the loss's α
    keeps ``upper``.

    ``self.history``: one entry per :meth:`record` (each epoch start;
    :func:`~shiftkit.autobalance.search_and_retrain` adds the final state), ``{"epoch", "updates", <name>:
    nested list}`` for every hyperparameter, for run.json and plots. ``self.last_hypergradient`` holds the
    last applied hypergradient (dict of tensors). The loss's ``.grad`` is overwritten, not accumulated:
    fit's backward pass also writes into it.
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
        augment=None,
        augment_lr: float = 1e-3,
    ):
        self.augment = augment if augmentations.active(augment) else None
        check_loss(loss, augment=self.augment)
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
        augments = self.pipeline.augments or self.augment is not None
        self.aug_gen = torch.Generator(device=device).manual_seed(seed) if augments else None
        self.upper = upper or build_optim("sgd", **DEFAULT_UPPER)
        alpha = self.alpha()
        mine = [v for k, v in alpha.items() if not k.startswith(AUGMENT)]
        own = [v for k, v in alpha.items() if k.startswith(AUGMENT)]
        self.opt, self.schedule = self.upper.make(mine, epochs - start_epoch) if mine else (None, None)
        # A learned augmentation's logits: Adam, as MADAO updates its policy, on the upper schedule's clock.
        self.augment_opt = torch.optim.Adam(own, lr=augment_lr) if own else None
        self.augment_schedule = None if not own else torch.optim.lr_scheduler.LambdaLR(
            self.augment_opt, lambda e: self.upper.factor(e, epochs - start_epoch))
        self.epoch, self.updates = -1, 0
        self.history: List[dict] = []
        self.last_hypergradient: Optional[Dict[str, Tensor]] = None

    # ---- the hooks fit calls --------------------------------------------------------------------------
    def start_epoch(self, epoch: int) -> None:
        """Record α entering ``epoch`` and advance the upper schedule once per bilevel epoch."""
        if epoch > self.begin:
            for schedule in (self.schedule, self.augment_schedule):
                if schedule is not None:
                    schedule.step()
        self.epoch = epoch
        self.record(epoch)

    def after_step(self, step: int) -> None:
        if self.epoch < self.begin or step % self.every:
            return
        hparams = self.alpha()
        hyper = self.hypergradient(*self.draw())
        for name, p in hparams.items():
            p.grad = hyper[name].to(p.dtype)
        for opt in (self.opt, self.augment_opt):
            if opt is not None:
                opt.step()
        self.last_hypergradient = hyper
        self.updates += 1

    # ---- checkpoints (fit saves and restores the outer update with the rest of the loop) --------------
    def state_dict(self) -> dict:
        """Everything the search carries between steps: the upper optimizers and schedule, the bilevel clock,
        α's history, the last hypergradient and the generators (α itself lives in the loss and policy)."""
        return {
            "optimizer": self.opt.state_dict() if self.opt is not None else None,
            "schedule": self.schedule.state_dict() if self.schedule is not None else None,
            "augment_optimizer": self.augment_opt.state_dict() if self.augment_opt is not None else None,
            "augment_schedule": self.augment_schedule.state_dict() if self.augment_schedule is not None else None,
            "epoch": self.epoch, "updates": self.updates, "history": copy.deepcopy(self.history),
            "last_hypergradient": self.last_hypergradient, "generator": self.gen.get_state(),
            "augment_generator": self.aug_gen.get_state() if self.aug_gen is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        if self.opt is not None:
            self.opt.load_state_dict(state["optimizer"])
            self.schedule.load_state_dict(state["schedule"])
            # The flag PyTorch's schedulers read to warn of a schedule step before any optimizer step; it is
            # not in the optimizer's state, so a resumed search would warn where the uninterrupted one did not.
            self.opt._opt_called = state["updates"] > 0
        if self.augment_opt is not None:
            self.augment_opt.load_state_dict(state["augment_optimizer"])
            self.augment_schedule.load_state_dict(state["augment_schedule"])
            self.augment_opt._opt_called = state["updates"] > 0
        self.epoch, self.updates, self.history = state["epoch"], state["updates"], copy.deepcopy(state["history"])
        self.last_hypergradient = state["last_hypergradient"]
        self.gen.set_state(state["generator"])
        if self.aug_gen is not None:
            self.aug_gen.set_state(state["augment_generator"])

    # ---- pieces, public for tests and for custom loops -----------------------------------------------
    def alpha(self) -> Dict[str, Tensor]:
        """The tensors the search tunes, by name (:func:`learned`)."""
        return learned(self.loss, self.augment)

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
        """The hypergradient of the objective on the validation batches w.r.t. α (:meth:`alpha`), with the
        training loss on the train batches, at the model's current θ (:func:`bilevel.output_hypergradient`).

        The training loss is the mean over the ``b`` train batches of each batch's mean loss, the objective
        the mean of its value on each validation batch; every batch is its own forward pass (BatchNorm
        normalizes it by its own statistics). On a GPU the batches go through the model together under
        ``torch.func.vmap``; on a CPU one at a time, since a 640-image pass is slower there than ten
        64-image passes (the chunks of :func:`bilevel.output_hypergradient`; the same value either way).
        The Neumann series' Hessian is that of the training loss on the first ``curvature_batches`` batches.

        With an augmentation (docs/METHODS.md#augment-search) the train batches are augmented once, from
        the search's generator, and the training loss is that of the augmented batches throughout, with
        the augmentation's relaxed gates; a learned augmentation's tensors are differentiated through the
        augmented inputs (``through_inputs``).
        """
        (xt, yt, gt), (xv, yv, gv) = self.stacked(self.train, train_index, True), self.stacked(self.val, val_index, False)
        buffers = dict(self.model.named_buffers())
        model, loss, objective, augment = self.model, self.loss, self.objective, self.augment
        alpha = {k: v.detach() for k, v in self.alpha().items()}

        def logits(params, x):  # x [n, batch, ...] -> [n, batch, K], one forward pass per batch
            if len(x) == 1:
                return functional_call(model, {**params, **buffers}, (x[0],))[None]
            return vmap(lambda xb: functional_call(model, {**params, **buffers}, (xb,)))(x)

        def train_loss(z, hparams, y, g):
            own = {k: v for k, v in hparams.items() if not k.startswith(AUGMENT)}
            return functional_call(loss, own, (z.flatten(0, 1), y.flatten(), g.flatten())).mean()

        def outer(params, s):
            z = logits(params, xv[s])
            return torch.stack([objective(zb, yb, gb) for zb, yb, gb in zip(z, yv[s], gv[s])]).mean()

        if augment is not None:  # the training loss's inputs at the current α, from one draw
            augmented = augmenter(augment, xt, yt, self.aug_gen)
            with torch.no_grad():
                xt = augmented(alpha, slice(None))
        c = self.curvature_batches

        def curvature(params):
            return train_loss(logits(params, xt[:c]), alpha, yt[:c], gt[:c])

        chunks = [slice(None)] if xt.device.type == "cuda" else [slice(i, i + 1) for i in range(len(xt))]
        outputs = [lambda p, s=s: logits(p, xt[s]) for s in chunks]
        losses_ = [lambda z, h, s=s: train_loss(z, h, yt[s], gt[s]) for s in chunks]
        outers = [lambda p, s=s: outer(p, s) for s in chunks]
        through = None
        if augment is not None and any(k.startswith(AUGMENT) for k in alpha):
            through = [lambda p, h, s=s: logits(p, augmented(h, s)) for s in chunks]
        params = dict(self.model.named_parameters())
        with _frozen_batchnorm_stats(self.model):
            return output_hypergradient(outputs, losses_, outers, params, alpha, self.terms, self.step_size,
                                        curvature, self.stop_on_growth, through)

    def record(self, epoch: int) -> None:
        """Append α's current values (one host transfer per call, once per epoch); a learned
        augmentation's as its magnitudes and probabilities per row (``augment.magnitude``, ...), not logits."""
        alpha = {k: v.detach().cpu().tolist() for k, v in self.alpha().items() if not k.startswith(AUGMENT)}
        if self.augment is not None and self.augment.hyperparameters():
            alpha.update({AUGMENT + k: v for k, v in self.augment.values().items()})
        self.history.append({"epoch": epoch, "updates": self.updates, **alpha})
