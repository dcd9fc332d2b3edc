"""Shared by the benchmarks: timing, the machine, and the final ``RESULT {json}`` line."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from typing import Callable, Dict

import torch


def machine() -> Dict[str, object]:
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }


def timed(fn: Callable[[], object], repeats: int = 1) -> float:
    """Median wall time of ``repeats`` calls (seconds); CUDA work is waited for."""
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def result(payload: Dict[str, object]) -> None:
    """Print the final line the benchmarks promise: ``RESULT {json}``."""
    print("RESULT " + json.dumps({**payload, "machine": machine()}, sort_keys=True))
