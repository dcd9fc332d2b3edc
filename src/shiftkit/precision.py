"""What ``train.amp=auto``, the default, trains in: bfloat16 where that is fast and keeps results, else
float32.

``auto`` resolves when a run's config is composed, to ``bf16`` where both hold:

- the device computes in bfloat16 itself (:func:`shiftkit.environment.bf16_native`: a GPU that supports
  it, a CPU with AVX-512 BF16 or AMX). Where PyTorch emulates bfloat16, a step is 6 to 13 times slower
  than in float32 (``benchmarks/precision.py``), so ``auto`` never picks it there;
- the model family is in :data:`VERIFIED`: bfloat16 training of that family has been shown to leave the
  reproductions' verdicts and the demo's table unchanged within seed noise
  (``benchmarks/precision.py --verdicts``, docs/PERFORMANCE.md#precision).

Everywhere else it resolves to ``none`` (float32). The run records the precision it resolved to, never
``auto``, so an ``auto`` run in float32 is the same run (the same identity and directory) as one that asked
for ``train.amp=none``, including every run made before ``auto`` existed; a bfloat16 run is the same run
as one that asked for ``train.amp=bf16``.
"""

from __future__ import annotations

from typing import Dict

__all__ = ["CHOICES", "VERIFIED", "resolve"]

#: The values of ``train.amp``.
CHOICES = ("auto", "none", "bf16")

#: Model families (``model.name``) whose bfloat16 training has been checked against float32 with
#: ``benchmarks/precision.py --verdicts`` on a device that computes in bfloat16, mapped to the check's
#: outcome. None is yet: the machines this was measured on emulate bfloat16 and no GPU was lent, so
#: ``auto`` is float32 everywhere until a check adds a family here.
VERIFIED: Dict[str, str] = {}


def resolve(amp: str, device: str, model: str) -> str:
    """The precision ``train.amp=amp`` trains ``model`` in on ``device`` (``auto``, ``cpu``, ``cuda``...):
    ``amp`` itself unless it is ``auto``."""
    if amp != "auto":
        return amp
    if model not in VERIFIED:
        return "none"
    from .environment import bf16_native, resolve_device

    return "bf16" if bf16_native(resolve_device(device)) else "none"
