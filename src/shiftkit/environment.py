"""Where a run executes: the device it asks for, and the environment and command its record names."""

from __future__ import annotations

import contextlib
import os
import platform
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import numpy as np
import torch

from . import __version__, distributed
from .errors import ShiftkitError

__all__ = ["bf16_native", "command", "devices_elsewhere", "environment", "resolve_device"]

_elsewhere: List[bool] = []


@contextlib.contextmanager
def devices_elsewhere() -> Iterator[None]:
    """Inside, :func:`resolve_device` checks a device's name only: for a sweep that a cluster's nodes will
    run, submitted from a machine without their devices (a login node without GPUs). Each job checks its
    device on its node, when it starts."""
    _elsewhere.append(True)
    try:
        yield
    finally:
        _elsewhere.pop()


def resolve_device(name: str) -> str:
    if _elsewhere and name != "auto":
        try:
            torch.device(name)
        except RuntimeError as exc:
            raise ShiftkitError(f"device '{name}' is not a device: {str(exc).splitlines()[0]}") from None
        return name
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.empty(0, device=name)
    except (RuntimeError, AssertionError) as exc:
        raise ShiftkitError(f"device '{name}' is not available here: {str(exc).splitlines()[0]}") from None
    return name


def bf16_native(device: str) -> bool:
    """Whether ``device`` computes in bfloat16 itself: a GPU that supports it, or a CPU with AVX-512 BF16 or
    AMX (``avx512_bf16`` / ``amx_bf16`` in ``/proc/cpuinfo``). Elsewhere PyTorch emulates bfloat16, and a
    training step under ``train.amp=bf16`` is 6 to 13 times slower than in float32 (``benchmarks/precision.py``)."""
    if str(device).startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def environment() -> Dict[str, str]:
    return {
        "shiftkit": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "command": command(),
        "threads": torch.get_num_threads(),
        "world_size": distributed.world_size() if distributed.active() else int(os.environ.get("WORLD_SIZE", "1")),
    }


def _parent_command() -> Optional[List[str]]:
    """The parent process's arguments (Linux), where they can be read."""
    try:
        raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part] or None


def command(argv: Optional[List[str]] = None, parent: Optional[List[str]] = None) -> str:
    """The command as it was typed: ``shiftkit train ...`` (``python -m shiftkit ...`` where that ran it);
    under ``torchrun``, the launcher's own command line (its parent process), else one rebuilt from the
    world size it set.

    >>> command(["/venv/bin/shiftkit", "train", "loss=poly", "name=my run"])
    "shiftkit train loss=poly 'name=my run'"
    >>> command(["/venv/lib/shiftkit/__main__.py", "train"], ["/venv/bin/python", "/venv/bin/torchrun",
    ...         "--nproc_per_node=2", "-m", "shiftkit", "train"])
    'torchrun --nproc_per_node=2 -m shiftkit train'
    """
    import shlex

    argv = list(sys.argv if argv is None else argv)
    program = Path(argv[0]).name if argv else "shiftkit"
    own = (["python", "-m", "shiftkit"] if program == "__main__.py" else [program]) + argv[1:]
    if parent is None and distributed.requested():
        parent = _parent_command()
    if parent:
        at = next((i for i, a in enumerate(parent) if Path(a).name == "torchrun"), None)
        if at is None and "torch.distributed.run" in parent:
            at = parent.index("torch.distributed.run") - 1
            return shlex.join(["python", *parent[at:]])
        if at is not None:
            return shlex.join(["torchrun", *parent[at + 1 :]])
    if distributed.requested():
        nproc = os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1"))
        tail = own[3:] if own[:3] == ["python", "-m", "shiftkit"] else own[1:]
        return shlex.join(["torchrun", f"--nproc_per_node={nproc}", "-m", "shiftkit", *tail])
    return shlex.join(own)
