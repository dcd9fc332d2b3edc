"""Augmentation policies per class, per cluster of classes or shared (docs/METHODS.md#augment-policy):
AutoBalance's personalized data augmentation (PDA) and MADAO's shared policy."""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

from ..errors import ShiftkitError
from ..losses.autobalance import class_clusters
from ..losses.logit_adjusted import positive_counts
from . import Augmentation, register
from . import ops as operations

#: Operations of a policy on images when ``ops`` is not given; vectors get ``noise``.
IMAGE_OPS = ("translate_x", "translate_y", "rotate", "shear_x", "contrast", "cutout")
_PER = ("class", "shared")
_GATES = ("hard", "relaxed")


def _logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


@register("policy")
class Policy(Augmentation):
    """A small set of differentiable operations (:mod:`shiftkit.augment.ops`), each with a magnitude and
    an application probability, per class (``per=class``, PDA), per cluster of ``cluster_size`` classes
    or shared by all classes (``per=shared``, MADAO). Options ``augment.<option>``:

    - ``ops``: the operations, applied in this order (default: ``translate_x, translate_y, rotate,
      shear_x, contrast, cutout`` on images, ``noise`` on vectors); ``spherical`` is [AB] Lemma 2's
      draw uniform in the ℓ2 ball of radius ``radius·m`` and is always applied (no probability);
    - ``magnitude``, ``probability``: their starting values (0.5 and 0.5, the differentiable-
      augmentation library's); stored as logits, so the magnitude ``m = σ(a)`` stays in (0, 1) and the
      probability ``p = σ(b)`` too;
    - ``learn``: whether a bilevel search (``procedure=autobalance``) tunes them; ``false`` is a fixed
      policy for ablations, and the only kind ``procedure=plain`` trains with;
      ``learn_probability=false`` keeps the probabilities fixed while the magnitudes are learned;
    - ``cluster_size``: classes sorted by decreasing training count form blocks of that many sharing
      one row, the same clusters as ``loss=autobalance``'s ``cluster_size`` (D_π);
    - ``temperature`` (0.1, the library's), ``gate``: an operation applies to an example when
      ``b = 1[logit p + logit v > 0]`` for a uniform draw ``v`` (probability p). The search differentiates
      the relaxed gate ``σ((logit p + logit v)/temperature)`` (a relaxed Bernoulli, at the same ``v``);
      ``gate=hard`` (default) trains with the exact gate, as MADAO's training steps do, ``relaxed`` with
      the relaxed one. A gated operation gives ``x + b·(op(x) − x)``; a gated affine operation is the
      map ``I + b·(A − I)``, and consecutive affine operations are composed into one map and one
      resampling of the image (one interpolation, not one per operation: less blur, a quarter of the cost).

    >>> import torch
    >>> pol = Policy(class_counts=[8, 2], input_shape=(2,), ops=["spherical"], magnitude=0.5, radius=0.2)
    >>> x = torch.zeros(4, 2)
    >>> out = pol(x, torch.tensor([0, 0, 1, 1]), torch.Generator().manual_seed(0))
    >>> bool((out.norm(dim=1) <= 0.1).all())                      # inside the ball of radius 0.2·σ(0)
    True
    >>> sorted(pol.hyperparameters())
    ['magnitude', 'probability']
    """

    def __init__(
        self,
        class_counts: Optional[Sequence[int]] = None,
        input_shape: Optional[Sequence[int]] = None,
        ops: Optional[List[str]] = None,
        per: str = "class",
        cluster_size: int = 1,
        learn: bool = True,
        learn_probability: bool = True,
        magnitude: float = 0.5,
        probability: float = 0.5,
        temperature: float = 0.1,
        gate: str = "hard",
        radius: float = 1.0,
    ):
        super().__init__()
        images = input_shape is not None and len(input_shape) == 3
        self.ops = tuple(ops) if ops is not None else (IMAGE_OPS if images else ("noise",))
        operations.check(self.ops, input_shape)
        if per not in _PER:
            raise ShiftkitError(f"per must be 'class' or 'shared', got '{per}'")
        if gate not in _GATES:
            raise ShiftkitError(f"gate must be 'hard' or 'relaxed', got '{gate}'")
        for key, value in (("magnitude", magnitude), ("probability", probability)):
            if not 0 < value < 1:
                raise ShiftkitError(f"{key} must lie strictly between 0 and 1 (it is learned as a logit), got {value}")
        if not (temperature > 0 and radius > 0 and cluster_size >= 1):
            raise ShiftkitError("temperature and radius must be > 0 and cluster_size >= 1, got "
                                f"{temperature}, {radius} and {cluster_size}")
        n = positive_counts("class_counts", class_counts)
        cluster_of = class_clusters(n, cluster_size)[0] if per == "class" else torch.zeros(len(n), dtype=torch.long)
        self.register_buffer("cluster_of", cluster_of)
        self.per, self.learn, self.gate = per, bool(learn), gate
        self.temperature, self.radius = float(temperature), float(radius)
        rows = int(cluster_of.max()) + 1
        self._keep("magnitude", torch.full((rows, len(self.ops)), _logit(magnitude)), self.learn)
        self._keep("probability", torch.full((rows, len(self.ops)), _logit(probability)),
                   self.learn and learn_probability)

    def _keep(self, name: str, value: Tensor, learned: bool) -> None:
        if learned:
            self.register_parameter(name, nn.Parameter(value))
        else:
            self.register_buffer(name, value)

    def hyperparameters(self) -> Dict[str, nn.Parameter]:
        """The learned logits (``magnitude``, ``probability`` ``[rows, ops]``), empty for a fixed policy."""
        return dict(self.named_parameters())

    def draws(self, x: Tensor, generator: Optional[torch.Generator] = None) -> List[Dict[str, Tensor]]:
        """One dict per operation: its draw (:func:`shiftkit.augment.ops.draw`) and the gate's uniform."""
        tiny = torch.finfo(x.dtype).eps
        out = []
        for op in self.ops:
            d = operations.draw(op, x, generator)
            d["gate"] = torch.rand(len(x), generator=generator, device=x.device, dtype=x.dtype).clamp(tiny, 1 - tiny)
            out.append(d)
        return out

    def apply(self, x: Tensor, y: Tensor, draws: List[Dict[str, Tensor]], relaxed: Optional[bool] = None) -> Tensor:
        """The policy at fixed draws: differentiable in ``magnitude`` and ``probability`` (the gate is
        relaxed when ``relaxed``, default: ``gate == "relaxed"``)."""
        relaxed = self.gate == "relaxed" if relaxed is None else relaxed
        rows = self.cluster_of[y]
        m, b = torch.sigmoid(self.magnitude)[rows], self.probability[rows]  # [N, ops]
        per = (-1,) + (1,) * (x.dim() - 1)
        maps = None  # consecutive affine operations, composed: one resampling of the image
        for j, (op, d) in enumerate(zip(self.ops, draws)):
            strength = m[:, j].to(x.dtype)
            if op == "spherical":
                x = self._resampled(x, maps)
                maps = None
                x = operations.apply(op, x, strength, d, self.radius)
                continue
            t = b[:, j].to(x.dtype) + torch.log(d["gate"]) - torch.log1p(-d["gate"])
            gate = torch.sigmoid(t / self.temperature) if relaxed else (t > 0).to(x.dtype)
            if op in operations.AFFINE:  # gated map I + g·(A − I): the map itself at g = 1, none at g = 0
                eye = torch.eye(3, dtype=x.dtype, device=x.device)
                one = eye + gate[:, None, None] * (operations.matrix(op, strength, d) - eye)
                maps = one if maps is None else maps @ one
                continue
            x = self._resampled(x, maps)
            maps = None
            x = x + gate.view(per) * (operations.apply(op, x, strength, d, self.radius) - x)
        return self._resampled(x, maps)

    @staticmethod
    def _resampled(x: Tensor, maps: Optional[Tensor]) -> Tensor:
        return x if maps is None else operations.affine(x, maps)

    def values(self) -> Dict[str, list]:
        """Magnitude and probability per row (cluster, or the one shared row), as plain lists ``[rows][ops]``."""
        return {k: torch.sigmoid(getattr(self, k)).detach().cpu().tolist() for k in ("magnitude", "probability")}

    def record(self) -> dict:
        """``run.json``'s ``augment``: the operations and each class's magnitude and probability ``[K][ops]``."""
        index = self.cluster_of.cpu()
        per_class = {k: [v[i] for i in index.tolist()] for k, v in self.values().items()}
        return {"ops": list(self.ops), "per": self.per, "learned": self.learn, "per_class": per_class}
