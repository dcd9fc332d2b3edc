"""Differentiable augmentation operations, batched on the training device (docs/METHODS.md#augment-operations).

Every operation is a function ``op(x, s, draw) -> x'`` of a batch ``x`` (images ``[N, C, H, W]`` or vectors
``[N, D]``, already normalized by the data pipeline), a per-example strength ``s`` ``[N]`` and the
operation's random draw (:func:`draw`, made once from a generator, so that the same draw can be reused:
the training step, the hypergradient and a finite-difference check all see one function of ``s``).
``s`` is the learned magnitude ``m ∈ [0, 1]`` times a random sign for the signed operations, and
``s = 0`` is always the identity. Gradients flow to ``s`` through every operation; none has a step that
blocks them (the cutout's mask is a sigmoid, not a box).

Scales (what ``|s| = 1`` means), those of the differentiable-augmentation library behind MADAO where it
has the operation (translation 0.45 of the image, rotation 30°, shear 0.3), ours elsewhere:

==============  ==========================================================  =======
operation       x' at strength s                                             signed
==============  ==========================================================  =======
translate_x/_y  shift by ``0.45·s`` of the width / height (affine grid)      yes
rotate          rotate by ``30°·s`` about the centre (affine grid)           yes
shear_x/_y      ``x ← x + 0.3·s·y`` (affine grid)                            yes
brightness      ``x + 0.5·s``                                                yes
contrast        ``μ + (1 + 0.9·s)(x − μ)``, μ the image's mean               yes
noise           ``x + 0.5·s·z``, ``z ~ N(0, I)``                              no
cutout          ``x·(1 − M)``, M a soft square of side ``0.5·s`` of the       no
                image at a uniform centre, edges a sigmoid one pixel wide
spherical       ``x + s·r·u``: ``u`` uniform in the unit ℓ2 ball ([AB]         no
                Lemma 2); ``r`` the radius option
==============  ==========================================================  =======

The affine operations resample bilinearly with border padding (the image's edge, which on MNIST-like
data is its background); ``align_corners=False``.
"""

from __future__ import annotations

import math
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ShiftkitError

#: Operation -> (|s| = 1 scale, signed, needs images). The scales are documented in the module docstring.
OPS: Dict[str, tuple] = {
    "translate_x": (0.45, True, True),
    "translate_y": (0.45, True, True),
    "rotate": (30.0, True, True),
    "shear_x": (0.3, True, True),
    "shear_y": (0.3, True, True),
    "brightness": (0.5, True, False),
    "contrast": (0.9, True, False),
    "noise": (0.5, False, False),
    "cutout": (0.5, False, True),
    "spherical": (1.0, False, False),
}
#: The operations that are one affine map of the image each (a policy composes consecutive ones).
AFFINE = ("translate_x", "translate_y", "rotate", "shear_x", "shear_y")


def check(ops, input_shape) -> None:
    """Refuse unknown operations, repeated ones, and image operations on inputs that are not images."""
    unknown = [o for o in ops if o not in OPS]
    if unknown or not ops or len(set(ops)) < len(ops):
        raise ShiftkitError(f"ops must name some of {', '.join(OPS)} (each once), got {list(ops)}")
    if input_shape is not None and len(input_shape) != 3:
        images = [o for o in ops if OPS[o][2]]
        if images:
            raise ShiftkitError(f"ops {', '.join(images)} need images [C, H, W], and these inputs are "
                                f"{list(input_shape)}; use noise, brightness, contrast or spherical")


def draw(op: str, x: Tensor, generator: Optional[torch.Generator]) -> Dict[str, Tensor]:
    """The random part of ``op`` on batch ``x``: a sign for signed operations, a Gaussian ``z`` for
    ``noise``, a centre for ``cutout``, a point of the unit ball for ``spherical``."""
    n, device = len(x), x.device
    out: Dict[str, Tensor] = {}
    if OPS[op][1]:
        out["sign"] = torch.randint(0, 2, (n,), generator=generator, device=device).to(x.dtype) * 2 - 1
    if op == "noise":
        out["z"] = torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype)
    elif op == "cutout":
        out["centre"] = torch.rand(n, 2, generator=generator, device=device, dtype=x.dtype)
    elif op == "spherical":
        out["u"] = ball(n, x[0].numel(), generator, device, x.dtype).view(x.shape)
    return out


def ball(n: int, d: int, generator=None, device=None, dtype=None) -> Tensor:
    """``n`` points uniform in the unit ℓ2 ball of ``R^d``: a uniform direction ``z/‖z‖`` (z Gaussian) at
    radius ``U^{1/d}``, whose law is the ball's (``P(‖u‖ ≤ t) = t^d``)."""
    z = torch.randn(n, d, generator=generator, device=device, dtype=dtype)
    r = torch.rand(n, 1, generator=generator, device=device, dtype=dtype).pow(1.0 / d)
    return r * z / z.norm(dim=1, keepdim=True).clamp_min(torch.finfo(z.dtype).tiny)


def apply(op: str, x: Tensor, s: Tensor, d: Dict[str, Tensor], radius: float = 1.0) -> Tensor:
    """``op`` at per-example strength ``s`` ``[N]`` (before its sign) with draw ``d``."""
    scale, signed, _ = OPS[op]
    if op in AFFINE:
        return affine(x, matrix(op, s, d))
    if signed:
        s = s * d["sign"]
    per = (-1,) + (1,) * (x.dim() - 1)
    if op == "brightness":
        return x + (scale * s).view(per)
    if op == "contrast":
        mean = x.flatten(1).mean(1).view(per)
        return mean + (1 + scale * s).view(per) * (x - mean)
    if op == "noise":
        return x + (scale * s).view(per) * d["z"]
    if op == "cutout":
        return x * (1 - soft_square(x.shape[-2:], d["centre"], scale * s))
    return x + (radius * s).view(per) * d["u"]  # spherical


def matrix(op: str, s: Tensor, d: Dict[str, Tensor]) -> Tensor:
    """The affine operation ``op`` at strengths ``s`` and draw ``d`` as matrices ``[N, 3, 3]`` (homogeneous)
    in ``affine_grid``'s normalized coordinates (−1..1 across the image): output pixel ``p`` reads input
    ``A p``. Applying ``A`` then ``B`` reads ``A B p``."""
    t = s * d["sign"] * OPS[op][0]
    one, zero = torch.ones_like(t), torch.zeros_like(t)
    if op == "translate_x":
        rows = [[one, zero, 2 * t], [zero, one, zero]]
    elif op == "translate_y":
        rows = [[one, zero, zero], [zero, one, 2 * t]]
    elif op == "rotate":
        a = t * (math.pi / 180.0)
        c, s = torch.cos(a), torch.sin(a)
        rows = [[c, -s, zero], [s, c, zero]]
    elif op == "shear_x":
        rows = [[one, t, zero], [zero, one, zero]]
    else:  # shear_y
        rows = [[one, zero, zero], [t, one, zero]]
    return torch.stack([torch.stack(r, dim=-1) for r in [*rows, [zero, zero, one]]], dim=1)


def affine(x: Tensor, maps: Tensor) -> Tensor:
    """Resample images ``x`` ``[N, C, H, W]`` through affine maps ``[N, 3, 3]`` (bilinear, border)."""
    grid = F.affine_grid(maps[:, :2].to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def soft_square(size, centre: Tensor, side: Tensor) -> Tensor:
    """Masks ``[N, 1, H, W]``: a square of side ``side`` (a fraction of each dimension) around ``centre``
    ``[N, 2]`` (row, column in [0, 1]), each edge a sigmoid one pixel wide. Along one axis the mask is
    ``σ((d + side/2)·H) − σ((d − side/2)·H)`` at distance ``d`` from the centre: 0 everywhere at side 0
    (the identity), near 1 inside, and differentiable in ``side``."""
    h, w = size

    def band(n: int, c: Tensor) -> Tensor:  # [N, n]
        d = (torch.arange(n, device=c.device, dtype=c.dtype) + 0.5) / n - c[:, None]
        half = (side / 2)[:, None]
        return torch.sigmoid((d + half) * n) - torch.sigmoid((d - half) * n)

    return (band(h, centre[:, 0])[:, :, None] * band(w, centre[:, 1])[:, None, :])[:, None]
