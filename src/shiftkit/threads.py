"""Threads per process on the CPU, chosen where a shiftkit process starts (the ``shiftkit`` command, a
launcher's worker) and adapted while it trains. docs/PERFORMANCE.md#threads has the measurements.

PyTorch starts one OpenMP thread per core, and a waiting thread spins. Beside another busy process that is
the worst choice: each parallel region waits for its slowest thread, which shares a core, while the others
spin away their time slices (the demo's MLP 3.7 times slower beside one competing process on 2 cores). Letting
waiting threads sleep (``OMP_WAIT_POLICY=PASSIVE``) avoids that but costs up to twice the time of a small
model's step on an idle machine, so shiftkit keeps the spinning and instead uses only the cores that are free:

- :func:`configure`, where the process starts: ``max(1, min(torch's default, free cores) // processes)``, the
  free cores measured over 0.1 s, shared among the processes started together on this machine (torchrun's
  ``LOCAL_WORLD_SIZE``; a joblib worker already has ``OMP_NUM_THREADS`` = cores // ``n_jobs`` from joblib);
- :func:`adapt`, called by the training loop between steps: at most once a second, it measures again what
  other processes use (the cores' busy time less this process's own CPU time) and sets the count anew, so a
  competitor that starts, or leaves, later is followed within about a second.

A user's own ``OMP_NUM_THREADS`` always wins, as does ``SHIFTKIT_THREADS=N``: the count then stays fixed. The
library itself (``import shiftkit``) changes no process-wide setting: only the entry points call :func:`configure`,
and :func:`adapt` does nothing until they have.
"""

from __future__ import annotations

import os
import time
from typing import Dict, List, Optional

__all__ = ["adapt", "busy_cores", "configure", "plan"]

#: The environment variable that fixes the thread count of a shiftkit process.
VARIABLE = "SHIFTKIT_THREADS"
#: Seconds between two measurements of :func:`adapt`.
INTERVAL = 1.0
#: What :func:`configure` set up for :func:`adapt`: torch's default count, the processes sharing the cores,
#: and the last measurement (monotonic time, the cores' busy seconds, this process's CPU seconds).
_STATE: Dict[str, float] = {}


def _cores() -> List[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def _times(cores: List[int]) -> Optional[Dict[int, tuple]]:
    """``{core: (busy, total)}`` jiffies from ``/proc/stat`` (Linux), or None where it cannot be read."""
    try:
        with open("/proc/stat") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    out = {}
    for line in lines:
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cores:
            values = [int(v) for v in fields[:8]]
            idle = values[3] + values[4]  # idle + iowait
            out[int(name[3:])] = (sum(values) - idle, sum(values))
    return out or None


_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def busy_cores(interval: float = 0.1) -> float:
    """How many of this process's cores other processes keep busy, measured over ``interval`` seconds
    while this one sleeps (0.0 where ``/proc/stat`` cannot be read)."""
    cores = _cores()
    before = _times(cores)
    if before is None:
        return 0.0
    time.sleep(interval)
    after = _times(cores) or {}
    busy = 0.0
    for core, (b0, t0) in before.items():
        b1, t1 = after.get(core, (b0, t0))
        busy += (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0
    return busy


def plan(cores: int, default: int, busy: float, processes: int = 1) -> int:
    """The thread count: of ``cores``, those other processes do not keep ``busy`` (rounded), at most torch's
    ``default``, shared by ``processes``; at least one.

    >>> plan(2, 2, 0.03), plan(2, 2, 1.0), plan(2, 2, 2.0), plan(16, 16, 3.2, processes=4), plan(32, 16, 0.0)
    (2, 1, 1, 3, 16)
    """
    free = min(default, cores - round(busy))
    return max(1, max(1, free) // max(1, processes))


def _busy_seconds(cores: List[int]) -> Optional[float]:
    times = _times(cores)
    return None if times is None else sum(busy for busy, _ in times.values()) / _HZ


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system


def configure() -> int:
    """Set torch's thread count for this process by :func:`plan` and let :func:`adapt` follow the machine;
    returns the count. A count the user fixed (``SHIFTKIT_THREADS``, ``OMP_NUM_THREADS``) is left as it is."""
    import torch

    fixed = os.environ.get(VARIABLE, "").strip()
    if fixed.isdigit() and int(fixed) > 0:
        torch.set_num_threads(int(fixed))
    elif "OMP_NUM_THREADS" not in os.environ:
        processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
        default = torch.get_num_threads()
        torch.set_num_threads(plan(len(_cores()), default, busy_cores(), processes))
        _STATE.update(default=default, processes=processes)
        _measure()
    return torch.get_num_threads()


def _measure() -> Optional[float]:
    """Other processes' busy cores since the last call (None the first time, or without ``/proc/stat``)."""
    now, busy, own = time.monotonic(), _busy_seconds(_cores()), _own_seconds()
    last = (_STATE.get("at"), _STATE.get("busy"), _STATE.get("own"))
    _STATE.update(at=now, busy=busy if busy is not None else -1.0, own=own)
    if busy is None or last[0] is None or last[1] < 0 or now <= last[0]:
        return None
    return max(0.0, (busy - last[1]) - (own - last[2])) / (now - last[0])


def adapt() -> None:
    """Between training steps: at most every :data:`INTERVAL` seconds, measure what other processes use and
    set the thread count to :func:`plan`'s. Does nothing unless :func:`configure` chose the count."""
    if "default" not in _STATE or time.monotonic() - _STATE["at"] < INTERVAL:
        return
    others = _measure()
    if others is None:
        return
    import torch

    target = plan(len(_cores()), int(_STATE["default"]), others, int(_STATE["processes"]))
    if target != torch.get_num_threads():
        torch.set_num_threads(target)
