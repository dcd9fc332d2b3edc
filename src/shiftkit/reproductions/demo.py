"""The demo (``make demo`` / ``shiftkit demo``): reweighting under interpolation.

On ``digits_binary`` (1 vs 8, step imbalance 10, balanced test; docs/METHODS.md#data-digits_binary) an overparameterized MLP is
trained to zero training error with ERM, importance weighting (exponent 1 and 1.5; docs/METHODS.md#weighting-iw) and the
polynomially-tailed loss with the same weights (docs/METHODS.md#loss-poly), over several seeds. [W]'s claim is that once
the model interpolates, importance weights on cross-entropy lose their effect, while a polynomially-tailed
loss keeps it; the table shows what happens on this small problem.
"""

from __future__ import annotations

from typing import List, Tuple

#: (label, overrides) per method.
METHODS: List[Tuple[str, List[str]]] = [
    ("ERM", ["loss=ce", "weighting=erm"]),
    ("IW", ["loss=ce", "weighting=iw"]),
    ("IW-exp1.5", ["loss=ce", "weighting=iw", "weighting.exponent=1.5"]),
    ("Poly+IW", ["loss=poly", "loss.alpha=2", "weighting=iw"]),
    ("Poly+IW-exp1.5", ["loss=poly", "loss.alpha=2", "weighting=iw", "weighting.exponent=1.5"]),
]

#: The method every other is tested against (one-sided paired t-test over seeds).
BASELINE = "ERM"

#: Shared settings: long enough at a constant rate for every method to interpolate.
COMMON: List[str] = [
    "data=digits_binary",
    "model=mlp",
    "model.width=512",
    "model.depth=2",
    "optim=sgd",
    "optim.lr=0.01",
    "optim.momentum=0.9",
    "train.epochs=400",
    "train.batch_size=32",
    "train.eval_every=20",
    "device=cpu",
]


def runs(seeds: int, out: str, extra: List[str] = ()) -> List[List[str]]:
    """The override list of every run: methods x seeds."""
    return [
        [*COMMON, *overrides, f"name={label}", f"seed={seed}", f"out={out}", *extra]
        for label, overrides in METHODS
        for seed in range(seeds)
    ]
