"""The member axis of the one training loop (:func:`shiftkit.train.fit_members`).

A fit trains S members. A plain run is one member, :class:`Single`: the model as it is, its tensors
without a member axis, so that data parallelism, ``torch.compile``, frozen parameters and BatchNorm work as
they always do. The runs of a seed sweep can be S members of one :class:`Stacked` model
(``torch.func.stack_module_state`` + ``functional_call`` + ``vmap``): tensors ``[S, B, ...]``, one step for
all. The loop is written once against what the two have in common; what differs lives here: the forward
pass, the loss and the weighting over a member axis (:class:`MemberLoss`, :class:`MemberWeighting`), each
member's augmentation from its own generator (:class:`MemberPipeline`), evaluation, the validation losses
a scheme may ask for after each epoch (:func:`wants_validation`), the part a checkpoint saves, and handing
each member its weights at the end.

Where a member axis cannot serve, :func:`refuse` says why, in one place, and the command line runs the
members one after another instead (:class:`EnsembleUnsupported`).

One module: :class:`Single` and :class:`Stacked` are the two sides of one interface the loop calls, and
the member loss, pipeline and weighting wrap them; they change together.
"""

from __future__ import annotations

import copy
from typing import Dict, List, Optional, Sequence, Union

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from . import distributed, guards
from .checkpoint import MemberParts
from .data.base import Split
from .data.pipeline import Pipeline
from .errors import ShiftkitError
from .evaluation import evaluate_members, evaluate_model
from .sampling import Sampler
from .weighting import Weighting

__all__ = ["EnsembleUnsupported", "MemberLoss", "MemberPipeline", "MemberWeighting", "Single", "Stacked", "refuse",
           "split_losses", "wants_validation"]

State = Dict[str, Tensor]


class EnsembleUnsupported(ShiftkitError):
    """These runs cannot be stacked; the command line then runs them one by one."""


def refuse(models: Optional[Sequence[nn.Module]] = None, *, torchrun: bool = False, probe: bool = False,
           outer: Union[bool, str, None] = False, epoch_lengths: Sequence[int] = (), augment: bool = False) -> None:
    """Raise :class:`EnsembleUnsupported` where S runs cannot train as one stacked model: under
    ``torchrun`` (the processes share one model's batches), with diagnostics (``probe``: they probe each
    model on its own), with an outer update or a procedure of several phases (``outer``: true, or the
    reason, e.g. AutoBalance tunes each seed's loss on its own),
    for models with BatchNorm (``vmap`` cannot update running statistics) or frozen parameters (a
    stacked model trains every parameter of its members) and for samplers whose epochs differ in length
    between members (``epoch_lengths``; e.g. ``undersample``), and with an augmentation policy (``augment``)."""
    if torchrun:
        raise EnsembleUnsupported("under torchrun the processes share one model's batches")
    if probe:
        raise EnsembleUnsupported("diagnostics probe each model on its own")
    if outer:
        raise EnsembleUnsupported(outer if isinstance(outer, str) else "an outer update tunes each seed on its own")
    if augment:
        raise EnsembleUnsupported("an augmentation policy (augment=policy) augments one model's batches")
    if models and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in models[0].modules()):
        raise EnsembleUnsupported("ensemble training cannot update BatchNorm statistics")
    if models and not all(p.requires_grad for p in models[0].parameters()):
        raise EnsembleUnsupported("ensemble training updates every parameter, and this model has frozen ones")
    if len(set(epoch_lengths)) > 1:
        raise EnsembleUnsupported("ensemble members draw epochs of different lengths (e.g. undersample)")


def wants_validation(weighting: Weighting) -> bool:
    """Whether ``weighting`` asks the loop for each epoch's validation losses (its ``needs_validation_losses``,
    e.g. Group DRO's ``automatic_adjustment``; docs/METHODS.md#weighting-group_dro): they then go to its
    pure ``after_validation(losses, y, g, state) -> state``. A scheme that asks for them inside one that
    does not pass them on (a chain) is refused: its option would have no effect."""
    if getattr(weighting, "needs_validation_losses", False):
        return True
    inner = [m for m in weighting.modules() if getattr(m, "needs_validation_losses", False)]
    if inner:
        raise ShiftkitError(f"weighting '{getattr(inner[0], 'name', type(inner[0]).__name__)}' needs each epoch's "
                            f"validation losses, which {type(weighting).__name__} does not pass on: use it alone")
    return False


@torch.no_grad()
@guards.trusted()  # the split's ids were checked when it was built
def split_losses(forward, loss, split: Split, pipeline: Pipeline, batch_size: int = 4096) -> Tensor:
    """The per-example losses ``loss(forward(x), y, g)`` (float32) of every example of ``split``, inputs
    through ``pipeline`` without augmentation, in batches, as evaluation runs (the caller sets evaluation
    mode): ``[N]``, or ``[S, N]`` for a member-axis ``forward`` and ``loss``. Under ``torchrun`` each
    rank computes its shard and every rank gets the whole."""
    lo, hi = distributed.my_shard(len(split))
    parts = [loss(forward(pipeline(split.x[idx])), split.y[idx], split.g[idx]).float()
             for idx in torch.arange(lo, hi, device=split.y.device).split(batch_size) if len(idx)]
    local = torch.cat(parts, -1) if parts else split.y.new_zeros(0, dtype=torch.float)
    return distributed.gather(local, len(split))


def _copy(state: State) -> State:
    return {k: v.detach().clone() for k, v in state.items()}


class Single:
    """One model, no member axis (S = 1): under ``torchrun`` wrapped for data parallelism, compiled with
    ``compile``. Only its trainable parameters go to the optimizer (frozen ones stay put: no weight decay
    or momentum moves them)."""

    axis = False
    size = 1

    def __init__(self, model: nn.Module, device: str, compile: bool = False):
        self.models, self.device, self.compile = [model.to(device)], device, compile
        self.part = model
        self.forward = model

    def start(self) -> None:
        """Wrap the model for training once its state is restored (data parallelism, ``compile``)."""
        net = distributed.wrap(self.models[0], self.device)
        self.forward = torch.compile(net) if self.compile else net

    def trainable(self) -> List[Tensor]:
        return [p for p in self.models[0].parameters() if p.requires_grad]

    def watched(self, loss: nn.Module) -> List[Tensor]:
        """The tensors whose finiteness each epoch's check includes: the model's and the loss's."""
        return [*self.models[0].parameters(), *loss.parameters()]

    def train(self, mode: bool = True) -> None:
        self.models[0].train(mode)

    def state(self, s: int = 0) -> State:
        return _copy(self.models[0].state_dict())

    def loss(self, loss: nn.Module) -> nn.Module:
        return loss

    def pipeline(self, pipeline: Pipeline) -> Pipeline:
        return pipeline

    def weighting(self, weightings: Sequence[Weighting]) -> Weighting:
        return weightings[0]

    def generator(self, generators: Optional[List[torch.Generator]]) -> Optional[torch.Generator]:
        return None if generators is None else generators[0]

    def end_epoch(self, weighting: Weighting) -> None:
        """Nothing to do: the scheme's module holds its state."""

    def validated(self, weighting: Weighting, split: Split, pipeline: Pipeline, loss: nn.Module) -> None:
        """Hand the scheme the model's per-example losses on ``split`` (:func:`wants_validation`), in
        evaluation mode; the scheme's module stores the state its ``after_validation`` returns."""
        model = self.models[0]
        was_training = model.training
        model.eval()
        losses = split_losses(model, loss, split, pipeline)
        model.train(was_training)
        weighting.assign(weighting.after_validation(losses, split.y, split.g, weighting.state()))

    def orders(self, samplers: Sequence[Sampler], split: Split, generators: Sequence[torch.Generator]) -> Tensor:
        return samplers[0].epoch(split.y, split.g, generators[0])

    def evaluate(self, splits: Dict[str, Split], pipeline: Pipeline, counts) -> List[dict]:
        model = self.models[0]
        return [{name: evaluate_model(model, split, train_group_counts=counts, pipeline=pipeline)
                 for name, split in splits.items()}]

    def finish(self, best: List[Optional[State]]) -> List[Optional[State]]:
        """Leave the model at its selected weights (``best``, if any); returns the final weights (CPU)
        where they were replaced, else None."""
        if best[0] is None:
            return [None]
        final = {k: v.detach().cpu().clone() for k, v in self.models[0].state_dict().items()}
        self.models[0].load_state_dict(best[0])
        return [final]


class Stacked:
    """S models of one architecture as stacked tensors, with a vmapped forward: ``[S, B, ...] -> [S, B, K]``.

    With ``compile`` the vmapped training forward runs through ``torch.compile``."""

    axis = True

    def __init__(self, models: List[nn.Module], device: str, compile: bool = False):
        if not models:
            raise ShiftkitError("an ensemble needs at least one member")
        refuse(models)
        shapes = [[p.shape for p in m.parameters()] for m in models]
        if any(s != shapes[0] for s in shapes):
            raise ShiftkitError("ensemble members must share one architecture")
        self.models, self.size = models, len(models)
        self.params, self.buffers = stack_module_state([m.to(device) for m in models])
        self.base = copy.deepcopy(models[0]).to("meta")

        def one(params, buffers, x):
            return functional_call(self.base, (params, buffers), (x,))

        self._per_member = torch.compile(vmap(one)) if compile else vmap(one)
        self._shared_input = vmap(one, in_dims=(0, 0, None))
        self.forward, self.part = self, self

    def __call__(self, x: Tensor) -> Tensor:
        return self._per_member(self.params, self.buffers, x)

    def shared(self, x: Tensor) -> Tensor:
        """Every member on the same inputs ``[B, ...]``: logits ``[S, B, K]``."""
        return self._shared_input(self.params, self.buffers, x)

    def start(self) -> None:
        """Nothing to wrap: the stacked forward is built."""

    def trainable(self) -> List[Tensor]:
        return list(self.params.values())

    def watched(self, loss: nn.Module) -> List[Tensor]:
        """The stacked parameters (per member; the loss shared by all holds no member's state)."""
        return list(self.params.values())

    def train(self, mode: bool = True) -> None:
        self.base.train(mode)

    def state(self, s: int) -> State:
        """Member ``s``'s state dict (detached copies)."""
        return {k: v[s].detach().clone() for k, v in {**self.params, **self.buffers}.items()}

    def state_dict(self) -> State:
        """The stacked parameters and buffers, ``[S, ...]`` each (a checkpoint part)."""
        return {k: v.detach() for k, v in {**self.params, **self.buffers}.items()}

    @torch.no_grad()
    def load_state_dict(self, state: State) -> None:
        """Copy ``state`` into the stacked tensors in place (the optimizer keeps referring to them)."""
        for k, v in {**self.params, **self.buffers}.items():
            v.copy_(state[k])

    def loss(self, loss: nn.Module) -> "MemberLoss":
        return MemberLoss(loss)

    def pipeline(self, pipeline: Pipeline) -> "MemberPipeline":
        return MemberPipeline(pipeline)

    def weighting(self, weightings: Sequence[Weighting]) -> "MemberWeighting":
        return MemberWeighting(weightings)

    def generator(self, generators: Optional[List[torch.Generator]]) -> Optional[List[torch.Generator]]:
        return generators

    def end_epoch(self, weighting: "MemberWeighting") -> None:
        """The members' weighting modules take their stacked states."""
        weighting.sync()

    def validated(self, weighting: "MemberWeighting", split: Split, pipeline: Pipeline, loss: nn.Module) -> None:
        """Hand each member's scheme its member's per-example losses on ``split`` (one vectorized forward
        per batch, evaluation mode; :func:`wants_validation`)."""
        size = self.size

        def member_loss(logits: Tensor, y: Tensor, g: Tensor) -> Tensor:  # [S, B, K], shared [B] -> [S, B]
            return loss(logits.flatten(0, 1), y.repeat(size), g.repeat(size)).view(size, -1)

        self.train(False)
        losses = split_losses(self.shared, member_loss, split, pipeline)
        self.train(True)
        weighting.after_validation(losses, split.y, split.g)

    def orders(self, samplers: Sequence[Sampler], split: Split, generators: Sequence[torch.Generator]) -> Tensor:
        """Every member's epoch ``[S, N]``, each from its own sampler and generator."""
        orders = [sampler.epoch(split.y, split.g, gen) for sampler, gen in zip(samplers, generators)]
        refuse(epoch_lengths=[len(o) for o in orders])
        return torch.stack(orders)

    def evaluate(self, splits: Dict[str, Split], pipeline: Pipeline, counts) -> List[dict]:
        """Every member's metrics on each split: one vectorized forward per batch."""
        self.train(False)
        metrics = {name: evaluate_members(self.shared, self.size, split, pipeline, counts)
                   for name, split in splits.items()}
        self.train(True)
        return [{name: metrics[name][s] for name in metrics} for s in range(self.size)]

    def finish(self, best: List[Optional[State]]) -> List[Optional[State]]:
        """Load each member's selected (else final) weights into its model; returns each member's final
        weights (CPU) where its selected ones replaced them, else None."""
        finals = []
        for s, model in enumerate(self.models):
            state = self.state(s)
            finals.append({k: v.cpu() for k, v in state.items()} if best[s] is not None else None)
            model.load_state_dict(best[s] if best[s] is not None else state)
        return finals


class MemberLoss:
    """A per-example loss over a member axis: logits ``[S, B, K]``, ids ``[S, B]`` -> losses ``[S, B]``.
    Losses hold no training state, so one serves every member."""

    def __init__(self, loss: nn.Module):
        self.loss = loss

    def __call__(self, logits: Tensor, y: Tensor, g: Tensor) -> Tensor:
        return self.loss(logits.flatten(0, 1), y.flatten(), g.flatten()).view(y.shape)


class MemberPipeline:
    """The input pipeline over a member axis ``[S, B, ...]``: deterministic transforms in one call,
    augmentation per member from its own generator (the draws of its sequential run)."""

    def __init__(self, pipeline: Pipeline):
        self.pipeline = pipeline

    def __call__(self, x: Tensor, train: bool = False, generator: Optional[List[torch.Generator]] = None) -> Tensor:
        if generator is None:
            return self.pipeline(x.flatten(0, 1), train=train).unflatten(0, x.shape[:2])
        return torch.stack([self.pipeline(x[s], train=train, generator=generator[s]) for s in range(x.shape[0])])


class MemberWeighting:
    """S members' weighting schemes as one: the first member's scheme runs under ``vmap`` on the S
    members' stacked states (:class:`~shiftkit.weighting.Weighting`'s pure ``step``), so a Group DRO
    ensemble updates S ``q`` vectors in one call. The members' own modules hold their states at epoch
    boundaries and whenever a checkpoint reads them (``state_dict``: one state dict per member, as
    :class:`~shiftkit.checkpoint.MemberParts` saves them). A scheme written against the stateful interface
    of earlier versions only (``weights`` overridden, no ``weigh``) runs member by member instead."""

    def __init__(self, weightings: Sequence[Weighting]):
        self.parts = list(weightings)
        scheme = self.parts[0]
        self.pure = type(scheme).weigh is not Weighting.weigh and len({type(w) for w in self.parts}) == 1
        # Static per-example schemes (ERM, IW) weigh every member's batch in one plain call: no vmap needed.
        self.flat = self.pure and scheme.elementwise and not scheme.stateful
        self._step = vmap(scheme.step) if self.pure else None
        self._static = scheme.state() if self.flat else None
        self.stacked: Optional[State] = None

    def train(self, mode: bool = True) -> None:
        for w in self.parts:
            w.train(mode)

    def start_epoch(self, epoch: int) -> None:
        """Every member's scheme at training epoch ``epoch``; their states stacked."""
        self.sync()
        for w in self.parts:
            w.start_epoch(epoch)
        self._stack()

    def _stack(self) -> None:
        keys = self.parts[0].state()
        self.stacked = {k: torch.stack([w.state()[k].detach() for w in self.parts]) for k in keys}

    def after_validation(self, losses: Tensor, y: Tensor, g: Tensor) -> None:
        """Each member's scheme that asks for them (:func:`wants_validation`) takes its member's validation
        losses ``losses[s]``; the members' modules hold the new states, and so do the stacked ones."""
        self.sync()
        for s, w in enumerate(self.parts):
            if wants_validation(w):
                w.assign(w.after_validation(losses[s], y, g, w.state()))
        if self.pure and self.stacked is not None:
            self._stack()

    def weights(self, losses: Tensor, y: Tensor, g: Tensor) -> Tensor:
        """The weights ``[S, B]`` of a training batch ``[S, B]``, each member's state updated."""
        if not self.pure:
            return torch.stack([w.weights(losses[s], y[s], g[s]) for s, w in enumerate(self.parts)])
        if self.flat:  # a static scheme: its state (the first member's, as every member's) never changes
            return self.parts[0].weigh(losses.flatten(), y.flatten(), g.flatten(), self._static).view(losses.shape)
        weights, self.stacked = self._step(losses, y, g, self.stacked)
        return weights

    def sync(self) -> None:
        """Store the stacked states in the members' own modules."""
        if self.pure and self.stacked:
            for s, w in enumerate(self.parts):
                w.assign({k: v[s] for k, v in self.stacked.items()})

    def state_dict(self) -> list:
        self.sync()
        return MemberParts(self.parts).state_dict()

    def load_state_dict(self, states: list) -> None:
        MemberParts(self.parts).load_state_dict(states)
        self.stacked = None
