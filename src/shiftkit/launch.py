"""Sweeps through Hydra's launcher plugins: ``shiftkit train -m hydra/launcher=NAME ...``.

    shiftkit train -m hydra/launcher=joblib hydra.launcher.n_jobs=4 seed=0,1,2 loss=ce,poly
    shiftkit train -m hydra/launcher=submitit_slurm hydra.launcher.partition=gpu hydra.launcher.timeout_min=60 ...
    shiftkit train -m hydra/launcher=ray hydra.launcher.ray.init.address=ray://head:10001 ...

shiftkit expands the sweep as ``shiftkit train -m`` does in-process (every combination,
:func:`shiftkit.config.expand_sweep`), composes and checks every run (:func:`shiftkit.runner.check`) so that
bad input stops with one line before anything is launched, reads back the runs already done, and hands the
others to the launcher Hydra instantiates from ``hydra.launcher`` as one batch of jobs. Each job calls
:func:`task`, which runs its config with :func:`shiftkit.runner.run` and prints one line. Hydra's files go
under the results root (``<out>/.hydra/<date>_<time>/``: ``multirun.yaml``, and submitit's pickles and logs
in ``.submitit/``), never into the current directory. Without ``hydra/launcher=``, ``shiftkit train -m``
runs the sweep in-process instead (:func:`shiftkit.sweep.run_many`).

The launchers come from Hydra's plugins (``pip install 'shiftkit[joblib]'``, ``[slurm]``, ``[ray]``);
``hydra/launcher=ray`` also composes from shiftkit's own copy of the Ray plugin's config
(``conf/hydra/launcher/ray.yaml``), so a Ray sweep's settings can be checked where the plugin is missing; it
launches where the plugin is installed.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from . import scheduler
from .errors import ShiftkitError

#: Launcher -> (the plugin module it needs, shiftkit's extra that installs it).
PLUGINS: Dict[str, Tuple[str, str]] = {
    "joblib": ("hydra_plugins.hydra_joblib_launcher", "joblib"),
    "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "ray": ("hydra_plugins.hydra_ray_launcher", "ray"),
    "ray_aws": ("hydra_plugins.hydra_ray_launcher", "ray"),
}
#: Hydra settings a launcher sweep starts from (a user's override of the same key wins): Hydra's files
#: under the results root, no per-job ``.hydra/`` copies or log files, Hydra's messages on stderr.
HYDRA_DEFAULTS: Dict[str, str] = {
    "hydra.sweep.dir": "'${out}/.hydra/${now:%Y-%m-%d_%H-%M-%S}'",
    "hydra.output_subdir": "null",
    "hydra.job.chdir": "false",
    "hydra/hydra_logging": "shiftkit",
    "hydra/job_logging": "none",
}
_GROUP = "hydra/launcher"


def _parsed(overrides: List[str]) -> list:
    from .config import parse_overrides

    return parse_overrides(list(overrides))


def _key(override: Any) -> str:
    return override.get_key_element().lstrip("+~")


def launcher_name(overrides: List[str]) -> Optional[str]:
    """The launcher that ``hydra/launcher=NAME`` among ``overrides`` names, or None."""
    for o in _parsed(overrides):
        if _key(o) == _GROUP:
            if o.is_sweep_override() or o.is_delete():
                raise ShiftkitError("hydra/launcher takes one launcher name, e.g. hydra/launcher=joblib")
            return str(o.value())
    return None


def split(overrides: List[str]) -> Tuple[List[str], List[str]]:
    """``(hydra overrides, run overrides)``: those of ``hydra/...`` groups and ``hydra.*`` keys, and the rest."""
    hydra, runs = [], []
    for o in _parsed(overrides):
        key = _key(o)
        (hydra if key == "hydra" or key.startswith(("hydra/", "hydra.")) else runs).append(o.input_line)
    return hydra, runs


def with_defaults(overrides: List[str]) -> List[str]:
    """``overrides`` after :data:`HYDRA_DEFAULTS` for the keys they do not set themselves."""
    given = {_key(o) for o in _parsed(overrides)}
    return [f"{k}={v}" for k, v in HYDRA_DEFAULTS.items() if k not in given] + list(overrides)


def _hydra_launchers() -> set:
    """The ``hydra/launcher`` options Hydra finds: its own, installed plugins', shiftkit's."""
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("shiftkit.conf", version_base="1.3"):
            return set(GlobalHydra.instance().config_loader().get_group_options(_GROUP))
    finally:
        GlobalHydra.instance().clear()


def require(name: str, overrides: List[str] = ()) -> None:
    """One clear error for an unknown launcher, one whose plugin is not installed, SLURM where there is
    none, or a ``hydra/sweeper`` (shiftkit expands sweeps itself)."""
    if any(_key(o) == "hydra/sweeper" for o in _parsed(overrides)):
        raise ShiftkitError("shiftkit expands sweeps itself (every combination): hydra/sweeper is not supported")
    if name not in PLUGINS:
        known = _hydra_launchers()
        if name not in known:
            raise ShiftkitError(f"unknown launcher '{name}'; choose one of: {', '.join(sorted(known | set(PLUGINS)))}")
        return
    module, extra = PLUGINS[name]
    if importlib.util.find_spec(module) is None:
        package = module.split(".")[1].replace("_", "-")
        raise ShiftkitError(f"hydra/launcher={name} needs the {package} plugin: pip install 'shiftkit[{extra}]'")
    if name == "submitit_slurm" and shutil.which("srun") is None:
        raise ShiftkitError(
            "hydra/launcher=submitit_slurm submits to SLURM, but this machine has no srun: run the sweep on a "
            "login node of the cluster (hydra/launcher=submitit_local runs the same jobs here)"
        )


def _line(record: Dict[str, Any]) -> str:
    """One line for a run's record (as ``shiftkit train`` prints them)."""
    from .sweep import finished
    from . import labels

    where = f" ({record['run_dir']})" if "run_dir" in record else ""
    return f"{labels.label(record['config'], with_data=True)} seed {record['config']['seed']}: {finished(record)}{where}"


def task(cfg: Any) -> Dict[str, Any]:
    """One job of a launcher sweep (module-level, so that joblib, submitit and Ray pickle it by name): run
    ``cfg`` without its ``hydra`` node and with ``out`` made absolute against the directory the sweep was
    started in, print one line, return the run's record (``{"failed": message, ...}`` if shiftkit stopped it)."""
    from hydra.utils import to_absolute_path
    from omegaconf import OmegaConf, open_dict

    from . import plugins, precision, threads
    from .runner import run

    threads.configure()  # a worker's own process (joblib's workers come with OMP_NUM_THREADS = cores // n_jobs)
    with open_dict(cfg):
        cfg.pop("hydra", None)
        cfg.out = to_absolute_path(str(cfg.out))
        precision.settle(cfg)  # Hydra composed this job, not shiftkit.config.compose
    from .sweep import failure

    try:
        plugins.load()  # a worker process has imported none of the user's plugins yet
        with scheduler.stopping_on():  # SIGTERM or a time limit's warning: record, keep the checkpoint, end
            record = run(cfg)
    except ShiftkitError as exc:
        record = {**failure(exc), "config": OmegaConf.to_container(cfg, resolve=True)}
    except KeyboardInterrupt as exc:  # the run recorded "interrupted" beside its checkpoint
        scheduler.pass_on(exc)  # submitit may requeue the job here, to resume the run
        record = {"interrupted": str(exc) or "interrupted", "config": OmegaConf.to_container(cfg, resolve=True)}
    print(_line(record), file=sys.stderr, flush=True)
    return record


#: Launchers whose jobs run on this machine (any other's run on a cluster's nodes, with their devices).
HERE = ("basic", "joblib", "submitit_local")


def plan(overrides: List[str], runs: Optional[List[List[str]]] = None, elsewhere: bool = False
         ) -> Tuple[List[List[str]], List[Optional[Dict[str, Any]]], List[str]]:
    """Every run of a sweep (its overrides, ``hydra`` ones left out; or the given ``runs``), composed and
    checked so that bad input stops here, the record of each one already done (None for those still to
    run), and each run's results root. ``elsewhere``: the runs will run on other machines, whose devices
    (``device=cuda``) this one may not have; their jobs check them."""
    import contextlib

    from omegaconf import OmegaConf

    from .config import compose, expand_sweep, fit_options
    from .environment import devices_elsewhere
    from .runner import check_sweep, finished_record, run_dir

    runs = fit_options(expand_sweep(split(overrides)[1])) if runs is None else runs
    configs = [compose(one) for one in runs]
    with devices_elsewhere() if elsewhere else contextlib.nullcontext():
        check_sweep(configs)
    records, roots = [], []
    for cfg in configs:
        plain = OmegaConf.to_container(cfg, resolve=True)
        plain["out"] = os.path.abspath(plain["out"])
        roots.append(plain["out"])
        records.append(finished_record(run_dir(plain), plain["checkpoint"]["keep"]))  # what runner.run would skip
    return runs, records, roots


def _job_failure(exc: BaseException) -> str:
    """What stopped a launcher, in one line (submitit's message for a job that left no result takes two)."""
    import re

    from .config import one_line

    found = re.search(r"Job (\S+) \(task: \d+\) with path (\S+)_result\.pkl\s*\n\s*has not produced any output "
                      r"\(state: ([^)]*)\)", str(exc))
    if found:
        job, path, state = found.groups()
        return f"job {job} ended without a result (state {state}; its log: {path}_log.err)"
    return one_line(exc)


def _launch(hydra: Any, cfg: Any, jobs: List[List[str]]) -> List[Dict[str, Any]]:
    """What Hydra's multirun does with one batch of jobs: save ``multirun.yaml`` in the sweep directory,
    instantiate the launcher from ``cfg.hydra.launcher``, launch, return the jobs' records."""
    from hydra._internal.callbacks import Callbacks
    from hydra.core.plugins import Plugins
    from hydra.core.utils import configure_log
    from hydra.types import HydraContext
    from omegaconf import OmegaConf

    configure_log(cfg.hydra.hydra_logging, cfg.hydra.verbose)
    callbacks = Callbacks(cfg)
    callbacks.on_multirun_start(config=cfg, config_name="config")
    context = HydraContext(config_loader=hydra.config_loader, callbacks=callbacks)
    launcher = Plugins.instance().instantiate_launcher(hydra_context=context, task_function=task, config=cfg)
    sweep_dir = Path(str(cfg.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, sweep_dir / "multirun.yaml")
    try:
        results = launcher.launch(jobs, initial_job_idx=0)
    except Exception as exc:  # a job killed (no result), a submission the scheduler refused, a lost worker
        raise ShiftkitError(
            f"the sweep's launcher stopped: {_job_failure(exc)}; the runs that finished are saved, its other jobs "
            "go on, and once they have ended the same command resumes the rest from their checkpoints"
        ) from None
    callbacks.on_multirun_end(config=cfg, config_name="config")
    return [job.return_value for job in results]


def _run_pending(name: str, hydra: Any, cfg: Any, runs: List[List[str]], records: List[Optional[Dict[str, Any]]]
                 ) -> None:
    """Say the runs already done, launch the others as one batch, and fill in their records."""
    if name.startswith("ray"):
        scheduler.ray_environment(cfg)
    for record in records:
        if record is not None:
            print(_line(record), file=sys.stderr)
    pending = [i for i, record in enumerate(records) if record is None]
    if pending:
        for i, record in zip(pending, _launch(hydra, cfg, [runs[i] for i in pending])):
            records[i] = record
            if name.startswith("submitit"):  # its jobs' lines went to their logs
                print(_line(record), file=sys.stderr)


def launch(overrides: List[str], runs: Optional[List[List[str]]] = None, diverged_ok: bool = False
           ) -> List[Dict[str, Any]]:
    """Run a sweep through the launcher that ``hydra/launcher=NAME`` names: the sweep of ``overrides``, or
    the given ``runs`` (each a run's overrides, as a hyperparameter search makes them). Runs already done are not
    launched (their records are read back); the others go to the launcher as one batch of jobs. Returns every
    run's record in sweep order, as :func:`shiftkit.sweep.run_many` does. Bad input raises
    :class:`ShiftkitError` before anything is launched; runs that fail raise one after the sweep."""
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from hydra.types import RunMode
    from omegaconf.errors import OmegaConfBaseException

    from .config import one_line, register_configs

    name = launcher_name(overrides)
    if name is None:
        raise ShiftkitError("a launcher sweep needs hydra/launcher=NAME, e.g. hydra/launcher=joblib")
    require(name, overrides)
    runs, records, roots = plan(overrides, runs, elsewhere=name not in HERE)
    register_configs()
    GlobalHydra.instance().clear()
    try:
        with (
            initialize_config_module("shiftkit.conf", job_name="shiftkit", version_base="1.3"),
            warnings.catch_warnings(),
        ):
            # Where the Ray plugin is installed, Hydra checks shiftkit's ray.yaml against the plugin's schema
            # of the same name and warns that such matching is deprecated; the check is what we want.
            warnings.filterwarnings("ignore", message=r"(?s).*is validated against ConfigStore schema")
            hydra = GlobalHydra.instance().hydra
            # the sweep's config, hydra node included: bad hydra.* settings stop here, before anything runs
            cfg = hydra.compose_config("config", with_defaults(overrides), run_mode=RunMode.MULTIRUN)
            scheduler.check_sweep(name, cfg, roots)
            _run_pending(name, hydra, cfg, runs, records)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ShiftkitError(one_line(exc)) from None
    finally:
        GlobalHydra.instance().clear()
    from .sweep import conclude

    return conclude(records, lambda line: print(line, file=sys.stderr), diverged_ok)
