"""Checkpoints that let a killed run resume and finish exactly as if it had never stopped (docs/RUNS.md,
"Checkpoint and resume").

A checkpoint is written at the end of an epoch, after its evaluation, or inside a long epoch after a
step, and holds everything the rest of the run depends on: the model, the optimizer and its learning-rate
schedule, the loss's and the weighting's state (Group DRO's ``q``, DRW's epoch, ...), the sampler's state,
the generators that draw the data order and the augmentation, the global RNG states, the model selection
so far (its history and the selected weights), the step count and the training time; inside an epoch also
that epoch's data order and position. Files are written through a temporary file and a rename: a kill
while saving leaves the previous checkpoint whole.

>>> import tempfile, torch
>>> from pathlib import Path
>>> ck = Checkpoint(Path(tempfile.mkdtemp()) / "checkpoint.pt")
>>> ck.load() is None
True
>>> ck.save({"epoch": 3, "w": torch.ones(2)})
>>> Checkpoint(ck.path).load()["epoch"]
3
"""

from __future__ import annotations

import contextlib
import random
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from . import files
from .errors import ShiftkitError

#: The file name of a run's checkpoint inside its run directory.
FILE = "checkpoint.pt"
#: The file name of an ensemble's one checkpoint, in its first pending member's run directory.
ENSEMBLE_FILE = "ensemble-checkpoint.pt"


#: The NumPy types of the RNG state in checkpoints of earlier versions (a uint32 array): allowed on
#: load so that such runs still resume; an array can only be built from these, no other callable.
_EARLIER_NUMPY = [np.ndarray, np.dtype, np.dtypes.UInt32DType, (np._core if hasattr(np, "_core") else np.core).multiarray._reconstruct]


class Checkpoint:
    """Where a run's checkpoint lives and how often it is written: after every ``every``-th epoch (0:
    never) once ``interval`` seconds have passed since the last save (or the start), so that runs of many
    short epochs do not spend their time saving (0: at every ``every``-th epoch); with ``interval`` > 0,
    also inside an epoch that has run ``interval`` seconds since the last save (the saved state then holds
    the epoch's data order and its position in it).

    ``load()`` reads an existing checkpoint once (``state`` then holds it); ``save()`` replaces it
    atomically. Only the process that writes results saves (rank 0 under ``torchrun``); all load.
    """

    def __init__(self, path: Path, every: int = 1, interval: float = 0.0, write: bool = True):
        if every < 0 or not interval >= 0:
            raise ShiftkitError(
                f"checkpoint.every (0: no checkpoints) and checkpoint.interval must be >= 0, got {every} and {interval}"
            )
        self.path, self.every, self.interval, self.write = Path(path), int(every), float(interval), write
        self.state: Optional[Dict[str, Any]] = None
        self.last = time.monotonic()

    def due_within(self) -> bool:
        """Whether to save inside an epoch, after a step: when ``interval`` > 0 seconds have passed since
        the last save, so that a long epoch never loses more than about ``interval`` seconds of training."""
        return self.write and self.every > 0 and self.interval > 0 and time.monotonic() - self.last >= self.interval

    def due(self, epoch: int, epochs: int) -> bool:
        """Whether to save after 0-based ``epoch`` (never after the last one: the run is finishing; never in
        a process that does not write, so that it does not gather a state only to drop it)."""
        if not self.write or self.every == 0 or epoch + 1 >= epochs or (epoch + 1) % self.every:
            return False
        return time.monotonic() - self.last >= self.interval

    def load(self) -> Optional[Dict[str, Any]]:
        """The saved state, or ``None`` without a file. The file is read with ``weights_only=True``:
        tensors, numbers, strings and containers, never code, so a checkpoint from elsewhere cannot run
        anything when it is resumed. A file that is not one of our checkpoints is one error naming it."""
        if self.path.exists():
            try:
                with torch.serialization.safe_globals(_EARLIER_NUMPY):
                    state = torch.load(self.path, map_location="cpu", weights_only=True)
            except Exception as exc:  # a foreign, corrupt or unsafe file: say which, never resume from it
                detail = (str(exc).strip().splitlines() or [""])[0][:200]
                raise ShiftkitError(
                    f"checkpoint {self.path} does not fit this run (it cannot be read as one: {type(exc).__name__}"
                    f"{': ' + detail if detail else ''}); delete it to start the run over"
                ) from None
            if not isinstance(state, dict):
                raise ShiftkitError(
                    f"checkpoint {self.path} does not fit this run (it holds a {type(state).__name__}, not a"
                    " checkpoint's state); delete it to start the run over"
                )
            self.state = state
        return self.state

    def save(self, state: Dict[str, Any]) -> None:
        if not self.write:
            return
        files.save_torch(state, self.path)
        self.last = time.monotonic()

    def remove(self) -> None:
        if self.write:
            self.path.unlink(missing_ok=True)


def rng_states() -> Dict[str, Any]:
    """The global generators' states (torch CPU and CUDA, NumPy, Python), as tensors, numbers and tuples
    only, so that a checkpoint loads with ``weights_only=True``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))
    states = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: Dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, *rest = states["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.int64).astype(np.uint32), *rest))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class MembersCheckpoint(Checkpoint):
    """The one checkpoint of an ensemble (:mod:`shiftkit.ensemble`): every save records ``members`` (the
    run directories it covers), and ``load()`` ignores and removes a checkpoint saved for another set of
    members, so that such a run starts over."""

    def __init__(self, path: Path, members: Sequence[str], every: int = 1, interval: float = 0.0, write: bool = True):
        super().__init__(path, every, interval, write)
        self.members = list(members)

    def load(self) -> Optional[Dict[str, Any]]:
        if super().load() is not None and self.state.get("members") != self.members:
            self.remove()
            self.state = None
        return self.state

    def save(self, state: Dict[str, Any]) -> None:
        super().save({**state, "members": self.members})


class GeneratorPart:
    """A ``torch.Generator`` as a checkpoint part: ``state_dict()`` is its state."""

    def __init__(self, generator: torch.Generator):
        self.generator = generator

    def state_dict(self) -> torch.Tensor:
        return self.generator.get_state()

    def load_state_dict(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)


class MemberParts:
    """One part per ensemble member (weightings, samplers, generators...) as one checkpoint part: its
    state is the list of the members' states."""

    def __init__(self, parts: Sequence[Any]):
        self.parts = list(parts)

    def state_dict(self) -> List[Any]:
        return [part.state_dict() for part in self.parts]

    def load_state_dict(self, states: List[Any]) -> None:
        if len(states) != len(self.parts):
            raise ShiftkitError(f"a checkpoint of {len(states)} members cannot restore {len(self.parts)}")
        for part, state in zip(self.parts, states):
            part.load_state_dict(state)


def capture(parts: Dict[str, Any], **values: Any) -> Dict[str, Any]:
    """A checkpoint's state: every part's ``state_dict()`` under its key, the plain ``values`` (epoch,
    step, seconds, selected weights...) and the global RNG states (``rng``)."""
    return {**{key: part.state_dict() for key, part in parts.items()}, **values, "rng": rng_states()}


def restore(parts: Dict[str, Any], state: Dict[str, Any], source: Optional[Path] = None,
            required: Sequence[str] = (), optional: Sequence[str] = ()) -> None:
    """The inverse of :func:`capture`: load every part's state, then the global RNG states; ``required``
    names plain values the caller reads next, ``optional`` parts that checkpoints of earlier versions lack
    (they keep their fresh state). A checkpoint that does not fit (another model's weights, a
    file from another version or of another kind of run) is one clear error naming ``source``, never a
    half-restored run."""
    with fitting(source):
        if not isinstance(state, dict):
            raise TypeError(f"it holds a {type(state).__name__}, not a checkpoint's state")
        missing = [key for key in (*parts, *required, "rng") if key not in state and key not in optional]
        if missing:
            raise KeyError(", ".join(missing))
        for key, part in parts.items():
            if key in state:
                part.load_state_dict(state[key])
        set_rng_states(state["rng"])


@contextlib.contextmanager
def fitting(source: Optional[Path] = None):
    """Turn a failure to read a loaded checkpoint's state (a missing key, a wrong type or shape) into one
    error naming ``source``: the file does not fit this run."""
    try:
        yield
    except (KeyError, RuntimeError, ValueError, TypeError, IndexError, AttributeError) as exc:
        where = f"checkpoint {source}" if source is not None else "the checkpoint"
        detail = (str(exc).strip().splitlines() or ["missing state"])[0][:200]
        raise ShiftkitError(
            f"{where} does not fit this run ({type(exc).__name__}: {detail}); delete it to start the run over"
        ) from None


class PhaseCheckpoint:
    """One phase's view of a multi-phase run's checkpoint (AutoBalance's search and retraining, a
    two-stage procedure's phases), as :func:`shiftkit.train.fit` uses it: the loaded state only if it is
    this phase's loop, and every save tagged with the phase (and ``extra``, e.g. a finished phase's result)."""

    def __init__(self, checkpoint: Checkpoint, phase: str, **extra: Any):
        self.checkpoint, self.phase, self.extra, self.path = checkpoint, phase, extra, checkpoint.path
        state = checkpoint.state
        self.state = state if state is not None and state.get("phase") == phase and "epoch" in state else None
        self.every = checkpoint.every

    def due(self, epoch: int, epochs: int) -> bool:
        return self.checkpoint.due(epoch, epochs)

    def due_within(self) -> bool:
        return self.checkpoint.due_within()

    def save(self, state: Dict[str, Any]) -> None:
        self.checkpoint.save({**state, **self.extra, "phase": self.phase})


def phase(checkpoint: Optional[Checkpoint], name: str, **extra: Any) -> Optional[PhaseCheckpoint]:
    return None if checkpoint is None else PhaseCheckpoint(checkpoint, name, **extra)
