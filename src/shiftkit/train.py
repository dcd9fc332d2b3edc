"""The one training loop: minimize ``mean(weights * losses)`` over batches drawn by a sampler.

ERM, importance weighting and DRO differ only in the weighting scheme, CE and the polynomially-tailed
loss only in the loss, undersampling only in the sampler (docs/METHODS.md#one-loop). Data stays on the training device;
inside an epoch nothing synchronizes with the host: each step's objective and loss stay on the device and
are checked once per epoch, with the parameters' finiteness, for divergence (:mod:`shiftkit.divergence`).
Model selection: :mod:`shiftkit.selection`.

The loop trains S members (:func:`fit_members`): one model for a plain run (:func:`fit`, S = 1), or the
S seeds of a sweep as one vectorized ensemble (:func:`shiftkit.ensemble.fit_ensemble`). What differs
between the two is the member axis of :mod:`shiftkit.members`; every feature of the loop (checkpoints at
epoch ends and inside epochs, exact resume, divergence checks, selection, ``compile``, mixed precision)
is written once, here.

One module: the loop and the helpers only it calls (the epoch, restoring a checkpoint, evaluation) are
the one place where every feature of training is written.
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from . import augment as augmentations
from . import distributed, guards, precision, threads
from .augment import Augmentation
from .checkpoint import Checkpoint, GeneratorPart, MemberParts, capture, restore
from .data.base import Split, Splits
from .data.pipeline import Pipeline
from .divergence import DEFAULT_FACTOR, Diverged, NonFiniteLoss, Tally, Watch
from .errors import ShiftkitError
from .evaluation import evaluate_model
from .members import Single, Stacked, refuse, wants_validation
from .optim import OptimSpec
from .sampling import Sampler, Shuffle
from .selection import FitResult, Selection, parse_select
from .weighting import Weighting


__all__ = ["Diverged", "FitResult", "NonFiniteLoss", "Selection", "evaluate_model", "fit", "fit_members",
           "parse_select", "saved_histories", "train_epoch"]

Members = Union[Single, Stacked]


def is_eval_epoch(epoch: int, epochs: int, eval_every: int) -> bool:
    return (epoch + 1) % eval_every == 0 or epoch + 1 == epochs


def check_schedule(epochs: int, batch_size: int, eval_every: int, amp: str) -> None:
    if epochs < 1 or batch_size < 0 or eval_every < 1:
        raise ShiftkitError("train.epochs and train.eval_every must be >= 1 and train.batch_size >= 0")
    if amp not in precision.CHOICES:
        raise ShiftkitError(f"train.amp must be one of {', '.join(precision.CHOICES)}, got '{amp}'")


#: Mixed precision choices: ``bf16`` autocasts the forward pass and the loss to bfloat16.
AMP = {"none": None, "bf16": torch.bfloat16}


def autocast(device: str, amp: str):
    """The autocast context of ``amp`` on ``device`` (a no-op for ``none``)."""
    if AMP[amp] is None:
        return contextlib.nullcontext()  # an enabled=False autocast costs a step of the demo's MLP 3%
    return torch.autocast(torch.device(device).type, dtype=AMP[amp])


@guards.trusted()  # the split's ids were checked when it was built: no host sync per step
def train_epoch(
    forward: Callable[[Tensor], Tensor],
    loss: Callable[..., Tensor],
    weighting,
    opt: torch.optim.Optimizer,
    train: Split,
    order: Tensor,
    batch_size: int,
    pipeline,
    generator,
    device: str,
    amp: str = "none",
    tally: Optional[Tally] = None,
    after_step: Optional[Callable[[int], None]] = None,
    on_step: Optional[Callable[[Tally], None]] = None,
    augment: Optional[Augmentation] = None,
) -> Tally:
    """One pass over ``order`` in batches: the loop's steps, with no host synchronization.

    ``order`` is ``[N]`` for one model, or ``[S, N]`` for S members (with the member-axis ``forward``,
    ``loss``, ``weighting`` and ``pipeline`` of :mod:`shiftkit.members`; the objective is then the sum of
    the members' objectives, so that no member's gradient sees another's loss). Each step's objective and
    summed per-example loss go into ``tally`` (:class:`~shiftkit.divergence.Tally`; a fresh one from step
    0 if ``None``), whose length says how many batches of ``order`` are done: a tally restored from a
    checkpoint inside the epoch continues after them. ``after_step(step)`` runs after each optimizer step
    (an outer update such as AutoBalance's, docs/METHODS.md#autobalance-algorithm), then ``on_step(tally)``
    (a checkpoint inside the epoch). ``augment`` (:mod:`shiftkit.augment`, one model only) transforms
    each batch after the pipeline, with its labels, from the same generator. Returns the tally.
    """
    prepare = _prepared(pipeline, augment)
    tally = tally if tally is not None else Tally(first_step=0)
    sharded = distributed.active()
    unit = getattr(weighting, "unit", False) and train.weight is None  # ERM: the mean, no multiply by ones
    for idx in order.split(batch_size, dim=-1)[len(tally.sizes):]:
        y, g = train.y[idx], train.g[idx]
        if sharded:
            objective, local, per_example = _sharded_objective(
                forward, loss, weighting, train, idx, prepare, generator, device, amp
            )
        else:
            with autocast(device, amp):
                per_example = loss(forward(prepare(train.x[idx], y, generator)), y, g).float()
            if unit:
                objective = per_example.mean(-1)
            else:
                w = weighting.weights(per_example.detach(), y, g)
                if train.weight is not None:  # per-example multipliers (sample weights) carried by the split
                    w = w * train.weight[idx]
                objective = (w * per_example).mean(-1)  # [S] for S members
            local = objective if objective.dim() == 0 else objective.sum()
        opt.zero_grad(set_to_none=True)
        local.backward()
        opt.step()
        tally.add(objective, per_example.detach().sum(-1), idx.shape[-1])
        if after_step is not None:
            after_step(tally.first_step + len(tally.sizes) - 1)
        if on_step is not None:
            on_step(tally)
    return tally


def _prepared(pipeline, augment: Optional[Augmentation]) -> Callable:
    """``prepare(x, y, generator)``: the training inputs of a batch, through ``pipeline`` with its
    augmentation and then ``augment`` (when it is active)."""
    if not augmentations.active(augment):
        return lambda x, y, generator: pipeline(x, train=True, generator=generator)
    return lambda x, y, generator: augment(pipeline(x, train=True, generator=generator), y, generator)


def _sharded_objective(forward, loss, weighting, train: Split, idx: Tensor, prepare, generator, device, amp):
    """This rank's share of a global batch's objective (:mod:`shiftkit.distributed`): the objective's
    value over the whole batch, the local term whose DDP-averaged gradient is the whole batch's, and the
    whole batch's per-example losses (detached)."""
    n, world = idx.numel(), distributed.world_size()
    lo, hi = distributed.my_shard(n)
    y, g = train.y[idx], train.g[idx]
    if generator is None:  # deterministic inputs: transform only the shard
        x = prepare(train.x[idx[lo:hi]], y[lo:hi], None)
    else:  # every rank draws the whole batch's augmentation, so the draws match one process's
        x = prepare(train.x[idx], y, generator)[lo:hi]
    with autocast(device, amp):
        mine = loss(forward(x), y[lo:hi], g[lo:hi]).float()
    per_example = distributed.gather(mine.detach(), n)
    w = weighting.weights(per_example, y, g)
    if train.weight is not None:
        w = w * train.weight[idx]
    return (w * per_example).mean(), (w[lo:hi] * mine).sum() * (world / n), per_example


def fit(
    model: nn.Module,
    splits: Splits,
    loss: nn.Module,
    weighting: Weighting,
    optim: OptimSpec,
    *,
    epochs: int,
    batch_size: int = 64,
    eval_every: int = 1,
    select: str = "last",
    sampler: Optional[Sampler] = None,
    seed: int = 0,
    device: str = "cpu",
    amp: str = "none",
    compile: bool = False,
    on_eval: Optional[Callable[[dict], None]] = None,
    outer=None,
    probe: Optional[Callable[[nn.Module, Split, Pipeline], dict]] = None,
    checkpoint: Optional[Checkpoint] = None,
    divergence: float = DEFAULT_FACTOR,
    augment: Optional[Augmentation] = None,
) -> FitResult:
    """Train ``model`` in place for ``epochs`` epochs; ``batch_size=0`` means full batch.

    ``seed`` fixes the data order and augmentation (the caller seeds the model's initialization).
    ``amp="bf16"`` autocasts the forward pass (``"auto"``: :mod:`shiftkit.precision`); ``compile=True`` runs the model through
    ``torch.compile``. ``on_eval`` receives each evaluation record ``{"epoch", "step", "train_loss",
    "train", "val", "test"}``. With ``select="best:<metric>"`` the model ends holding the selected weights.
    ``outer`` is an optional outer update around the same loop (AutoBalance's hyperparameter search,
    docs/METHODS.md#autobalance-algorithm): ``outer.start_epoch(epoch)`` before each epoch and ``outer.after_step(step)`` after each
    optimizer step; it never builds an optimizer for the model or a loop of its own. ``probe(model, train,
    pipeline)`` (e.g. :class:`shiftkit.diagnostics.Probe`) adds its dict to each evaluation record as
    ``"diagnostics"``. With a ``checkpoint`` (:class:`shiftkit.checkpoint.Checkpoint`) the loop saves its
    whole state at the end of due epochs and, if the checkpoint holds a loaded state, resumes from it: the
    run then finishes exactly as one never interrupted. Under ``torchrun`` the model trains data-parallel
    (:mod:`shiftkit.distributed`). Every epoch is checked for divergence before it is evaluated or saved
    (:mod:`shiftkit.divergence`: a non-finite objective or parameter, or a mean training loss more than
    ``divergence`` times its initial level; ``divergence=0`` turns the last rule off): a failed epoch raises
    :class:`NonFiniteLoss` naming its step, and the checkpoint keeps the last good state. A scheme that
    asks for validation losses (Group DRO's ``automatic_adjustment``) gets them after every training epoch,
    as :func:`fit_members` describes. ``augment`` (:mod:`shiftkit.augment`) augments each training batch
    after the pipeline, with its labels (a learned augmentation's state is checkpointed with the loop).

    This is :func:`fit_members` with one member.

    >>> import torch
    >>> from shiftkit import data, losses, models, optim, weighting
    >>> splits = data.build("two_gaussians")
    >>> _ = torch.manual_seed(0)
    >>> net = models.build("linear", input_shape=(2,), num_classes=2)
    >>> result = fit(net, splits, losses.build("ce"), weighting.build("erm"), optim.build("sgd", lr=0.1),
    ...              epochs=50, batch_size=0)
    >>> result.final["train"]["acc"]
    1.0
    """
    (result,) = fit_members(
        Single(model, device, compile), splits, loss, [weighting], optim, seeds=[seed],
        samplers=[sampler or Shuffle()], epochs=epochs, batch_size=batch_size, eval_every=eval_every,
        select=select, device=device, amp=amp, outer=outer, probe=probe, checkpoint=checkpoint,
        divergence=divergence, on_eval=None if on_eval is None else (lambda s, record: on_eval(record)),
        augment=augment,
    )
    return result


def fit_members(
    members: Members,
    splits: Splits,
    loss: nn.Module,
    weightings: Sequence[Weighting],
    optim: OptimSpec,
    *,
    seeds: Sequence[int],
    epochs: int,
    batch_size: int = 64,
    eval_every: int = 1,
    select: str = "last",
    samplers: Optional[Sequence[Sampler]] = None,
    device: str = "cpu",
    amp: str = "none",
    on_eval: Optional[Callable[[int, dict], None]] = None,
    outer=None,
    probe: Optional[Callable[[nn.Module, Split, Pipeline], dict]] = None,
    checkpoint: Optional[Checkpoint] = None,
    divergence: float = DEFAULT_FACTOR,
    augment: Optional[Augmentation] = None,
) -> List[FitResult]:
    """Train every member ``s`` with ``weightings[s]``, ``samplers[s]`` and ``seeds[s]`` (data order and
    augmentation), as :func:`fit` describes; ``on_eval(s, record)`` per member and evaluation. Each member
    keeps what makes it the run of its seed: its generators, weighting state, selection and divergence
    reference (a member that fails stops the fit, naming its seed). A scheme that asks for validation
    losses (:func:`shiftkit.members.wants_validation`; Group DRO's ``automatic_adjustment``) gets, after
    every training epoch (group_DRO adjusts after each epoch's validation; ``eval_every`` does not thin it
    out), its member's per-example ``loss`` on the validation split, unweighted, in evaluation mode and
    without autocast or augmentation, as evaluation computes; the state it then takes is what a
    checkpoint at that epoch's end saves (docs/METHODS.md#weighting-group_dro). Returns one result per
    member; the members end holding their final (or selected) weights. Function of more than 40 lines:
    the loop's sequence reads best in one place; its parts are the helpers below it."""
    check_schedule(epochs, batch_size, eval_every, amp)
    amp = precision.resolve(amp, device, None)  # no family is named here: "auto" is float32
    n = members.size
    if not len(weightings) == len(seeds) == n:
        raise ShiftkitError("an ensemble needs one weighting scheme and one seed per member")
    if outer is not None and distributed.active():
        raise ShiftkitError("an AutoBalance search runs in one process: start it without torchrun")
    augment = augment if augmentations.active(augment) else None
    if members.axis:
        refuse(torchrun=distributed.active(), probe=probe is not None, outer=outer is not None,
               augment=augment is not None)
    samplers = list(samplers) if samplers else [Shuffle() for _ in range(n)]
    selections = [Selection(select) for _ in range(n)]
    loss.to(device)
    for w in weightings:
        w.to(device)
    train, val, test = (s.to(device) for s in (splits.train, splits.val, splits.test))
    opt, schedule = optim.make(members.trainable(), epochs)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    pipeline = splits.pipeline
    # Augmentation draws on the training device, from each member's own generator: reproducible per seed.
    augments = pipeline.augments or augment is not None
    aug_gens = [torch.Generator(device=device).manual_seed(s) for s in seeds] if augments else None
    if augment is not None:
        augment.to(device)
    weigher = members.weighting(weightings)
    validating = any([wants_validation(w) for w in weightings])  # every scheme checked: a nested one is refused
    watch = Watch(divergence, members=n, who=[f" of seed {s}" for s in seeds]) if members.axis else Watch(divergence)
    parts = _parts(members, opt, schedule, loss, weigher, samplers, selections, gens, aug_gens, outer, watch)
    if augment is not None:  # a learned augmentation changes during a search: it resumes with the loop
        parts["augment"] = augment
    state = checkpoint.state if checkpoint is not None else None
    best, step, first_epoch, earlier = _restore(parts, state, checkpoint, members.axis, seeds)
    members.start()
    watched = members.watched(loss)
    forward, member_loss, member_pipeline = members.forward, members.loss(loss), members.pipeline(pipeline)
    bs = batch_size or len(train)
    start = time.perf_counter()

    def save(**position) -> None:
        values = {"best_states": best, "seeds": list(seeds)} if members.axis else {"best_state": best[0]}
        checkpoint.save(capture(parts, **position, **values, seconds=earlier + time.perf_counter() - start))

    inside = state is not None and "batch" in state  # the checkpoint was saved inside an epoch
    for epoch in range(first_epoch, epochs):
        members.train()
        weigher.train()
        weigher.start_epoch(epoch)  # idempotent; the outer update's epoch start is in its restored state
        if inside:
            order, tally, inside = state["order"].to(device), Tally.from_state(state["tally"], device), False
        else:
            if outer is not None:
                outer.start_epoch(epoch)
            order = members.orders(samplers, splits.train, gens).to(device)
            tally = Tally(first_step=step)

        def within(tally: Tally, epoch=epoch, order=order) -> None:
            # a host clock: no device sync per step; a state that already broke is never saved
            threads.adapt()  # follows the machine's free cores where the process's entry point asked for it
            if checkpoint is not None and checkpoint.due_within() and watch.clean(tally, watched):
                save(epoch=epoch, batch=len(tally.sizes), order=order.cpu(), tally=tally.state_dict(),
                     step=tally.first_step + len(tally.sizes))

        tally = train_epoch(
            forward, member_loss, weigher, opt, train, order, bs, member_pipeline, members.generator(aug_gens),
            device, amp, tally, after_step=None if outer is None else outer.after_step, on_step=within,
            augment=augment,
        )
        members.end_epoch(weigher)
        step = tally.first_step + len(tally.sizes)
        schedule.step()
        mean_loss = watch.check(tally, epoch, watched)  # before anything is evaluated or saved
        if is_eval_epoch(epoch, epochs, eval_every):
            head = {"epoch": epoch + 1, "step": step, "lr": opt.param_groups[0]["lr"]}
            _evaluate(members, {"train": train, "val": val, "test": test}, pipeline, splits.train.group_counts,
                      head, mean_loss, selections, best, probe, on_eval)
        if validating:  # after the epoch's evaluation, before its checkpoint
            members.validated(weigher, val, pipeline, loss)
        if checkpoint is not None and checkpoint.due(epoch, epochs):
            save(epoch=epoch + 1, step=step)
    results = [sel.result(earlier + time.perf_counter() - start, step) for sel in selections]
    for result, final in zip(results, members.finish(best)):
        result.final_state = final
    return results


def saved_histories(state: dict) -> List[List[dict]]:
    """Each member's evaluation records in a checkpoint of :func:`fit_members` (what a resumed run's
    ``metrics.jsonl`` holds again): the readers of a checkpoint need not know its layout."""
    if "selections" in state:
        return [list(selection["history"]) for selection in state["selections"]]
    return [list(state["selection"]["history"])]


def _parts(members: Members, opt, schedule, loss, weigher, samplers, selections, gens, aug_gens, outer,
           watch: Watch) -> Dict[str, object]:
    """What a checkpoint saves, by key: a plain run's parts under singular keys (``sampler``, ...), an
    ensemble's as one list per key (``samplers``, ...)."""
    def each(key: str, items: list) -> dict:
        return {f"{key}s": MemberParts(items)} if members.axis else {key: items[0]}

    parts = {"model": members.part, "optimizer": opt, "schedule": schedule, "loss": loss,
             ("weightings" if members.axis else "weighting"): weigher, **each("sampler", samplers),
             **each("selection", selections), **each("order_generator", [GeneratorPart(g) for g in gens])}
    if aug_gens is not None:
        parts.update(each("augment_generator", [GeneratorPart(g) for g in aug_gens]))
    if outer is not None:  # an outer update's state (AutoBalance's upper optimizer, α history) resumes too
        parts["outer"] = outer
    parts["divergence"] = watch
    return parts


def _restore(parts: dict, state: Optional[dict], checkpoint: Optional[Checkpoint], axis: bool,
             seeds: Sequence[int]) -> tuple:
    """Load a checkpoint's ``state`` into ``parts``; returns each member's selected weights, the step,
    the first epoch to train and the seconds already spent."""
    if state is None:
        return [None] * len(seeds), 0, 0, 0.0
    best_key = "best_states" if axis else "best_state"
    required = (best_key, "step", "epoch", "seconds", *(("seeds",) if axis else ()))
    restore(parts, state, checkpoint.path, required=required, optional=("divergence",))
    if axis and state["seeds"] != list(seeds):
        raise ShiftkitError(f"a checkpoint of seeds {state['seeds']} cannot resume seeds {list(seeds)}")
    best = state[best_key] if axis else [state[best_key]]
    return best, state["step"], state["epoch"], state["seconds"]


def _evaluate(members: Members, splits: Dict[str, Split], pipeline: Pipeline, counts, head: dict,
              mean_loss: List[float], selections: List[Selection], best: list, probe, on_eval) -> None:
    """Every member's evaluation record (``head``, its mean training loss, its metrics on ``splits`` and
    its probe's diagnostics), offered to its selection (which keeps its weights if chosen) and to
    ``on_eval``."""
    for s, metrics in enumerate(members.evaluate(splits, pipeline, counts)):
        record = {**head, "train_loss": mean_loss[s], **metrics}
        if probe is not None:
            record["diagnostics"] = probe(members.models[s], splits["train"], pipeline)
        if selections[s].offer(record):
            best[s] = members.state(s)
        if on_eval is not None:
            on_eval(s, record)
