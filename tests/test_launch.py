"""Sweeps through Hydra's launcher plugins (shiftkit.launch): joblib end to end, submitit's local
executor (the pickling path SLURM uses), SLURM and Ray launcher configs, bad input before launch. Real
SLURM and Ray clusters: tests/test_clusters.py."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from shiftkit import cli, launch
from shiftkit.config import register_configs

TINY = ["train.epochs=2", "train.eval_every=1", "model.width=8", "device=cpu"]


def shiftkit(*args, cwd, pythonpath=(), warn=False):
    env = {**os.environ, "PYTHONWARNINGS": "default" if warn else "ignore"}
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([*map(str, pythonpath), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "shiftkit.cli", *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=300
    )


def hydra_config(overrides):
    """The composed config with its ``hydra`` node, as Hydra's launchers see it."""
    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("shiftkit.conf", job_name="shiftkit", version_base="1.3"):
            return compose("config", overrides=launch.with_defaults(overrides), return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()


def test_joblib_sweep_runs_every_run_and_a_repeat_trains_nothing(tmp_path):
    from shiftkit.config import compose as compose_run, expand_sweep
    from shiftkit.runner import run_dir

    cwd, out = tmp_path / "cwd", tmp_path / "results"
    cwd.mkdir()
    sweep = ["seed=0,1", "loss=ce,poly", f"out={out}", *TINY]
    args = ["train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *sweep]
    first = shiftkit(*args, cwd=cwd)
    assert first.returncode == 0, first.stderr
    runs = sorted(p.parent for p in out.rglob("done"))
    assert len(runs) == 4 and sorted(first.stdout.split()) == [str(r) for r in runs]
    # the same run directories as an in-process sweep, so either skips the other's finished runs
    assert runs == sorted(run_dir(OmegaConf.to_container(compose_run(o))) for o in expand_sweep(sweep))
    records = [json.loads((r / "run.json").read_text()) for r in runs]
    assert sorted((r["config"]["loss"]["name"], r["config"]["seed"]) for r in records) == [
        ("ce", 0), ("ce", 1), ("poly", 0), ("poly", 1)
    ]
    assert first.stderr.count("test balanced acc") == 4  # one line per finished run
    # each of the n_jobs=2 workers trains on cores // 2 threads (joblib sets OMP_NUM_THREADS; a user's own wins)
    from joblib import cpu_count

    expected = int(os.environ.get("OMP_NUM_THREADS", max(1, cpu_count() // 2)))
    assert {r["environment"]["threads"] for r in records} == {expected}
    assert os.listdir(cwd) == []  # Hydra's files went under the results root
    (sweep_dir,) = (out / ".hydra").iterdir()
    assert (sweep_dir / "multirun.yaml").exists() and not list(sweep_dir.rglob("*.log"))
    stamps = {r: (r / "run.json").stat().st_mtime_ns for r in runs}

    again = shiftkit(*args, cwd=cwd)
    assert again.returncode == 0, again.stderr
    assert "4 of 4 runs were already done and were skipped" in again.stderr
    assert again.stderr.count("already done, skipped") == 4
    assert sorted(again.stdout.split()) == sorted(first.stdout.split())
    assert {r: (r / "run.json").stat().st_mtime_ns for r in runs} == stamps
    assert list((out / ".hydra").iterdir()) == [sweep_dir]  # nothing was launched


def test_a_search_runs_through_the_joblib_launcher_in_the_same_directories_as_in_process(tmp_path):
    """``shiftkit sweep ... hydra/launcher=joblib``: the search's runs go to the launcher as one batch and
    land where the in-process search would put them."""
    from shiftkit import hparams
    from shiftkit.config import compose as compose_run
    from shiftkit.runner import run_dir

    out = tmp_path / "results"
    search = ["--methods", "erm,la", "--trials", "2", "--seeds", "2"]
    done = shiftkit("sweep", *search, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"out={out}", *TINY,
                    cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    runs = sorted(p.parent for p in out.rglob("done"))
    planned = hparams.plan(["erm", "la"], 2, [0, 1], [f"out={out}", *TINY])
    assert runs == sorted(run_dir(OmegaConf.to_container(compose_run(r["overrides"]))) for r in planned)
    assert len(runs) == 8 and sorted(done.stdout.split()) == [str(r) for r in runs]


def test_submitit_local_runs_a_job_through_submitits_pickles(tmp_path):
    out = tmp_path / "results"
    res = shiftkit("train", "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5", "seed=3",
                   f"out={out}", *TINY, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    (run,) = [p.parent for p in out.rglob("done")]
    assert json.loads((run / "run.json").read_text())["config"]["seed"] == 3
    logs = list((out / ".hydra").glob("*/.submitit/*/*_log.err"))
    assert logs and "seed 3:" in "".join(p.read_text() for p in logs)  # the job's line, in submitit's log


def test_slurm_launcher_config_composes_and_instantiates_without_a_cluster(tmp_path):
    from hydra.utils import instantiate

    cfg = hydra_config([
        "hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=90",
        "hydra.launcher.gpus_per_node=1", "hydra.launcher.array_parallelism=8", f"out={tmp_path}", "seed=1",
    ])
    conf = cfg.hydra.launcher
    assert conf._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (conf.partition, conf.timeout_min, conf.gpus_per_node, conf.array_parallelism) == ("gpu", 90, 1, 8)
    assert conf.submitit_folder.startswith(f"{tmp_path}/.hydra/")  # on the results root's filesystem
    assert cfg.hydra.output_subdir is None and cfg.hydra.job.chdir is False and cfg.seed == 1
    launcher = instantiate(conf)
    assert type(launcher).__name__ == "SlurmLauncher" and launcher.params["partition"] == "gpu"
    assert launcher.params["array_parallelism"] == 8 and launcher.params["gpus_per_node"] == 1


def test_ray_launcher_config_composes_from_shiftkits_copy():
    cfg = hydra_config(["hydra/launcher=ray", "hydra.launcher.ray.init.address=ray://head:10001",
                        "+hydra.launcher.ray.remote.num_gpus=1"])
    conf = cfg.hydra.launcher
    assert conf._target_ == "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher"
    assert OmegaConf.to_container(conf.ray) == {
        "init": {"address": "ray://head:10001", "object_store_memory": None}, "remote": {"num_gpus": 1}
    }
    assert hydra_config(["hydra/launcher=ray"]).hydra.launcher.ray.init.address is None


def test_a_failing_run_does_not_stop_the_others_and_a_rerun_launches_only_it(tmp_path):
    out = tmp_path / "results"
    args = ["train", "-m", "hydra/launcher=basic", "optim.lr=0.1,1e38", "seed=0", f"out={out}", *TINY]
    res = shiftkit(*args, cwd=tmp_path)
    assert res.returncode == 2 and "became non-finite" in res.stderr
    assert res.stderr.splitlines()[-1].startswith("shiftkit: error: 1 of 2 runs failed (the first: ")
    assert len(list(out.rglob("done"))) == 1
    again = shiftkit(*args, cwd=tmp_path)
    assert again.returncode == 2 and "already done, skipped" in again.stderr
    assert "Launching 1 jobs" in again.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["hydra/launcher=joblib", "loss=ce,nope", "seed=0,1"], "unknown loss 'nope'; choose one of: "),
        (["hydra/launcher=joblib", "seed=0,-1"], "seed must be an integer in 0..2**63-1"),
        (["hydra/launcher=nope", "seed=0,1"], "unknown launcher 'nope'; choose one of: basic, joblib, ray, "),
        (["hydra/launcher=joblib", "hydra.launcher.n_jobs=two", "seed=0,1"], "hydra.launcher.n_jobs"),
        (["hydra/launcher=submitit_slurm", "hydra.launcher.partiton=gpu", "seed=0,1"], "hydra.launcher.partiton"),
        (["hydra/launcher=submitit_slurm", "seed=0,1"], "this machine has no srun"),
        (["hydra/launcher=joblib", "hydra/sweeper=basic", "seed=0,1"], "hydra/sweeper is not supported"),
        (["hydra/launcher=ray", "seed=0,1"], "pip install 'shiftkit[ray]'"),  # where the plugin is missing
    ],
)
def test_bad_input_is_one_line_exit_2_and_launches_nothing(tmp_path, capsys, monkeypatch, args, message):
    import shutil

    if args[0] == "hydra/launcher=submitit_slurm":  # srun as on a login node, or none
        found = "hydra.launcher.partiton=gpu" in args
        monkeypatch.setattr(shutil, "which", lambda cmd: f"/usr/bin/{cmd}" if found else None)
    if args[0] == "hydra/launcher=ray":  # as where the Ray plugin is not installed
        find = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *a: None if name == "hydra_plugins.hydra_ray_launcher" else find(name, *a))
    monkeypatch.chdir(tmp_path)
    code = cli.main(["train", "-m", *args, f"out={tmp_path / 'out'}", *TINY])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("shiftkit: error: ") and message in err, err
    assert err.count("\n") == 1
    assert os.listdir(tmp_path) == []


def test_launcher_name_and_split():
    assert launch.launcher_name(["seed=0,1", "loss=ce,poly"]) is None
    assert launch.launcher_name(["hydra/launcher=joblib", "seed=0,1"]) == "joblib"
    assert launch.split(["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1"]) == (
        ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], ["seed=0,1"]
    )


def test_node_local_folders_are_named_and_shared_ones_pass(monkeypatch):
    from shiftkit import scheduler

    monkeypatch.setenv("TMPDIR", "/scratch/local/job1")
    assert "under /tmp" in scheduler.node_local("/tmp/results/x")
    assert "under /dev/shm" in scheduler.node_local("/dev/shm/results")
    assert "under /scratch/local/job1" in scheduler.node_local("/scratch/local/job1/r")
    assert scheduler.node_local("/scratch/shared/r") is None
    assert scheduler.node_local("/tmpx/results") is None  # a prefix of a name is not a parent folder
    monkeypatch.setattr(scheduler, "_filesystem", lambda path: "tmpfs")
    assert "tmpfs filesystem" in scheduler.node_local("/shared/results")
    monkeypatch.setattr(scheduler, "_filesystem", lambda path: "nfs4")
    assert scheduler.node_local("/shared/results") is None


@pytest.mark.parametrize("address, refused", [
    (None, False), ("local", False), ("127.0.0.1:6379", False), ("localhost:6379", False),
    ("ray://head:10001", True), ("10.1.2.3:6379", True), ("auto", True),
])
def test_a_ray_sweep_beyond_this_machine_needs_a_shared_results_folder(tmp_path, address, refused):
    from shiftkit import scheduler
    from shiftkit.errors import ShiftkitError

    cfg = OmegaConf.create({"hydra": {"launcher": {"ray": {"init": {"address": address}}}}})
    if refused:
        with pytest.raises(ShiftkitError, match=r"out=/tmp/r is not shared between the cluster's machines"):
            scheduler.check_sweep("ray", cfg, ["/tmp/r"])
    else:
        scheduler.check_sweep("ray", cfg, ["/tmp/r"])
    scheduler.check_sweep("joblib", cfg, ["/tmp/r"])  # a local launcher's jobs see this machine's folders


def test_ray_tasks_get_shiftkits_environment_and_the_sweeps_own_variables_win(monkeypatch):
    from shiftkit import scheduler

    monkeypatch.setenv("SHIFTKIT_PLUGINS", "mine")
    monkeypatch.setenv("PYTHONPATH", "/shared/code")
    cfg = OmegaConf.create({"hydra": {"launcher": {"ray": {"init": {
        "address": "auto", "runtime_env": {"env_vars": {"PYTHONPATH": "/elsewhere"}, "working_dir": "/w"}}}}}})
    scheduler.ray_environment(cfg)
    runtime = OmegaConf.to_container(cfg.hydra.launcher.ray.init.runtime_env)
    assert runtime["working_dir"] == "/w" and runtime["env_vars"]["PYTHONPATH"] == "/elsewhere"
    assert runtime["env_vars"]["SHIFTKIT_PLUGINS"] == "mine"


def test_a_sweep_for_a_clusters_nodes_checks_the_device_by_name_only():
    from shiftkit.environment import devices_elsewhere, resolve_device
    from shiftkit.errors import ShiftkitError

    with devices_elsewhere():
        assert resolve_device("cuda:1") == "cuda:1"  # whether or not this machine has one
        with pytest.raises(ShiftkitError, match="device 'gpu' is not a device"):
            resolve_device("gpu")
    if not __import__("torch").cuda.is_available():
        with pytest.raises(ShiftkitError, match="device 'cuda:1' is not available here"):
            resolve_device("cuda:1")
