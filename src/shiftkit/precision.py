"""What ``train.amp=auto``, the default, trains in: bfloat16 where that is fast and keeps results, else
float32.

``auto`` resolves when a run's config is composed, to ``bf16`` where both hold:

- the device computes in bfloat16 itself (:func:`shiftkit.environment.bf16_native`: a GPU that supports
  it, a CPU with AVX-512 BF16 or AMX). Where PyTorch emulates bfloat16, a step is 6 to 13 times slower
  than in float32 (``benchmarks/precision.py``), so ``auto`` never picks it there;
- the model family is in :data:`VERIFIED`: on a device that computes in bfloat16, its steps were measured
  faster than in float32 (``benchmarks/precision.py``: a small model's steps can be bound by the casts),
  and bfloat16 training was shown to leave the verdicts of the reproductions that train it and the demo's
  table unchanged within seed noise (``benchmarks/precision_verdicts.py``, docs/PERFORMANCE.md#precision).

Everywhere else it resolves to ``none`` (float32). The run records the precision it resolved to, never
``auto``, so an ``auto`` run in float32 is the same run (the same identity and directory) as one that asked
for ``train.amp=none``, including every run made before ``auto`` existed; a bfloat16 run is the same run
as one that asked for ``train.amp=bf16``.
"""

from __future__ import annotations

from typing import Dict, Tuple

__all__ = ["CHOICES", "VERIFIED", "resolve", "settle"]

#: The values of ``train.amp``.
CHOICES = ("auto", "none", "bf16")

#: Model families (``model.name``) that passed both checks above, mapped to the device types (``cpu``,
#: ``cuda``) they passed them on (speed differs between them; docs/PERFORMANCE.md has the figures). None has yet:
#: the machine this was developed on emulates bfloat16 and no GPU was lent to the checks, so ``auto`` is
#: float32 everywhere until a check on such a device adds a family here.
VERIFIED: Dict[str, Tuple[str, ...]] = {}


def resolve(amp: str, device: str, model: str) -> str:
    """The precision ``train.amp=amp`` trains ``model`` in on ``device`` (``auto``, ``cpu``, ``cuda``...):
    ``amp`` itself unless it is ``auto``."""
    if amp != "auto":
        return amp
    if model not in VERIFIED:
        return "none"
    from .environment import bf16_native, resolve_device

    device = resolve_device(device)
    return "bf16" if device.split(":")[0] in VERIFIED[model] and bf16_native(device) else "none"


def settle(cfg) -> None:
    """Resolve a run config's ``train.amp`` in place (a DictConfig or a plain dict): every path from
    overrides to a run goes through here (composing, a launcher's job, identities), so a run's directory
    and record never depend on which path made it."""
    train = cfg.get("train")
    if train is not None and train.get("amp") == "auto":
        train["amp"] = resolve("auto", cfg.get("device", "auto"), cfg["model"]["name"])
