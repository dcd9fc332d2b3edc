"""Many seeds in one process: the members of a seed sweep train as one vectorized ensemble.

Every claim in this field is a mean over seeds. Where the model is small, one step of S stacked models
(``torch.func.stack_module_state`` + ``functional_call`` + ``vmap``) costs far less than S steps, so
:func:`fit_ensemble` trains S members at once with the same loop as :func:`shiftkit.train.fit`. Each
member keeps what makes it the run of its seed: its own initialization (built after
``torch.manual_seed(seed)``), its own data order and augmentation (its own generators), its own
weighting-scheme state (one scheme per member) and its own model selection. SGD and Adam act
element-wise, so one optimizer over the stacked parameters is S independent optimizers; the objective
is the sum of the members' objectives, so no member's gradient sees another's loss. Losses are
per-example and shared (they hold no training state). Like a single run, an ensemble checkpoints its
whole state, every member's included, and resumes exactly (:mod:`shiftkit.checkpoint`).

Models with BatchNorm cannot update running statistics under ``vmap``: use sequential runs for them.
Samplers whose epochs differ in length between seeds (``undersample``) cannot be stacked either.
An ensemble saves per-step overhead, not arithmetic: it pays for models too small to fill the machine
(4x for ten seeds of a 2 x 128 MLP on 2 CPU cores); on the CPU, vmapped convolutions become grouped
convolutions that run slower than separate ones (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import copy
import time
from typing import Callable, List, Optional

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from . import guards
from .checkpoint import Checkpoint, GeneratorPart, MemberParts, capture, restore
from .data.base import Split, Splits
from .errors import ShiftkitError
from .metrics import Accumulator
from .optim import OptimSpec
from .sampling import Sampler, Shuffle
from .divergence import DEFAULT_FACTOR, Tally, Watch
from .train import FitResult, Selection, autocast, check_schedule, is_eval_epoch
from .weighting import Weighting


class EnsembleUnsupported(ShiftkitError):
    """These runs cannot be stacked; the command line then runs them one by one."""


def _check_members(models: List[nn.Module]) -> None:
    if not models:
        raise ShiftkitError("an ensemble needs at least one member")
    for m in models[0].modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            raise EnsembleUnsupported("ensemble training cannot update BatchNorm statistics")
    if not all(p.requires_grad for p in models[0].parameters()):
        raise EnsembleUnsupported("ensemble training updates every parameter, and this model has frozen ones")
    shapes = [[p.shape for p in m.parameters()] for m in models]
    if any(s != shapes[0] for s in shapes):
        raise ShiftkitError("ensemble members must share one architecture")


class Stacked:
    """S models as stacked tensors, with a vmapped forward: ``[S, B, ...] -> [S, B, K]``."""

    def __init__(self, models: List[nn.Module], device: str):
        _check_members(models)
        self.params, self.buffers = stack_module_state([m.to(device) for m in models])
        self.base = copy.deepcopy(models[0]).to("meta")

        def one(params, buffers, x):
            return functional_call(self.base, (params, buffers), (x,))

        self._per_member = vmap(one)
        self._shared_input = vmap(one, in_dims=(0, 0, None))

    def __call__(self, x: Tensor) -> Tensor:
        return self._per_member(self.params, self.buffers, x)

    def shared(self, x: Tensor) -> Tensor:
        """Every member on the same inputs ``[B, ...]``: logits ``[S, B, K]``."""
        return self._shared_input(self.params, self.buffers, x)

    def state(self, s: int) -> dict:
        """Member ``s``'s state dict (detached copies)."""
        return {k: v[s].detach().clone() for k, v in {**self.params, **self.buffers}.items()}

    def train(self, mode: bool = True) -> None:
        self.base.train(mode)

    def state_dict(self) -> dict:
        """The stacked parameters and buffers, ``[S, ...]`` each (a checkpoint part)."""
        return {k: v.detach() for k, v in {**self.params, **self.buffers}.items()}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        """Copy ``state`` into the stacked tensors in place (the optimizer keeps referring to them)."""
        for k, v in {**self.params, **self.buffers}.items():
            v.copy_(state[k])


@torch.no_grad()
@guards.trusted()
def _evaluate(stacked: Stacked, split: Split, pipeline, train_counts, batch_size: int = 4096) -> List[dict]:
    """Metrics of every member on ``split``: one vmapped forward per batch."""
    stacked.train(False)
    members = stacked.params[next(iter(stacked.params))].shape[0]
    accs = [Accumulator(split.num_classes, split.num_groups, device=split.y.device) for _ in range(members)]
    for idx in torch.arange(len(split), device=split.y.device).split(batch_size):
        logits = stacked.shared(pipeline(split.x[idx]))
        for s, acc in enumerate(accs):
            acc.update(logits[s], split.y[idx], split.g[idx])
    stacked.train(True)
    return [acc.compute(train_counts) for acc in accs]


def _epoch_orders(samplers: List[Sampler], split: Split, gens: List[torch.Generator]) -> Tensor:
    orders = [sampler.epoch(split.y, split.g, gen) for sampler, gen in zip(samplers, gens)]
    if len({len(o) for o in orders}) > 1:
        raise EnsembleUnsupported("ensemble members draw epochs of different lengths (e.g. undersample)")
    return torch.stack(orders)


@guards.trusted()
def _train_epoch(stacked: Stacked, loss: nn.Module, weightings: List[Weighting], opt, train: Split, orders: Tensor,
                 batch_size: int, pipeline, aug_gens, device: str, amp: str, step: int) -> Tally:
    """One pass of every member over its row of ``orders`` ``[S, N]``; returns the epoch's
    :class:`~shiftkit.divergence.Tally`, each step's objectives and loss sums ``[S]`` on the device."""
    n = len(weightings)
    tally = Tally(first_step=step)
    for idx in orders.split(batch_size or orders.shape[1], dim=1):  # idx: [S, B]
        y, g = train.y[idx], train.g[idx]
        x = train.x[idx]
        if aug_gens is None:
            x = pipeline(x.flatten(0, 1)).unflatten(0, idx.shape)
        else:  # each member's augmentation from its own generator, as in its sequential run
            x = torch.stack([pipeline(x[s], train=True, generator=aug_gens[s]) for s in range(n)])
        with autocast(device, amp):
            logits = stacked(x)
            per_example = loss(logits.flatten(0, 1), y.flatten(), g.flatten()).float().view(idx.shape)
        detached = per_example.detach()
        w = torch.stack([weightings[s].weights(detached[s], y[s], g[s]) for s in range(n)])
        objectives = (w * per_example).mean(1)
        opt.zero_grad(set_to_none=True)
        objectives.sum().backward()
        opt.step()
        tally.add(objectives, detached.sum(1), idx.shape[1])
    return tally


def _records(stacked: Stacked, splits: dict, pipeline, train_counts, head: dict, mean_loss: List[float]) -> List[dict]:
    """Every member's evaluation record: ``head`` (epoch, step, lr), its mean training loss and its
    metrics on each of ``splits``."""
    evaluated = {name: _evaluate(stacked, split, pipeline, train_counts) for name, split in splits.items()}
    return [{**head, "train_loss": mean_loss[s], **{name: evaluated[name][s] for name in evaluated}}
            for s in range(len(mean_loss))]


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
    The members end holding their final (or selected) weights. ``compile`` is ignored here. With a
    ``checkpoint`` the ensemble saves its whole state at the end of due epochs (the stacked weights, the
    optimizer and schedule, the loss, and every member's weighting, sampler, selection, selected weights
    and generators) and resumes from the state the checkpoint holds, finishing as if never interrupted.
    Each member's epochs are checked for divergence as a single run's are (``divergence``,
    :mod:`shiftkit.divergence`); a member that fails stops the ensemble, naming its seed."""
    check_schedule(epochs, batch_size, eval_every, amp)
    n = len(models)
    if not len(weightings) == len(seeds) == n:
        raise ShiftkitError("an ensemble needs one weighting scheme and one seed per member")
    samplers = samplers or [Shuffle() for _ in range(n)]
    selections = [Selection(select) for _ in range(n)]
    stacked = Stacked(models, device)
    loss.to(device)
    for w in weightings:
        w.to(device)
    train, val, test = (s.to(device) for s in (splits.train, splits.val, splits.test))
    pipeline = splits.pipeline
    opt, schedule = optim.make(list(stacked.params.values()), epochs)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    aug_gens = [torch.Generator(device=device).manual_seed(s) for s in seeds] if pipeline.augments else None
    parts = {"model": stacked, "optimizer": opt, "schedule": schedule, "loss": loss,
             "weightings": MemberParts(weightings), "samplers": MemberParts(samplers),
             "selections": MemberParts(selections), "order_generators": MemberParts(map(GeneratorPart, gens))}
    watch = Watch(divergence, members=n, who=[f" of seed {s}" for s in seeds])
    parts["divergence"] = watch
    if aug_gens is not None:
        parts["augment_generators"] = MemberParts(map(GeneratorPart, aug_gens))
    state = checkpoint.state if checkpoint is not None else None
    if state is not None:
        restore(parts, state, checkpoint.path, required=("seeds", "best_states", "step", "epoch", "seconds"),
                optional=("divergence",))
        if state["seeds"] != list(seeds):
            raise ShiftkitError(f"a checkpoint of seeds {state['seeds']} cannot resume seeds {list(seeds)}")
    best = state["best_states"] if state is not None else [None] * n
    step, first_epoch, earlier = (state["step"], state["epoch"], state["seconds"]) if state is not None else (0, 0, 0.0)
    start = time.perf_counter()
    for epoch in range(first_epoch, epochs):
        for w in weightings:
            w.train()
            w.start_epoch(epoch)
        orders = _epoch_orders(samplers, splits.train, gens).to(device)
        tally = _train_epoch(stacked, loss, weightings, opt, train, orders, batch_size, pipeline, aug_gens, device,
                             amp, step)
        step = tally.first_step + len(tally.sizes)
        schedule.step()
        mean_loss = watch.check(tally, epoch, stacked.params.values())  # before anything is evaluated or saved
        if is_eval_epoch(epoch, epochs, eval_every):
            head = {"epoch": epoch + 1, "step": step, "lr": opt.param_groups[0]["lr"]}
            records = _records(stacked, {"train": train, "val": val, "test": test}, pipeline,
                               splits.train.group_counts, head, mean_loss)
            for s, record in enumerate(records):
                if selections[s].offer(record):
                    best[s] = stacked.state(s)
                if on_eval is not None:
                    on_eval(s, record)
        if checkpoint is not None and checkpoint.due(epoch, epochs):
            checkpoint.save(capture(parts, seeds=list(seeds), epoch=epoch + 1, step=step, best_states=best,
                                    seconds=earlier + time.perf_counter() - start))
    seconds = earlier + time.perf_counter() - start
    results = [sel.result(seconds, step) for sel in selections]
    for s, model in enumerate(models):
        if best[s] is not None:
            results[s].final_state = {k: v.cpu() for k, v in stacked.state(s).items()}
        model.load_state_dict(best[s] if best[s] is not None else stacked.state(s))
    return results
