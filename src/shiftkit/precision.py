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

Everywhere else, and for the procedures in :data:`FLOAT32_PROCEDURES`, it resolves to ``none``
(float32). The run records the precision it resolved to, never ``auto``, so an ``auto`` run in float32 is
the same run (the same identity and directory) as one that asked for ``train.amp=none``, including every run made before ``auto`` existed; a bfloat16 run is the same run
as one that asked for ``train.amp=bf16``.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

__all__ = ["CHOICES", "FLOAT32_PROCEDURES", "VERIFIED", "resolve", "settle"]

#: The values of ``train.amp``.
CHOICES = ("auto", "none", "bf16")

#: Model families (``model.name``) that passed both checks above, mapped to the device types (``cpu``,
#: ``cuda``) they passed them on (speed differs between them; docs/PERFORMANCE.md#precision has the
#: figures and the checks). On a CPU with AVX-512 BF16: ``cnn`` steps 1.47 times faster, ``resnet32`` 1.66,
#: and ``rgd-fig5`` trained with each kept its verdicts and every group's numbers. Not listed: ``mlp`` (its
#: steps are no faster, 1.03 times at the demo's size, so bfloat16 would change its numbers for nothing),
#: ``convnet`` (its checks here decided nothing: docs/PERFORMANCE.md#precision), and every family on
#: ``cuda`` (not yet checked on a GPU).
VERIFIED: Dict[str, Tuple[str, ...]] = {"cnn": ("cpu",), "resnet32": ("cpu",)}

#: Procedures whose runs ``auto`` keeps in float32 whatever the family. ``autobalance``: with ``cnn``, the
#: bfloat16 search and retraining tracked float32 within 0.4 points of test balanced accuracy on five of
#: six seeds, but one seed's retraining ended at three times the training loss and 5 points lower, which
#: turned a claim of ``autobalance-table1`` from undecided to refuted at two seeds (docs/PERFORMANCE.md#precision).
FLOAT32_PROCEDURES: Tuple[str, ...] = ("autobalance",)


def resolve(amp: str, device: str, model: str, procedure: Optional[str] = None) -> str:
    """The precision ``train.amp=amp`` trains ``model`` in on ``device`` (``auto``, ``cpu``, ``cuda``...)
    under ``procedure``: ``amp`` itself unless it is ``auto``."""
    if amp != "auto":
        return amp
    if model not in VERIFIED or procedure in FLOAT32_PROCEDURES:
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
        procedure = (cfg.get("procedure") or {}).get("name")
        train["amp"] = resolve("auto", cfg.get("device", "auto"), cfg["model"]["name"], procedure)
