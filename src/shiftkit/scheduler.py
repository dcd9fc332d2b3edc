"""What a cluster's scheduler adds to a run: the signals it stops jobs with, and filesystems that only
one node sees (docs/SWEEPS.md, "Preemption" and "Shared results").

A scheduler stops a job with SIGTERM (``scancel``, preemption, a time limit that ran out: SLURM sends it,
then SIGKILL ``KillWait`` seconds later) and warns a job near its time limit with the signal submitit asks
for (SIGUSR2, ``hydra.launcher.signal_delay_s`` seconds before). During a run either one raises
:class:`Terminated` where the process is, so the run ends as Ctrl-C ends it: ``run.json`` records
``"status": "interrupted"`` beside the last checkpoint, and the same command resumes it from there.

Results must go where every node and the submitting machine see them. :func:`node_local` names folders
that live on one machine (``/tmp``, ``/var/tmp``, ``/dev/shm``, ``$TMPDIR``, a job's ``$SLURM_TMPDIR``,
memory filesystems); :func:`check_shared` refuses them before anything is submitted (:func:`check_sweep`
decides where that applies). A Ray cluster's workers come with their nodes' environment, so
:func:`ray_environment` hands a sweep's tasks the variables shiftkit reads.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from pathlib import Path
from typing import Any, Iterator, List, Optional

from .errors import ShiftkitError

#: The signals a scheduler stops or warns a job with.
JOB_SIGNALS = (signal.SIGTERM, signal.SIGUSR2)
#: Folders that are each machine's own.
NODE_LOCAL = ("/tmp", "/var/tmp", "/dev/shm", "/run")
#: Filesystems that live in one machine's memory.
MEMORY_FILESYSTEMS = {"tmpfs", "ramfs"}


class Terminated(KeyboardInterrupt):
    """SIGTERM (what SLURM and most schedulers send before they kill a job) or a scheduler's warning signal,
    raised where the process is so that it ends as Ctrl-C does: the run records ``"status": "interrupted"``
    and resumes when the same command runs again. ``signum``: the signal."""

    signum: Optional[int] = None


def terminate(signum, frame) -> None:
    exc = Terminated(f"stopped by {signal.Signals(signum).name}")
    exc.signum = signum
    raise exc


def pass_on(exc: BaseException) -> None:
    """After a run stopped by a scheduler's signal has recorded itself, hand the signal to the handler the
    process had before :func:`stopping_on`: submitit's, for its warning signal, requeues the job where
    ``hydra.launcher.max_num_timeout`` allows (the process then exits, and the requeued job resumes the run
    from its checkpoint); where it will not requeue, or there is no such handler, this returns."""
    signum = getattr(exc, "signum", None)
    handler = signal.getsignal(signum) if signum is not None else None
    if callable(handler) and handler is not terminate:
        with contextlib.suppress(Exception):  # submitit's "not requeued because ..."
            handler(signum, None)


@contextlib.contextmanager
def stopping_on(signals=JOB_SIGNALS) -> Iterator[None]:
    """Raise :class:`Terminated` on any of ``signals`` inside the block (in the main thread only: elsewhere,
    as in a thread of a Ray worker, the process's own handlers stay), and restore the previous handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, terminate) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _filesystem(path: Path) -> str:
    """The type of the filesystem ``path`` is on (its longest mount point in /proc/self/mounts), or ''."""
    best, kind = "", ""
    with contextlib.suppress(OSError), open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) > 2:
                point = fields[1].replace("\\040", " ")
                if path.is_relative_to(point) and len(point) >= len(best):
                    best, kind = point, fields[2]
    return kind


def node_local(path: str) -> Optional[str]:
    """Why ``path`` is one machine's own folder (None: it may be shared)."""
    where = Path(os.path.realpath(path))
    scratch = [*NODE_LOCAL, *(os.environ[k] for k in ("TMPDIR", "SLURM_TMPDIR") if os.environ.get(k))]
    for root in map(os.path.realpath, scratch):
        if root != "/" and where.is_relative_to(root):
            return f"it is under {root}, which each machine has for itself"
    kind = _filesystem(where)
    if kind in MEMORY_FILESYSTEMS:
        return f"it is on a {kind} filesystem, in this machine's memory"
    return None


def check_shared(launcher: str, out: str, setting: str = "out") -> None:
    """Refuse a results root that the cluster's other nodes would not see, before anything is submitted
    (even where the cluster is this machine alone: a sweep's results belong where they outlive a node)."""
    reason = node_local(out)
    if reason is None:
        return
    what = f"out={out}" if setting == "out" else f"{setting}={out} (Hydra's files for the jobs)"
    raise ShiftkitError(
        f"{what} is not shared between the cluster's machines ({reason}): hydra/launcher={launcher} "
        f"needs {'a results folder' if setting == 'out' else 'it'} on a filesystem every node and this machine "
        "see (e.g. out=$HOME/results)"
    )


def _local_ray(address: Any) -> bool:
    """A Ray that runs on this machine alone: one ``ray.init`` starts, or a head at a loopback address."""
    host = str(address or "local").split("://")[-1].rsplit(":", 1)[0]
    return address in (None, "local") or host in ("localhost", "") or host.startswith("127.")


def check_sweep(name: str, cfg: Any, roots: List[str]) -> None:
    """Refuse, before anything is submitted, results roots (and submitit's folder) that the jobs of
    ``hydra/launcher=name`` would not see: SLURM's always, Ray's where it joins a cluster beyond this machine."""
    remote = name in ("submitit_slurm", "ray_aws") or (
        name == "ray" and not _local_ray(cfg.hydra.launcher.ray.init.get("address")))
    if not remote:
        return
    for root in dict.fromkeys(roots):
        check_shared(name, root)
    if name == "submitit_slurm":  # the jobs' pickles and logs: the nodes read and write them too
        check_shared(name, str(cfg.hydra.launcher.submitit_folder), "hydra.launcher.submitit_folder")


def ray_environment(cfg: Any) -> None:
    """A Ray cluster's workers are processes its nodes started, with their own environment: give the
    sweep's tasks the variables shiftkit reads (``SHIFTKIT_*``: plugins, data, cache, threads) and
    ``PYTHONPATH`` (where a plugin's module is), through ``ray.init``'s ``runtime_env`` (the sweep's own
    ``runtime_env.env_vars`` win)."""
    from omegaconf import OmegaConf, open_dict

    if cfg.hydra.launcher.get("ray") is None or cfg.hydra.launcher.ray.get("init") is None:
        return
    passed = {k: v for k, v in os.environ.items() if k.startswith("SHIFTKIT_") or k == "PYTHONPATH"}
    init = cfg.hydra.launcher.ray.init
    runtime = OmegaConf.to_container(init.get("runtime_env") or OmegaConf.create({}), resolve=True)
    runtime["env_vars"] = {**passed, **(runtime.get("env_vars") or {})}
    if runtime["env_vars"]:
        with open_dict(init):
            init.runtime_env = runtime
