"""Contract checks for methods of one's own: what shiftkit's tests ask of every built-in name (docs/PLUGINS.md).

Each check builds a registered name from its defaults (and any ``options`` given) with small data statistics,
exercises it as the training loop does, and raises :class:`AssertionError` naming the method and the rule it
breaks; it returns ``None`` when the method keeps the contract. :func:`check_loss`, :func:`check_weighting`,
:func:`check_sampler`, :func:`check_model` and :func:`check_dataset` say in their docstrings what they check;
:func:`check` takes the registry's kind (``loss``, ``weighting``, ``sampler``, ``model``, ``data``).

One module: it is the public ``shiftkit.testing`` of docs/PLUGINS.md, one check per registry kind built
on the same contract helpers.

>>> from shiftkit import testing
>>> testing.check_loss("ce")
>>> testing.check("sampler", "balanced")
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, List, Tuple

import torch
from torch import Tensor

from .errors import ShiftkitError

#: Data statistics of the loss checks: three classes, four groups.
LOSS_COUNTS: Dict[str, list] = dict(class_counts=[40, 4, 1], group_counts=[30, 10, 4, 1])
#: Data statistics of the weighting checks: two classes, four groups ``g = 2y + a``.
WEIGHT_COUNTS: Dict[str, list] = dict(class_counts=[40, 4], group_counts=[30, 10, 3, 1])
#: Data statistics of the sampler checks: two classes, four groups of 60, 30, 8 and 2 examples.
SAMPLER_COUNTS: Dict[str, list] = dict(class_counts=[90, 10], group_counts=[60, 30, 8, 2])
#: Inputs a model is tried on: images, and a flat vector (which image models may refuse).
MODEL_SHAPES: List[Tuple[int, ...]] = [(1, 28, 28), (3, 32, 32), (1, 8, 8), (784,)]
SEEDS = range(4)


class Contract:
    """Assertions about one method, each failure an :class:`AssertionError` starting ``<kind> '<name>': ``."""

    def __init__(self, kind: str, name: str):
        self.where = f"{kind} '{name}'"

    def require(self, ok: Any, message: str) -> None:
        if not ok:
            raise AssertionError(f"{self.where}: {message}")

    def close(self, actual: Any, expected: Any, message: str) -> None:
        try:
            torch.testing.assert_close(actual, expected)
        except AssertionError as exc:
            detail = "; ".join([line.strip() for line in str(exc).splitlines() if line.strip()][:2])
            raise AssertionError(f"{self.where}: {message} ({detail})") from None

    def call(self, fn: Callable[[], Any], what: str) -> Any:
        """``fn()``; an exception it raises is a broken contract, said so."""
        try:
            return fn()
        except AssertionError:
            raise
        except Exception as exc:
            raise AssertionError(f"{self.where}: {what} raised {type(exc).__name__}: {exc}") from exc

    def refuses(self, fn: Callable[[], Any], naming: str, what: str) -> None:
        """``fn()`` must raise a one-line :class:`ShiftkitError` that contains ``naming``."""
        try:
            self.call(fn, what)
        except AssertionError as exc:
            cause = exc.__cause__
            if isinstance(cause, ShiftkitError) and naming in str(cause) and "\n" not in str(cause):
                return
            raise AssertionError(f"{self.where}: {what} must raise a one-line ShiftkitError naming "
                                 f"{naming!r}; {exc}") from None
        raise AssertionError(f"{self.where}: {what} must raise a ShiftkitError naming {naming!r}, raised nothing")


def _registry(kind: str) -> Any:
    from . import data, losses, models, sampling, weighting

    return {"loss": losses.LOSSES, "weighting": weighting.WEIGHTINGS, "sampler": sampling.SAMPLERS,
            "model": models.MODELS, "data": data.DATASETS}[kind]


def _contract(kind: str, name: str) -> Contract:
    """The contract of a registered name (an unregistered one fails here)."""
    registry, contract = _registry(kind), Contract(kind, name)
    contract.require(name in registry, f"is not registered; registered: {', '.join(registry.names())}")
    return contract


def _build(kind: str, name: str, **kwargs: Any) -> Tuple[Contract, Any]:
    contract = _contract(kind, name)
    return contract, contract.call(lambda: _registry(kind).build(name, **kwargs), f"building with {kwargs}")


# ---- losses -------------------------------------------------------------------------------------------


def loss_batch(k: int, scale: float = 1.0, b: int = 16, seed: int = 0) -> Tuple[Tensor, Tensor, Tensor]:
    """``(logits [b, k] requiring grad, y [b], g [b] in [0, 4))``, drawn from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(b, k, generator=gen) * scale).requires_grad_()
    return logits, torch.randint(0, k, (b,), generator=gen), torch.randint(0, 4, (b,), generator=gen)


def check_loss(name: str, **options: Any) -> None:
    """The loss contract (tests/test_losses.py, tests/test_api_guards.py): ``[B]`` finite values >= 0 with finite
    gradients (also at logits of 1e4), ``g`` optional, per example (a permuted batch permutes the values), and
    bad ``y`` and ``g`` refused naming them."""
    for k in (2, 3):
        counts = {**LOSS_COUNTS, "class_counts": LOSS_COUNTS["class_counts"][:k]}
        c, loss = _build("loss", name, **options, **counts)
        for scale in (1.0, 1e4):
            logits, y, g = loss_batch(k, scale)
            out = c.call(lambda: loss(logits, y, g), f"loss(logits [16, {k}], y, g)")
            c.require(isinstance(out, Tensor) and out.shape == (16,),
                      f"must return one value per example, shape (16,), got {getattr(out, 'shape', type(out))}")
            c.require(torch.isfinite(out).all() and (out >= 0).all(), f"values must be finite and >= 0 (logits x{scale:g})")
            c.call(lambda: out.sum().backward(), "backward")
            c.require(logits.grad is not None and torch.isfinite(logits.grad).all(),
                      f"gradients must be finite (logits x{scale:g})")
        out = c.call(lambda: loss(logits, y), "loss(logits, y) without groups")
        c.require(getattr(out, "shape", None) == (16,), "g must be optional: loss(logits, y) of shape (16,)")
    c, loss = _build("loss", name, **options, **LOSS_COUNTS)
    for seed in SEEDS:
        logits, y, g = loss_batch(3, 3.0, seed=seed)
        perm = torch.randperm(16, generator=torch.Generator().manual_seed(seed))
        c.close(loss(logits, y, g)[perm], loss(logits[perm], y[perm], g[perm]),
                "values must be per example: permuting the batch must permute them")
    _check_loss_guards(c, loss)


def _check_loss_guards(c: Contract, loss: Callable) -> None:
    logits, y, g = (t.detach() for t in loss_batch(3, b=8))
    for label in (3, -1):
        bad = y.clone()
        bad[2] = label
        c.refuses(lambda: loss(logits, bad, g), "y must lie in [0, 3)", f"a label {label} of 3 classes")
    c.refuses(lambda: loss(logits, y[:-1], g[:-1]), "y", "y shorter than the logits")
    c.refuses(lambda: loss(logits, y.float(), g), "y", "float labels")
    c.refuses(lambda: loss(logits, y, g[:-1]), "g", "g shorter than the logits")
    for group in (4, -1):
        bad = g.clone()
        bad[1] = group
        try:
            out = loss(logits, y, bad)
        except ShiftkitError as error:
            c.require("g must lie in [0, 4)" in str(error), f"a group {group} of 4 must be refused naming g: {error}")
        else:
            c.close(out, loss(logits, y, g), f"a loss that ignores g must ignore a group id of {group}")


# ---- weightings ---------------------------------------------------------------------------------------


def weight_batches(seed: int, n: int = 4, size: int = 16) -> Iterator[Tuple[Tensor, Tensor, Tensor]]:
    """``n`` batches ``(losses [size] >= 0, y [size] in {0, 1}, g = 2y + a)`` drawn from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        losses = torch.rand(size, generator=gen) * 4
        y = torch.randint(0, 2, (size,), generator=gen)
        yield losses, y, 2 * y + torch.randint(0, 2, (size,), generator=gen)


def check_weighting(name: str, **options: Any) -> None:
    """The weighting contract (tests/test_weighting.py, tests/test_api_guards.py): ``[B]`` finite weights, >= 0
    unless ``signed``, per example; a ``state_dict`` that round-trips; pure ``step`` / ``begin_epoch`` equal to
    the stateful calls; ``torch.func.vmap`` of ``step`` over members; bad ids and lengths refused naming them."""
    fresh = lambda: _build("weighting", name, **options, **WEIGHT_COUNTS)[1]  # noqa: E731
    c, scheme = _build("weighting", name, **options, **WEIGHT_COUNTS)
    losses, y, g = next(weight_batches(0, size=32))
    w = c.call(lambda: scheme.weights(losses, y, g), "weights(losses [32], y, g)")
    c.require(isinstance(w, Tensor) and w.shape == (32,), f"weights must have shape (32,), got {getattr(w, 'shape', w)}")
    c.require(torch.isfinite(w).all(), "weights must be finite")
    c.require(scheme.signed or (w >= 0).all(), "weights must be >= 0 (or the class must set signed = True)")
    clone = fresh()
    clone.load_state_dict(scheme.state_dict())
    c.close(clone.weights(losses, y, g), scheme.weights(losses, y, g), "state_dict() must round-trip")
    for seed in SEEDS:
        losses, y, g = next(weight_batches(seed))
        perm = torch.randperm(16, generator=torch.Generator().manual_seed(seed))
        c.close(fresh().weights(losses, y, g)[perm], fresh().weights(losses[perm], y[perm], g[perm]),
                "weights must follow a permutation of the batch")
    c.call(lambda: check_pure_steps(c, fresh(), fresh()), "the pure interface (state, step, begin_epoch)")
    c.call(lambda: check_vmapped_step(c, fresh()), "steps over stacked states")
    _check_weighting_guards(c, fresh)


def check_pure_steps(c: Contract, stateful: Any, pure: Any) -> None:
    """``step`` / ``begin_epoch`` threading an explicit state give the weights and state of the stateful
    ``start_epoch`` / ``weights`` calls of a second copy, and leave the module's own state as it was."""
    before = {k: v.clone() for k, v in pure.state_dict().items()}
    state = {k: v.clone() for k, v in pure.state().items()}
    for epoch, (losses, y, g) in enumerate(weight_batches(1)):
        stateful.start_epoch(epoch * 100)
        state = pure.begin_epoch(epoch * 100, state)
        w, state = pure.step(losses, y, g, state)
        c.close(w, stateful.weights(losses, y, g), "step() must give the weights of the stateful weights()")
        c.close(pure.weights(losses, y, g, state), w, "weights(..., state) must be the weights at that state")
    c.close(state, stateful.state_dict(), "the state threaded through step() must equal the stateful state_dict()")
    c.close(pure.state_dict(), before, "step() and begin_epoch() must not change the module's own state")


def check_vmapped_step(c: Contract, scheme: Any) -> None:
    """``torch.func.vmap`` of ``scheme.step`` over three members' stacked states gives each member the
    weights and state of its own steps (the member axis of an ensemble)."""
    from torch.func import vmap

    members = [list(weight_batches(seed)) for seed in range(3)]
    stacked = {k: torch.stack([v.clone() for _ in members]) for k, v in scheme.state().items()}
    alone = []
    for batches in members:
        state = {k: v.clone() for k, v in scheme.state().items()}
        weights = []
        for losses, y, g in batches:
            w, state = scheme.step(losses, y, g, state)
            weights.append(w)
        alone.append((torch.stack(weights), state))
    weights = []
    for step in range(len(members[0])):
        losses, y, g = (torch.stack([batches[step][i] for batches in members]) for i in range(3))
        w, stacked = c.call(lambda: vmap(scheme.step)(losses, y, g, stacked), "torch.func.vmap(step)")
        weights.append(w)
    for s, (w, state) in enumerate(alone):
        c.close(torch.stack(weights)[:, s], w, "vmap(step) over members must give each member's own weights")
        c.close({k: v[s] for k, v in stacked.items()}, state, "vmap(step) must give each member's own state")


def _check_weighting_guards(c: Contract, fresh: Callable[[], Any]) -> None:
    values = torch.rand(8, generator=torch.Generator().manual_seed(0)) * 3
    y = torch.arange(8) % 2
    g = 2 * y + (torch.arange(8) // 2) % 2
    c.refuses(lambda: fresh().weights(values, y[:-1], g[:-1]), "y", "y shorter than the losses")
    c.refuses(lambda: fresh().weights(values, y, g[:-1]), "g", "g shorter than the losses")
    c.refuses(lambda: fresh().weights(values[:, None], y, g), "losses", "losses of shape [B, 1]")
    for argument, bad, bound in (("y", 2, 2), ("y", -1, 2), ("g", 4, 4), ("g", -1, 4)):
        ids = {"y": y.clone(), "g": g.clone()}
        ids[argument][3] = bad
        try:
            w = fresh().weights(values, ids["y"], ids["g"])
        except ShiftkitError as error:
            c.require(f"{argument} must lie in [0, {bound})" in str(error), f"{argument} = {bad} must be refused "
                      f"naming {argument} and its range [0, {bound}): {error}")
        else:
            c.close(w, fresh().weights(values, y, g), f"a scheme that ignores {argument} must ignore {argument} = {bad}")
    try:
        w = fresh().weights(values, y, None)
    except ShiftkitError as error:
        c.require(" g" in f" {error}", f"g=None must be refused naming g: {error}")
    else:
        c.close(w, fresh().weights(values, y, g), "g=None must give the weights with g, or be refused naming g")


# ---- samplers, models, datasets -----------------------------------------------------------------------


def check_sampler(name: str, **options: Any) -> None:
    """The sampler contract (tests/test_sampling.py): 1-D long indices into the split, fixed by the seed."""
    g = torch.cat([torch.full((n,), k) for k, n in enumerate(SAMPLER_COUNTS["group_counts"])])
    y = g // 2
    draws = []
    for seed in (0, 0, 1):
        c, sampler = _build("sampler", name, **options, **SAMPLER_COUNTS)
        draws.append(c.call(lambda: sampler.epoch(y, g, torch.Generator().manual_seed(seed)), "epoch(y, g, generator)"))
    for idx in draws:
        c.require(isinstance(idx, Tensor) and idx.dtype == torch.long and idx.dim() == 1,
                  f"epoch() must return a 1-D long tensor, got {getattr(idx, 'dtype', type(idx))}")
        c.require(idx.numel() > 0 and int(idx.min()) >= 0 and int(idx.max()) < len(y),
                  f"indices must be a non-empty selection of [0, {len(y)})")
    c.require(torch.equal(draws[0], draws[1]), "the same seed must draw the same indices")


def check_model(name: str, num_classes: int = 3, **options: Any) -> None:
    """The model contract (tests/test_models.py): logits ``[N, num_classes]`` for every input it accepts,
    one-line errors for the others, initial weights fixed by the seed."""
    c, accepted = _contract("model", name), None
    for shape in MODEL_SHAPES:
        torch.manual_seed(0)
        try:
            net = _build("model", name, input_shape=shape, num_classes=num_classes, **options)[1]
        except AssertionError as exc:
            cause = exc.__cause__
            c.require(isinstance(cause, ShiftkitError) and "\n" not in str(cause),
                      f"input_shape {shape} must build or be a one-line ShiftkitError; {exc}")
            continue
        out = c.call(lambda: net(torch.randn(2, *shape)), f"forward on [2, {', '.join(map(str, shape))}]")
        c.require(isinstance(out, Tensor) and out.shape == (2, num_classes) and out.dtype == torch.float32,
                  f"must map [2, *{shape}] to float32 logits (2, {num_classes}), got {getattr(out, 'shape', out)}")
        c.require(torch.isfinite(out).all(), f"logits must be finite for input_shape {shape}")
        accepted = accepted or shape
    c.require(accepted is not None, f"builds for none of the input shapes {MODEL_SHAPES}")

    def weights(seed: int) -> Dict[str, Tensor]:
        torch.manual_seed(seed)
        return _build("model", name, input_shape=accepted, num_classes=num_classes, **options)[1].state_dict()

    first, again, other = weights(0), weights(0), weights(1)
    c.require(first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first),
              "the same seed (torch.manual_seed) must give the same initial weights")
    c.require(any(not torch.equal(first[k], other[k]) for k in first if first[k].is_floating_point()),
              "another seed must give other initial weights")


def check_dataset(name: str, **options: Any) -> None:
    """The dataset contract: :class:`~shiftkit.data.base.Splits` (validated when built), the same on every build."""
    from .data.base import Splits

    c, first = _build("data", name, **options)
    again = _build("data", name, **options)[1]
    c.require(isinstance(first, Splits), f"build must return shiftkit.data.base.Splits, got {type(first).__name__}")
    for split in ("train", "val", "test"):
        a, b = getattr(first, split), getattr(again, split)
        c.require(all(torch.equal(getattr(a, t), getattr(b, t)) for t in ("x", "y", "g")),
                  f"two builds with the same options must give the same {split} split")


#: Registry kind -> its check.
CHECKS: Dict[str, Callable[..., None]] = {"loss": check_loss, "weighting": check_weighting, "sampler": check_sampler,
                                          "model": check_model, "data": check_dataset}


def check(kind: str, name: str, **options: Any) -> None:
    """The contract check of ``kind`` (``loss``, ``weighting``, ``sampler``, ``model`` or ``data``) for ``name``."""
    if kind not in CHECKS:
        raise ValueError(f"no contract check for kind {kind!r}; choose one of: {', '.join(CHECKS)}")
    CHECKS[kind](name, **options)
