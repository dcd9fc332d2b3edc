"""AutoBalance hypergradients: implicit differentiation with a Neumann series (docs/METHODS.md#autobalance-hypergradient).

The bilevel problem of docs/METHODS.md#autobalance-algorithm tunes hyperparameters α (the AutoBalance loss's ``l``, ``delta``,
optionally ``w``: :meth:`shiftkit.losses.autobalance.AutoBalance.hyperparameters`) of the training loss
so that the weights θ*(α) = argmin_θ L_in(θ; α) do well on a validation loss L_out(θ). By the implicit
function theorem at a stationary point of L_in,

    dθ*/dα = -H⁻¹ ∂²L_in/∂θ∂α,   H = ∂²L_in/∂θ²,
    dL_out/dα = ∂L_out/∂α - (∂²L_in/∂θ∂α)ᵀ H⁻¹ ∇_θ L_out,

and ∂L_out/∂α = 0 because α does not appear in the validation loss. H⁻¹ is never formed: the Neumann
series H⁻¹ ≈ η Σ_{j=0}^{J} (I - ηH)^j (valid when 0 < η < 2/λ_max(H) and H is positive definite) needs
only Hessian-vector products, which :mod:`torch.func` computes by differentiating the gradient.
"""

from __future__ import annotations

from numbers import Integral
from typing import Callable, Dict, Optional, Sequence, Union

import torch
from torch import Tensor
from torch.func import grad, jvp, vjp
from torch.utils._pytree import tree_flatten, tree_unflatten

from .errors import ShiftkitError

Params = Dict[str, Tensor]


def _check_series(terms: int, step: float) -> None:
    if isinstance(terms, bool) or not isinstance(terms, Integral) or terms < 0:
        raise ShiftkitError(f"Neumann series: terms must be an integer >= 0, got {terms!r}")
    if not step > 0:
        raise ShiftkitError(f"Neumann series: step must be > 0, got {step!r}")


def neumann_inverse_hvp(hvp: Callable, v, terms: int = 5, step: float = 1.0, stop_on_growth: bool = True):
    """Approximate ``H⁻¹ v`` by the truncated Neumann series ``η Σ_{j=0}^{J} (I - ηH)^j v`` (docs/METHODS.md#autobalance-hypergradient).

    ``hvp(c)`` returns ``H c`` for a pytree ``c`` shaped like ``v`` (a tensor, or a dict name -> tensor
    such as a model's parameters); ``J = terms``, ``η = step``. This is the released code's
    ``neumann_hyperstep_preconditioner``: ``p = c = v``; J times ``c ← c - η H c; p ← p + c``; then
    ``p ← η p``. It costs J Hessian-vector products. The error is ``(I - ηH)^{J+1} H⁻¹ v``, so the series
    converges for symmetric positive-definite H when ``η < 2/λ_max(H)``, at rate ``1 - η λ_min(H)``
    per term when ``η ≤ 1/λ_max(H)``. ``J = 0`` gives ``η v``.

    ``stop_on_growth`` (ours; the code has no such stop): in that convergent regime every term is
    shorter than the one before, ``‖(I - ηH) c‖ < ‖c‖``. A term that grows proves the series diverges
    there (η above ``2/λ_max``, or negative curvature away from a minimum), so it and every later term
    are left out: the result is then the partial sum up to the last shrinking term, never an
    exponentially amplified one. Where the series converges the result is exactly the code's. The
    check costs one host synchronization per term and skips the Hessian-vector products left once the
    series has stopped.

    >>> import torch
    >>> hvp = lambda c: 2.0 * c                                   # H = 2, so H⁻¹ v = 0.5
    >>> neumann_inverse_hvp(hvp, torch.tensor([1.0]), terms=3, step=0.25)   # 0.25 (1 + 1/2 + 1/4 + 1/8)
    tensor([0.4688])
    >>> neumann_inverse_hvp(hvp, torch.tensor([1.0]), terms=3, step=1.5)    # 1 - 1.5·2 = -2: terms grow
    tensor([1.5000])
    >>> neumann_inverse_hvp(hvp, torch.tensor([1.0]), terms=3, step=1.5, stop_on_growth=False)  # 1.5 (1 - 2 + 4 - 8)
    tensor([-7.5000])
    """
    _check_series(terms, step)
    leaves, spec = tree_flatten(v)

    def apply(xs):
        return tree_flatten(hvp(tree_unflatten(xs, spec)))[0]

    def norm(xs):
        return torch.stack([x.float().square().sum() for x in xs]).sum().sqrt()

    # One list entry per parameter tensor, so the Python loop is over tensors, never over elements.
    p, c = list(leaves), list(leaves)
    before = norm(c) if stop_on_growth and terms else None
    for _ in range(terms):
        c = [ci - step * hi for ci, hi in zip(c, apply(c))]
        if stop_on_growth:
            now = norm(c)
            if bool(now > before):
                break
            before = now
        p = [pi + ci for pi, ci in zip(p, c)]
    return tree_unflatten([step * pi for pi in p], spec)


def hypergradient(
    inner_loss: Callable[[Params, Params], Tensor],
    outer_loss: Callable[[Params], Tensor],
    params: Params,
    hparams: Params,
    terms: int = 5,
    step: float = 1.0,
    stop_on_growth: bool = True,
) -> Params:
    """Implicit-function hypergradient ``dL_out/dα`` of AutoBalance (Li et al. 2021, §2.1; docs/METHODS.md#autobalance-hypergradient).

    ``dL_out/dα = -(∂²L_in/∂θ∂α)ᵀ H⁻¹ ∇_θ L_out(θ)`` with ``H = ∂²L_in/∂θ²``, evaluated at the given θ
    (ideally ≈ θ*(α)) and with H⁻¹ replaced by the Neumann series of :func:`neumann_inverse_hvp`
    (J = ``terms``, η = ``step``). The direct term ∂L_out/∂α is zero since ``outer_loss`` does not take α.

    The released code's procedure (``core/utils.py``): ``g_T = ∇_θ L_train(θ; α)`` built with
    ``create_graph=True``; ``v = ∇_θ L_val(θ)``; ``p ≈ H⁻¹ v`` by the series with ``H c = ∇_θ (g_T · c)``;
    ``hypergrad = -∇_α (g_T · p)``. Its constants are the defaults: J = 5 terms, step η = 1.0 (these
    converge only when λ_max(H) < 2; a step ≤ 1/λ_max(H) and more terms approach the exact IFT).

    Args:
        inner_loss: ``inner_loss(params, hparams) -> scalar``, the training loss L_in(θ; α).
        outer_loss: ``outer_loss(params) -> scalar``, the validation loss L_out(θ) (no α).
        params: θ, dict name -> tensor (e.g. ``dict(model.named_parameters())`` for
            ``torch.func.functional_call``).
        hparams: α, dict name -> tensor (e.g. ``loss.hyperparameters()``).
        terms, step: J and η of the Neumann series.
        stop_on_growth: leave out the series' terms from the first one that grows
            (:func:`neumann_inverse_hvp`); ``False`` is the released code's plain series.

    Returns:
        dict name -> tensor, same keys and shapes as ``hparams``, detached (no autograd graph). The
        inputs are neither modified nor differentiated through.

    Cost: one gradient of L_out, one gradient of L_in with its graph kept (``g_T``), then J + 1
    reverse passes through that graph: J Hessian-vector products ``H c`` and one mixed product
    ``(∂²L_in/∂α∂θ) p``. No Hessian is materialized; memory is that of one double backward.

    A quadratic with closed form: L_in = (θ - α)², so θ* = α, H = 2 and ∂²L_in/∂θ∂α = -2, hence
    dL_out/dα = ∇_θ L_out(θ*) = 2θ* for L_out = θ²; with η = 1/H the series is exact at J = 0:

    >>> import torch
    >>> inner = lambda p, h: ((p["theta"] - h["alpha"]) ** 2).sum()
    >>> outer = lambda p: (p["theta"] ** 2).sum()
    >>> hypergradient(inner, outer, {"theta": torch.tensor([1.5])}, {"alpha": torch.tensor([1.5])}, 0, 0.5)
    {'alpha': tensor([3.])}
    """
    _check_series(terms, step)
    # Detached copies: the result must not join the caller's graph (hparams are often nn.Parameters),
    # and torch.func differentiates with respect to these fresh leaves only.
    theta = {k: t.detach() for k, t in params.items()}
    alpha = {k: t.detach() for k, t in hparams.items()}
    v = grad(outer_loss)(theta)
    # g_T(θ, α) = ∇_θ L_in; one vjp keeps its graph, and each call of `pull` is one reverse pass:
    # pull(c) = (Hᵀ c, (∂g_T/∂α)ᵀ c) = (H c, ∇_α (g_T · c)), as H is symmetric.
    _, pull = vjp(grad(inner_loss), theta, alpha)
    p = neumann_inverse_hvp(lambda c: pull(c)[0], v, terms, step, stop_on_growth)
    mixed = pull(p)[1]
    return {k: -mixed[k].detach() for k in hparams}


def output_hypergradient(
    outputs: Union[Callable[[Params], Tensor], Sequence[Callable[[Params], Tensor]]],
    output_loss: Union[Callable[[Tensor, Params], Tensor], Sequence[Callable[[Tensor, Params], Tensor]]],
    outer_loss: Union[Callable[[Params], Tensor], Sequence[Callable[[Params], Tensor]]],
    params: Params,
    hparams: Params,
    terms: int = 5,
    step: float = 1.0,
    curvature_loss: Optional[Callable[[Params], Tensor]] = None,
    stop_on_growth: bool = True,
    through_inputs: Optional[Sequence[Callable[[Params, Params], Tensor]]] = None,
) -> Params:
    """:func:`hypergradient` for ``L_in(θ, α) = output_loss(outputs(θ), α)``: α enters only through a loss
    of the model's outputs (true of every loss in shiftkit, AutoBalance's included). Same result, cheaper.

    The mixed term ``(∂²L_in/∂α∂θ) p = ∇_α (∇_θ L_in · p)`` is computed exactly in forward mode: with
    ``z = outputs(θ)`` and ``ż = J_θ z · p`` (one Jacobian-vector product), ``∇_θ L_in · p = ∇_z ℓ(z; α) · ż``,
    whose gradient in α needs only the outputs. No second-order graph of the network is kept for it.

    ``curvature_loss(θ)`` is the loss whose Hessian the Neumann series inverts; the default is
    ``L_in(θ, α)``, which makes the result equal :func:`hypergradient`'s. Passing the same loss on fewer
    examples (a curvature mini-batch, as in Hessian-free optimization, Martens 2010) makes each of the J
    Hessian-vector products proportionally cheaper while ``∇_θ L_out`` and the mixed term still use all
    examples.

    Chunks: ``outputs`` and ``output_loss`` may be equally long sequences (one pair per chunk of the
    training examples), and ``outer_loss`` a sequence too; then ``L_in`` and ``L_out`` are the means over
    their chunks, and each chunk is differentiated on its own and the results averaged. The value is
    the same; only the size of each autograd graph changes (on a CPU, ten 64-image passes are faster
    than one 640-image pass, whose activations do not fit in cache).

    ``through_inputs`` (one per chunk): where some of α also act before the model (a learned
    augmentation of the inputs, docs/METHODS.md#augment), ``through_inputs[k](θ, α)`` gives chunk k's
    outputs as a function of both; ``outputs[k](θ)`` must be its value at the given α. The mixed term
    is then ``∇_α [J_θ L_in(θ, α) · p]`` with the directional derivative in forward mode through the
    model at inputs that depend on α, and its gradient by one reverse pass through that computation
    (forward over reverse; the augmentation itself is differentiated once). The Neumann series and
    ``∇_θ L_out`` are unchanged.

    >>> import torch
    >>> out = lambda p: p["theta"] * torch.ones(3)                 # z_i = θ
    >>> lossz = lambda z, h: ((z - h["alpha"]) ** 2).mean()        # L_in = (θ - α)^2
    >>> outer = lambda p: (p["theta"] ** 2).sum()
    >>> output_hypergradient(out, lossz, outer, {"theta": torch.tensor([1.5])}, {"alpha": torch.tensor([1.5])}, 0, 0.5)
    {'alpha': tensor([3.])}
    """
    _check_series(terms, step)
    outs, losses, outers = (list(f) if isinstance(f, (list, tuple)) else [f] for f in (outputs, output_loss, outer_loss))
    if len(outs) != len(losses) or not outs or not outers:
        raise ShiftkitError("output_hypergradient: outputs and output_loss must be equally many, and not none")
    theta = {k: t.detach() for k, t in params.items()}
    alpha = {k: t.detach() for k, t in hparams.items()}
    v = _mean_over_chunks(lambda f: grad(f)(theta), outers)
    if curvature_loss is None:
        def curvature_loss(p):
            return torch.stack([loss(out(p), alpha) for out, loss in zip(outs, losses)]).mean()
    _, pull = vjp(grad(curvature_loss), theta)
    p = neumann_inverse_hvp(lambda c: pull(c)[0], v, terms, step, stop_on_growth)

    def mixed(chunk):
        out, loss, inputs = chunk
        if inputs is not None:  # α before the model too: differentiate the whole directional derivative
            return grad(lambda a: jvp(lambda th: loss(inputs(th, a), a), (theta,), (p,))[1])(alpha)
        z, z_dot = jvp(out, (theta,), (p,))
        z, z_dot = z.detach(), z_dot.detach()
        return grad(lambda a: jvp(lambda o: loss(o, a), (z,), (z_dot,))[1])(alpha)

    inputs = list(through_inputs) if through_inputs is not None else [None] * len(outs)
    if len(inputs) != len(outs):
        raise ShiftkitError("output_hypergradient: through_inputs must have one function per chunk")
    total = _mean_over_chunks(mixed, list(zip(outs, losses, inputs)))
    return {k: -total[k].detach() for k in hparams}


def _mean_over_chunks(fn: Callable[[object], Params], chunks: list) -> Params:
    """``mean_k fn(chunks[k])`` for dicts of tensors, summed as they come (one result held at a time)."""
    total: Params = {}
    for chunk in chunks:
        for k, t in fn(chunk).items():
            total[k] = total[k] + t if k in total else t
    return {k: t / len(chunks) for k, t in total.items()}
