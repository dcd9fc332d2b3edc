"""The one training loop: minimize ``mean(weights * losses)`` over batches drawn by a sampler.

ERM, importance weighting and DRO differ only in the weighting scheme, CE and the polynomially-tailed
loss only in the loss, undersampling only in the sampler (docs/METHODS.md#one-loop). Data stays on the training device;
inside an epoch nothing synchronizes with the host: each step's objective and loss stay on the device and
are checked once per epoch, with the parameters' finiteness, for divergence (:mod:`shiftkit.divergence`). Model selection (docs/METHODS.md#selection): ``last`` tests the final weights,
``best:<metric>`` the evaluation with the best validation ``<metric>`` (strictly better replaces, as a
max-mode checkpoint does; [W]'s IW-ES is ``best:group_balanced_acc``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch
from torch import Tensor, nn

from . import distributed, guards
from .checkpoint import Checkpoint, GeneratorPart, capture, restore
from .data.base import Split, Splits
from .data.pipeline import Pipeline
from .divergence import DEFAULT_FACTOR, Diverged, NonFiniteLoss, Tally, Watch
from .errors import ShiftkitError
from .metrics import LOWER_IS_BETTER, SCALAR_METRICS, Accumulator
from .optim import OptimSpec
from .sampling import Sampler, Shuffle
from .weighting import Weighting


__all__ = ["Diverged", "FitResult", "NonFiniteLoss", "Selection", "evaluate_model", "fit", "train_epoch"]


@dataclass
class FitResult:
    """Metrics per split (``train``, ``val``, ``test``) at the end and at the selected evaluation."""

    final: Dict[str, dict]
    selected: Dict[str, dict]
    selected_epoch: int
    history: List[dict] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0
    #: The last epoch's state dict (CPU) when the model was left at an earlier, selected one; else None.
    #: Not a dataclass field: the record of a result (``dataclasses.asdict``) stays plain numbers.
    final_state = None


def parse_select(select: str) -> Optional[str]:
    """``"last"`` -> ``None``; ``"best:<metric>"`` -> ``<metric>``; anything else is an error."""
    if select == "last":
        return None
    metric = select[5:] if select.startswith("best:") else None
    if metric not in SCALAR_METRICS:
        raise ShiftkitError(
            f"train.select must be 'last' or 'best:<metric>' with a metric among {', '.join(SCALAR_METRICS)};"
            f" got '{select}'"
        )
    return metric


@torch.no_grad()
@guards.trusted()  # the split's ids were checked when it was built: no range check per batch
def evaluate_model(
    model: nn.Module,
    split: Split,
    batch_size: int = 4096,
    train_group_counts: Optional[list] = None,
    pipeline: Optional[Pipeline] = None,
) -> Dict[str, object]:
    """Metrics of ``model`` on ``split`` (docs/METHODS.md#metrics), accumulated over batches; inputs go through
    ``pipeline`` (without augmentation) when given. Under ``torchrun`` each rank counts its shard of the
    split and the counts are summed over ranks."""
    pipeline = pipeline or Pipeline()
    was_training = model.training
    model.eval()
    acc = Accumulator(split.num_classes, split.num_groups, device=split.y.device)
    lo, hi = distributed.my_shard(len(split))
    for idx in torch.arange(lo, hi, device=split.y.device).split(batch_size):
        acc.update(model(pipeline(split.x[idx])), split.y[idx], split.g[idx])
    distributed.sum_(acc.total)
    distributed.sum_(acc.correct)
    model.train(was_training)
    return acc.compute(train_group_counts)


def _better(value: Optional[float], best: Optional[float], metric: str) -> bool:
    if value is None:
        return False
    if best is None:
        return True
    return value < best if metric in LOWER_IS_BETTER else value > best


class Selection:
    """Model selection over evaluations (docs/METHODS.md#selection): the last one, or the best validation ``metric``."""

    def __init__(self, select: str):
        self.metric = parse_select(select)
        self.best_value: Optional[float] = None
        self.best_record: Optional[dict] = None
        self.history: List[dict] = []

    def offer(self, record: dict) -> bool:
        """Record an evaluation; True when it becomes the selected one (save the weights then)."""
        self.history.append(record)
        if self.metric is None or not _better(record["val"][self.metric], self.best_value, self.metric):
            return False
        self.best_value, self.best_record = record["val"][self.metric], record
        return True

    def state_dict(self) -> dict:
        return {"history": self.history, "best_value": self.best_value, "best_record": self.best_record}

    def load_state_dict(self, state: dict) -> None:
        self.history, self.best_value, self.best_record = state["history"], state["best_value"], state["best_record"]

    def result(self, seconds: float, steps: int) -> FitResult:
        final = self.history[-1]
        chosen = self.best_record or final
        return FitResult(
            final={k: final[k] for k in ("train", "val", "test")},
            selected={k: chosen[k] for k in ("train", "val", "test")},
            selected_epoch=chosen["epoch"],
            history=self.history,
            seconds=seconds,
            steps=steps,
        )


def is_eval_epoch(epoch: int, epochs: int, eval_every: int) -> bool:
    return (epoch + 1) % eval_every == 0 or epoch + 1 == epochs


def check_schedule(epochs: int, batch_size: int, eval_every: int, amp: str) -> None:
    if epochs < 1 or batch_size < 0 or eval_every < 1:
        raise ShiftkitError("train.epochs and train.eval_every must be >= 1 and train.batch_size >= 0")
    if amp not in AMP:
        raise ShiftkitError(f"train.amp must be one of {', '.join(AMP)}, got '{amp}'")


#: Mixed precision choices: ``bf16`` autocasts the forward pass and the loss to bfloat16.
AMP = {"none": None, "bf16": torch.bfloat16}


def autocast(device: str, amp: str):
    """The autocast context of ``amp`` on ``device`` (a no-op for ``none``)."""
    kind = torch.device(device).type
    return torch.autocast(kind, dtype=AMP[amp] or torch.bfloat16, enabled=AMP[amp] is not None)


@guards.trusted()  # the split's ids were checked when it was built: no host sync per step
def train_epoch(
    forward: Callable[[Tensor], Tensor],
    loss: nn.Module,
    weighting: Weighting,
    opt: torch.optim.Optimizer,
    train: Split,
    order: Tensor,
    batch_size: int,
    pipeline: Pipeline,
    generator: Optional[torch.Generator],
    device: str,
    amp: str = "none",
    tally: Optional[Tally] = None,
    after_step: Optional[Callable[[int], None]] = None,
    on_step: Optional[Callable[[Tally], None]] = None,
) -> Tally:
    """One pass over ``order`` in batches: the loop's steps, with no host synchronization.

    Each step's objective and summed per-example loss go into ``tally``
    (:class:`~shiftkit.divergence.Tally`; a fresh one from step 0 if ``None``), whose length says how many
    batches of ``order`` are done: a tally restored from a checkpoint inside the epoch continues after
    them. ``after_step(step)`` runs after each optimizer step (an outer update such as AutoBalance's,
    docs/METHODS.md#autobalance-algorithm), then ``on_step(tally)`` (a checkpoint inside the epoch). Returns the tally.
    """
    tally = tally if tally is not None else Tally(first_step=0)
    for idx in order.split(batch_size)[len(tally.sizes):]:
        y, g = train.y[idx], train.g[idx]
        if distributed.active():
            objective, local, per_example = _sharded_objective(
                forward, loss, weighting, train, idx, pipeline, generator, device, amp
            )
        else:
            with autocast(device, amp):
                per_example = loss(forward(pipeline(train.x[idx], train=True, generator=generator)), y, g).float()
            w = weighting.weights(per_example.detach(), y, g)
            if train.weight is not None:  # per-example multipliers (sample weights) carried by the split
                w = w * train.weight[idx]
            objective = local = (w * per_example).mean()
        opt.zero_grad(set_to_none=True)
        local.backward()
        opt.step()
        tally.add(objective, per_example.detach().sum(), idx.numel())
        if after_step is not None:
            after_step(tally.first_step + len(tally.sizes) - 1)
        if on_step is not None:
            on_step(tally)
    return tally


def _sharded_objective(forward, loss, weighting, train: Split, idx: Tensor, pipeline, generator, device, amp):
    """This rank's share of a global batch's objective (:mod:`shiftkit.distributed`): the objective's
    value over the whole batch, the local term whose DDP-averaged gradient is the whole batch's, and the
    whole batch's per-example losses (detached)."""
    n, world = idx.numel(), distributed.world_size()
    lo, hi = distributed.my_shard(n)
    y, g = train.y[idx], train.g[idx]
    if generator is None:  # deterministic inputs: transform only the shard
        x = pipeline(train.x[idx[lo:hi]], train=True)
    else:  # every rank draws the whole batch's augmentation, so the draws match one process's
        x = pipeline(train.x[idx], train=True, generator=generator)[lo:hi]
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
) -> FitResult:
    """Train ``model`` in place for ``epochs`` epochs; ``batch_size=0`` means full batch.

    ``seed`` fixes the data order and augmentation (the caller seeds the model's initialization).
    ``amp="bf16"`` autocasts the forward pass; ``compile=True`` runs the model through
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
    :class:`NonFiniteLoss` naming its step, and the checkpoint keeps the last good state.

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
    check_schedule(epochs, batch_size, eval_every, amp)
    if outer is not None and distributed.active():
        raise ShiftkitError("an AutoBalance search runs in one process: start it without torchrun")
    selection = Selection(select)
    sampler = sampler or Shuffle()
    model.to(device)
    loss.to(device)
    weighting.to(device)
    train, val, test = (s.to(device) for s in (splits.train, splits.val, splits.test))
    train_counts = splits.train.group_counts
    # Frozen parameters (model.freeze) stay out of the optimizer: no weight decay or momentum moves them.
    opt, schedule = optim.make([p for p in model.parameters() if p.requires_grad], epochs)
    gen = torch.Generator().manual_seed(seed)
    pipeline = splits.pipeline
    # Augmentation draws on the training device, from its own generator: reproducible per seed.
    aug_gen = torch.Generator(device=device).manual_seed(seed) if pipeline.augments else None
    bs = batch_size or len(train)
    parts = {"model": model, "optimizer": opt, "schedule": schedule, "loss": loss, "weighting": weighting,
             "sampler": sampler, "selection": selection, "order_generator": GeneratorPart(gen)}
    if aug_gen is not None:
        parts["augment_generator"] = GeneratorPart(aug_gen)
    if outer is not None:  # an outer update's state (AutoBalance's upper optimizer, α history) resumes too
        parts["outer"] = outer
    watch = Watch(divergence)
    parts["divergence"] = watch
    state = checkpoint.state if checkpoint is not None else None
    if state is not None:
        restore(parts, state, checkpoint.path, required=("best_state", "step", "epoch", "seconds"),
                optional=("divergence",))
    best_state = state["best_state"] if state is not None else None
    step, first_epoch = (state["step"], state["epoch"]) if state is not None else (0, 0)
    earlier = state["seconds"] if state is not None else 0.0
    net = distributed.wrap(model, device)
    forward = torch.compile(net) if compile else net
    watched = [*model.parameters(), *loss.parameters()]
    start = time.perf_counter()

    def save(**position) -> None:
        checkpoint.save(capture(parts, **position, seconds=earlier + time.perf_counter() - start, best_state=best_state))

    inside = state is not None and "batch" in state  # the checkpoint was saved inside an epoch
    for epoch in range(first_epoch, epochs):
        model.train()
        weighting.train()
        weighting.start_epoch(epoch)  # idempotent; the outer update's epoch start is in its restored state
        if inside:
            order = state["order"].to(device)
            tally = Tally.from_state(state["tally"], device)
            inside = False
        else:
            if outer is not None:
                outer.start_epoch(epoch)
            order = sampler.epoch(splits.train.y, splits.train.g, gen).to(device)
            tally = Tally(first_step=step)

        def within(tally: Tally, epoch=epoch, order=order) -> None:
            # a host clock: no device sync per step; a state that already broke is never saved
            if checkpoint is not None and checkpoint.due_within() and watch.clean(tally, watched):
                save(epoch=epoch, batch=len(tally.sizes), order=order.cpu(), tally=tally.state_dict(),
                     step=tally.first_step + len(tally.sizes))

        tally = train_epoch(
            forward, loss, weighting, opt, train, order, bs, pipeline, aug_gen, device, amp, tally,
            after_step=None if outer is None else outer.after_step, on_step=within,
        )
        step = tally.first_step + len(tally.sizes)
        schedule.step()
        (train_loss,) = watch.check(tally, epoch, watched)  # before anything is evaluated or saved
        if is_eval_epoch(epoch, epochs, eval_every):
            record = {
                "epoch": epoch + 1,
                "step": step,
                "lr": opt.param_groups[0]["lr"],
                "train_loss": train_loss,
                **{
                    name: evaluate_model(model, split, train_group_counts=train_counts, pipeline=pipeline)
                    for name, split in (("train", train), ("val", val), ("test", test))
                },
            }
            if probe is not None:
                record["diagnostics"] = probe(model, train, pipeline)
            if selection.offer(record):
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if on_eval is not None:
                on_eval(record)
        if checkpoint is not None and checkpoint.due(epoch, epochs):
            save(epoch=epoch + 1, step=step)
    result = selection.result(earlier + time.perf_counter() - start, step)
    if best_state is not None:
        result.final_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(best_state)
    return result
