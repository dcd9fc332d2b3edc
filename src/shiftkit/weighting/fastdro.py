"""chi-square DRO and KL-regularized CVaR by their exact batch best response, after Levy, Carmon, Duchi and
Sidford's fast-dro code (NeurIPS 2020; docs/METHODS.md#weighting-chi2, docs/METHODS.md#weighting-kl_cvar).

On a batch of ``m`` losses ``v`` both take the distribution ``p*`` over the batch that maximizes

    chi-square:  <p, v> - reg * chi2(p),   chi2(p) = (1 / 2m) * sum_i (m p_i - 1)^2 <= size
    cvar:        <p, v> - reg * KL(p || uniform),   p_i <= 1 / (size * m)

(``size = inf``: no chi-square constraint). The weights are ``w = m * p*``, detached, so the loop's
``mean(w * v) = <p*, v>`` has the gradient ``sum_i p*_i grad v_i`` of fast-dro's ``RobustLoss`` (which
also computes ``p*`` without gradients; Danskin's theorem). :func:`robust_value` is ``RobustLoss``'s value,
which also subtracts the penalty ``reg * divergence(p*)``, a constant of the parameters.

``p*`` follows fast-dro's ``best_response`` case by case (the same formulas, uniform and failsafe
cases), with one difference: fast-dro bisects the dual variable ``eta`` until ``|f(eta)| <= tol`` (1e-4
by default), after expanding its first bracket as needed; here the bracket is closed-form and the
bisection always runs :data:`ITERATIONS` halvings in float64 (no data-dependent control flow, so it runs
under ``torch.func.vmap``), which reaches float64 resolution, far inside that tolerance.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import Tensor

from .. import guards
from ..errors import ShiftkitError
from . import Weighting, register
from .dro import fractional_masses

#: Halvings of the bisection bracket: 2^-64 of its width is below float64 resolution for any bracket
#: up to about 1e3 times the losses' scale.
ITERATIONS = 64
#: fast-dro's MIN_REL_DIFFERENCE: chi-square losses this close (relative to the largest) weigh uniformly.
MIN_REL_DIFFERENCE = 1e-5
GEOMETRIES = ("chi-square", "cvar")


def _bisect(f: Callable[[Tensor], Tensor], lo: Tensor, hi: Tensor, iterations: int) -> Tensor:
    """The lower end of ``[lo, hi]`` after ``iterations`` halvings keeping the root of the increasing
    ``f`` inside (``f(lo) <= 0``); a NaN ``f`` counts as above the root."""
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        below = f(mid) <= 0
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return lo


def _stand_ins(v: Tensor) -> Tensor:
    """``v`` with NaN and +inf as its largest finite value and -inf as its smallest (0 if none is finite)."""
    finite = torch.isfinite(v)
    top, bottom = torch.where(finite, v, -math.inf).max(), torch.where(finite, v, math.inf).min()
    top, bottom = torch.where(torch.isfinite(top), top, 0.0), torch.where(torch.isfinite(bottom), bottom, 0.0)
    return torch.where(finite, v, torch.where(v == -math.inf, bottom, top))


def chi2_response(v: Tensor, size: float, reg: float, iterations: int = ITERATIONS) -> Tensor:
    """fast-dro's chi-square best response ``p`` for a 1-D float64 batch ``v`` (module docstring)."""
    m = v.numel()
    if size == 0:  # fast-dro's ERM
        return torch.full_like(v, 1 / m)
    top, low, mean = v.max(), v.min(), v.mean()
    total: Optional[Callable[[Tensor], Tensor]] = None  # p(eta) of the cases that bisect on sum(p) = 1
    if size == math.inf:
        total = lambda eta: torch.relu(v - eta) / (reg * m)  # noqa: E731
        lo = torch.minimum(mean - reg, low)
    elif m <= 1 + 2 * size:  # fast-dro's failsafe: the ball holds the point masses
        most = (v == top).to(v.dtype)
        p = most / most.sum()
    elif reg == 0:
        def spread(eta: Tensor) -> Tensor:
            w = torch.relu(v - eta)
            return w / w.sum()

        # All of v in the support and 2 * chi2 <= var / (mean - eta)^2 <= size there.
        lo = low - (top - low) / (math.sqrt(2 * size + 1) - 1)
        p = spread(_bisect(lambda eta: 0.5 * ((m * spread(eta) - 1) ** 2).mean() - size, lo, top, iterations))
    else:
        scale = math.sqrt(m * (1 + 2 * size))
        total = lambda eta: torch.relu(v - eta) / (  # noqa: E731
            m * (torch.linalg.vector_norm(torch.relu(v - eta)) / scale).clamp_min(reg))
        # Below each of these, sum(p) >= 1 in the branch that is active there.
        lo = torch.minimum(torch.minimum(low - 1, mean - reg), mean - v.std(correction=0) / math.sqrt(2 * size))
    if total is not None:
        p = total(_bisect(lambda eta: 1 - total(eta).sum(), lo, top, iterations))
        p = p / p.sum()
    near = (top - low) <= MIN_REL_DIFFERENCE * top.abs()
    return torch.where(near, torch.full_like(v, 1 / m), p)


def kl_cvar_response(v: Tensor, size: float, reg: float, iterations: int = ITERATIONS) -> Tensor:
    """fast-dro's (KL-regularized) CVaR best response ``p`` for a 1-D float64 batch ``v``; ``reg = 0`` is
    the exact CVaR (:func:`~shiftkit.weighting.dro.fractional_masses`)."""
    m = v.numel()
    if reg == 0:
        return fractional_masses(v, size)
    if size == 1:
        return torch.full_like(v, 1 / m)

    def capped(eta: Tensor) -> Tensor:
        return torch.exp((v - eta) / reg).clamp_max(1 / size) / m

    # At hi the uncapped p sums to 1 (fast-dro's eta_min), so the capped one to <= 1; at lo all are capped.
    lo, hi = v.min() + reg * math.log(size), reg * torch.logsumexp(v / reg - math.log(m), 0)
    p = capped(_bisect(lambda eta: 1 - capped(eta).sum(), lo, hi, iterations))
    return p / p.sum()


def check(geometry: str, size: float, reg: float) -> None:
    """fast-dro's ranges, as one-line errors: cvar ``0 < size <= 1``, chi-square ``size >= 0`` (``inf``
    allowed, then ``reg > 0``), ``reg >= 0`` finite."""
    if geometry not in GEOMETRIES:
        raise ShiftkitError(f"geometry must be 'chi-square' or 'cvar', got '{geometry}'")
    if not 0 <= reg < math.inf:
        raise ShiftkitError(f"reg must be >= 0 and finite, got {reg}")
    if geometry == "cvar" and not 0 < size <= 1:
        raise ShiftkitError(f"size (the CVaR level alpha) must be in (0, 1], got {size}")
    if geometry == "chi-square" and not size >= 0:
        raise ShiftkitError(f"size (the chi-square radius rho) must be >= 0, got {size}")
    if geometry == "chi-square" and size == math.inf and reg == 0:
        raise ShiftkitError("size = inf (no chi-square constraint) needs reg > 0")


def best_response(losses: Tensor, geometry: str, size: float, reg: float, iterations: int = ITERATIONS) -> Tensor:
    """The best response ``p*`` (float64, summing to 1) to a 1-D batch of losses, detached; NaN and +inf
    count as the batch's largest finite loss, -inf as its smallest (docs/METHODS.md#weighting-chi2)."""
    check(geometry, size, reg)
    v = _stand_ins(losses.detach().to(torch.float64))
    if v.numel() == 0:
        return v
    response = chi2_response if geometry == "chi-square" else kl_cvar_response
    return response(v, float(size), float(reg), iterations)


def divergence(p: Tensor, geometry: str) -> Tensor:
    """fast-dro's penalty divergence of ``p`` from uniform: ``(1/2m) ||m p - 1||^2`` or ``KL(p || uniform)``."""
    m = p.numel()
    if geometry == "chi-square":
        return (0.5 / m) * ((m * p - 1) ** 2).sum()
    return math.log(m) + torch.xlogy(p, p).sum()


def robust_value(losses: Tensor, geometry: str, size: float, reg: float, iterations: int = ITERATIONS) -> Tensor:
    """fast-dro's ``RobustLoss(size, reg, geometry)(losses)``: ``<p*, losses> - reg * divergence(p*)`` with
    ``p*`` and the penalty constant (no gradient through them); ``size = 0`` is the mean (fast-dro's ERM).

    >>> robust_value(torch.tensor([1.0, 2.0, 3.0, 4.0]), "cvar", 0.5, 0.0)   # mean of the top half
    tensor(3.5000)
    """
    check(geometry, size, reg)
    if size == 0:
        return losses.mean()
    with torch.no_grad():
        p = best_response(losses, geometry, size, reg, iterations)
        penalty = (reg * divergence(p, geometry)).to(losses.dtype)
    return (p.to(losses.dtype) * losses).sum() - penalty


class FastDRO(Weighting):
    """``w = B * p*`` for fast-dro's geometry ``geometry`` (module docstring); :meth:`value` is fast-dro's
    robust loss of a batch."""

    geometry: str

    def __init__(self, size: float, reg: float):
        super().__init__()
        check(self.geometry, size, reg)
        self.size, self.reg = float(size), float(reg)

    def weigh(self, losses: Tensor, y: Tensor, g: Optional[Tensor], state) -> Tensor:
        guards.check(f"weighting '{self.name}'", y, g, losses=losses)
        p = best_response(losses, self.geometry, self.size, self.reg)
        return (losses.numel() * p).to(losses.dtype)

    def value(self, losses: Tensor) -> Tensor:
        """fast-dro's reported value of the batch (:func:`robust_value`); training minimizes ``<p*, losses>``."""
        return robust_value(losses, self.geometry, self.size, self.reg)


@register("chi2")
class Chi2DRO(FastDRO):
    """Chi-square DRO (Levy et al. 2020; docs/METHODS.md#weighting-chi2): the worst case over the ball
    ``chi2(p) <= size`` around the batch's uniform distribution, less ``reg * chi2(p)``.

    Defaults ``size = 1.0`` (rho), ``reg = 0.0``: fast-dro's chi-square runs on ImageNet and MNIST
    (``hyperparameters/imagenet_final_*.yaml``, ``mnist_final_cs.yaml``); ``size = inf`` with
    ``reg > 0`` is its penalized form (``mnist_final_lam.yaml``: 0.05); ``size = None`` means the same
    (a run's JSON records write ``inf`` as ``null``). A batch of ``B <= 1 + 2 size``
    puts all its mass on its largest losses (fast-dro's failsafe; exact for ``reg = 0``); losses within
    a relative 1e-5 of each other weigh uniformly (fast-dro's, relative to ``|max|`` here). The space
    searched (our choice; no SubpopBench or DomainBed entry) is the radius, around fast-dro's 1.

    >>> w = Chi2DRO(size=1.0).weights(torch.arange(5.0), torch.zeros(5, dtype=torch.long), None)
    >>> w.round(decimals=4), round(0.5 / 5 * ((w - 1) ** 2).sum().item(), 6)   # chi2(p) = rho = 1
    (tensor([0.0000, 0.0000, 0.0000, 1.3820, 3.6180]), 1.0)
    """

    geometry = "chi-square"
    search_space = {"size": "loguniform(0.1, 10.0)"}

    def __init__(self, size: Optional[float] = 1.0, reg: float = 0.0):
        super().__init__(math.inf if size is None else size, reg)


@register("kl_cvar")
class KLCVaR(FastDRO):
    """KL-regularized CVaR (Levy et al. 2020; docs/METHODS.md#weighting-kl_cvar): the worst case over
    ``p_i <= 1 / (size * B)``, less ``reg * KL(p || uniform)``.

    So ``p_i = min(e^((l_i - eta) / reg), 1 / size) / B`` with ``eta`` such that ``sum(p) = 1``: a
    smoothed CVaR at level ``size``.

    Defaults ``size = 0.1``, ``reg = 0.01``: fast-dro's ``train.py`` defaults (geometry ``cvar``).
    ``reg = 0`` is the exact CVaR, the weights of ``cvar`` with ``form="fractional"``; ``size = 1``
    weighs uniformly. The space searched: ``size`` as SubpopBench's CVaRDRO ``joint_dro_alpha``,
    ``reg`` our choice around fast-dro's default.

    >>> w = KLCVaR(size=0.5, reg=0.5).weights(torch.arange(4.0), torch.zeros(4, dtype=torch.long), None)
    >>> w.round(decimals=4), w.sum().item()   # min(e^(2 (l - eta)), 2), eta = 1.7249
    (tensor([0.0318, 0.2346, 1.7336, 2.0000]), 4.0)
    """

    geometry = "cvar"
    search_space = {"size": "loguniform(0.01, 1.0)", "reg": "loguniform(0.001, 1.0)"}

    def __init__(self, size: float = 0.1, reg: float = 0.01):
        super().__init__(size, reg)
