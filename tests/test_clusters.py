"""Sweeps through real clusters started on this machine (tests/clusters.py): a single-node SLURM
(slurmctld, slurmd, slurmdbd, munge) through ``hydra/launcher=submitit_slurm``, and a local Ray cluster
(``ray start --head``) through ``hydra/launcher=ray``. Each cluster starts once per session. The runs land
where an in-process sweep puts them, with its metrics; a job the scheduler stops (``scancel``, a time limit
that runs out, SIGKILL) resumes from its checkpoint to the uninterrupted metrics; a node-local results
folder stops before anything is submitted; more jobs than free CPUs queue. docs/SWEEPS.md#clusters-in-the-tests."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import clusters
from shiftkit.config import compose
from shiftkit.identity import run_dir

TINY = ["train.epochs=2", "train.eval_every=1", "model.width=8", "device=cpu"]
#: ~10 s on one core, a checkpoint every 100 epochs: stopped after its first checkpoint, a run has most of
#: its epochs left.
LONG = ["train.epochs=2000", "train.eval_every=500", "checkpoint.interval=0", "checkpoint.every=100", "device=cpu"]
SHORT = ["train.epochs=1000", "train.eval_every=500", "checkpoint.interval=0", "checkpoint.every=100", "device=cpu"]
SLURM = ["hydra/launcher=submitit_slurm", "hydra.launcher.timeout_min=5"]
RESULT_KEYS = ("final", "selected", "selected_epoch", "steps")
#: sacct's states of a job that has not ended.
ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "COMPLETING", "SUSPENDED", "RESIZING", "PREEMPTED"}


@pytest.fixture(scope="session")
def shared():
    """A results folder every node sees (not /tmp: node-local folders are refused for cluster sweeps)."""
    root = Path.home() / ".cache" / "shiftkit-tests" / uuid.uuid4().hex[:12]
    root.mkdir(parents=True)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _cluster(kind, missing):
    """Start a cluster of ``kind`` in a folder of its own (short, as socket paths must stay under 108
    characters, and open to traverse: munged refuses a socket below a private folder, as pytest's are)."""
    clusters.require(missing())
    root = Path(f"/tmp/{kind.__name__.lower()}-{uuid.uuid4().hex[:8]}")
    root.mkdir(mode=0o755)
    os.chmod(root, 0o755)
    try:
        with kind(root) as cluster:
            yield cluster
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def slurm():
    yield from _cluster(clusters.Slurm, clusters.missing_slurm)


@pytest.fixture(scope="session")
def ray_cluster():
    yield from _cluster(clusters.Ray, clusters.missing_ray)


def shiftkit(*args, env, cwd, wait=True):
    cmd = [sys.executable, "-m", "shiftkit.cli", *args]
    env = {**env, "PYTHONWARNINGS": "ignore"}
    if not wait:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def directory(overrides):
    return run_dir(OmegaConf.to_container(compose(list(overrides)), resolve=True))


def record(folder):
    return json.loads((Path(folder) / "run.json").read_text())


def results(folder):
    rec = record(folder)
    return {k: rec[k] for k in RESULT_KEYS}


def test_slurm_sweep_runs_as_in_process_queues_beyond_free_cpus_and_skips_finished_runs(slurm, shared, tmp_path):
    out, here = shared / "sweep", shared / "in-process"
    sweep = ["seed=0,1", *TINY]
    # two CPUs per job on the two-CPU node: one job at a time, the other queued until the first ends
    args = ["train", "-m", *SLURM, "hydra.launcher.cpus_per_task=2", f"out={out}", *sweep]
    first = shiftkit(*args, env=slurm.env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    runs = sorted(p.parent for p in out.rglob("done"))
    assert len(runs) == 2 and sorted(first.stdout.split()) == [str(r) for r in runs]
    assert first.stderr.count("test balanced acc") == 2  # each job's line, though it ran on the node
    # a job's result is written before SLURM has seen the job end: wait for its accounting to catch up
    _wait("the jobs' accounting", lambda: [j[2] for j in _jobs(slurm, tmp_path)] == ["COMPLETED"] * 2, timeout=60)
    jobs = _jobs(slurm, tmp_path)
    assert [j[1] for j in jobs] == ["shiftkit"] * 2, jobs
    assert max(j[3] for j in jobs) >= min(j[4] for j in jobs)  # the second started when the first ended

    local = shiftkit("train", "-m", f"out={here}", *sweep, env=os.environ, cwd=tmp_path)
    assert local.returncode == 0, local.stderr
    for run in runs:  # the same run directories (identities) and metrics as the in-process sweep
        assert results(run) == results(here / run.relative_to(out))

    again = shiftkit(*args, env=slurm.env, cwd=tmp_path)
    assert again.returncode == 0 and "2 of 2 runs were already done and were skipped" in again.stderr
    time.sleep(2)  # as long as accounting lags
    assert len(_jobs(slurm, tmp_path)) == 2  # nothing was submitted


def _jobs(slurm, cwd):
    """``sacct``'s ``JobID, JobName, State, Start, End`` of the jobs submitted from ``cwd`` (one test's)."""
    return [j[:5] for j in slurm.jobs("JobID", "JobName", "State", "Start", "End", "WorkDir") if j[5] == str(cwd)]


def _job_ids(slurm, cwd, timeout=60):
    """The ids of the queue's jobs submitted from ``cwd``, one test's (``N_i`` for the tasks of array ``N``;
    submitit submits one run alone)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        rows = [line.split() for line in slurm.run("squeue", "-h", "-r", "-o", "%i %Z").stdout.splitlines()]
        ids = [row[0] for row in rows if row[1:] == [str(cwd)]]
        if ids:
            return ids
        time.sleep(0.2)
    raise AssertionError("no job reached the queue")


def _job_id(slurm, cwd):
    """The id of the array submitted from ``cwd``."""
    return min(_job_ids(slurm, cwd)).split("_")[0]


def _worker(job, task):
    """The pid of array task ``task``'s Python process (submitit's), on this machine, the cluster's node."""
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if b"submitit.core._submit" not in argv or not os.path.basename(argv[0]).startswith(b"python"):
                continue  # not the job's Python (srun's command line names it too)
            env = dict(v.split(b"=", 1) for v in (proc / "environ").read_bytes().split(b"\0") if b"=" in v)
        except OSError:
            continue
        if env.get(b"SLURM_ARRAY_JOB_ID") == job.encode() and env.get(b"SLURM_ARRAY_TASK_ID") == str(task).encode():
            return int(proc.name)
    raise AssertionError(f"array task {job}_{task} has no Python process")


def _wait(what, ready, timeout=120):
    clusters.wait_for(what, ready, timeout=timeout)


def test_slurm_jobs_the_scheduler_stops_resume_to_the_uninterrupted_metrics(slurm, shared, tmp_path):
    roots = {name: shared / name for name in ("killed", "cancelled", "timed_out", "whole")}
    dirs = {name: directory([f"out={root}", *LONG]) for name, root in roots.items()}
    # one run in four results roots: array tasks 0..3 in this order, two at a time on the two CPUs
    args = ["train", "-m", *SLURM, f"hydra.sweep.dir={shared}/preempted", "out=" + ",".join(map(str, roots.values())),
            *LONG]
    sweep = shiftkit(*args, env=slurm.env, cwd=tmp_path, wait=False)
    try:
        job = _job_id(slurm, tmp_path)
        _wait("the first checkpoints", lambda: all((dirs[k] / "checkpoint.pt").exists() for k in ("killed", "cancelled")))
        os.kill(_worker(job, 0), signal.SIGKILL)  # the worker dies, as the OOM killer kills it
        slurm.run("scancel", "--signal=TERM", f"{job}_1")  # a cancellation or a preemption
        _wait("the queued jobs", lambda: (dirs["timed_out"] / "checkpoint.pt").exists())
        # SLURM checks time limits every 30 s: hold the run where it is (SIGSTOP) so that it cannot finish
        # first; SLURM continues a job (SIGCONT) as it signals it at its limit
        os.kill(_worker(job, 2), signal.SIGSTOP)
        assert slurm.run("scontrol", "update", f"JobId={job}_2", "TimeLimit=0:01").returncode == 0  # runs out now
        _, err = sweep.communicate(timeout=300)
    finally:
        sweep.kill()
    last = err.splitlines()[-1]
    assert sweep.returncode == 2 and last.startswith(
        f"shiftkit: error: the sweep's launcher stopped: job {job}_0 ended without a result (state FAILED"), err
    assert last.endswith("its other jobs go on, and once they have ended the same command resumes the rest from their "
                         "checkpoints")
    def states():
        return {j[0]: j[2] for j in _jobs(slurm, tmp_path) if j[0].startswith(f"{job}_")}

    _wait("the other jobs", lambda: len(states()) == 4 and not set(states().values()) & ACTIVE, timeout=180)
    states = states()
    assert states[f"{job}_0"] == "FAILED" and states[f"{job}_3"] == "COMPLETED", states
    assert not (dirs["killed"] / "done").exists() and (dirs["killed"] / "checkpoint.pt").exists()
    for name in ("cancelled", "timed_out"):  # stopped by SIGTERM (or the time limit's warning, SIGUSR2)
        rec = record(dirs[name])
        assert rec["status"] == "interrupted" and rec["error"].startswith("stopped by SIG"), (name, rec)
        assert rec["checkpoint"] == "checkpoint.pt" and not (dirs[name] / "done").exists()

    again = shiftkit(*args, env=slurm.env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "1 of 4 runs were already done and were skipped" in again.stderr
    whole = results(dirs["whole"])
    for name in ("killed", "cancelled", "timed_out"):
        assert record(dirs[name])["resumed_from_epoch"] > 0
        assert results(dirs[name]) == whole, name


def test_slurm_job_warned_of_its_time_limit_requeues_itself_and_resumes(slurm, shared, tmp_path):
    """SLURM warns a job near its time limit with submitit's signal (SIGUSR2); with
    ``max_num_timeout=1`` the run records itself, submitit requeues the job, and it resumes there."""
    out, here = shared / "requeued", shared / "requeued-in-process"
    folder = directory([f"out={out}", *SHORT])
    args = ["train", "-m", *SLURM, "hydra.launcher.max_num_timeout=1", f"out={out}", *SHORT]
    sweep = shiftkit(*args, env=slurm.env, cwd=tmp_path, wait=False)
    try:
        (job,) = _job_ids(slurm, tmp_path)
        _wait("the first checkpoint", lambda: (folder / "checkpoint.pt").exists())
        assert slurm.run("scancel", "--signal=USR2", job).returncode == 0  # as SLURM sends it
        _, err = sweep.communicate(timeout=300)
    finally:
        sweep.kill()
    assert sweep.returncode == 0, err
    assert "REQUEUED" in {row[1] for row in slurm.jobs("JobID", "State", "-D") if row[0] == job}
    assert record(folder)["resumed_from_epoch"] > 0 and (folder / "done").exists()
    local = shiftkit("train", f"out={here}", *SHORT, env=os.environ, cwd=tmp_path)
    assert local.returncode == 0, local.stderr
    assert results(folder) == results(here / folder.relative_to(out))


def test_slurm_gpu_sweep_submits_from_a_machine_without_gpus_and_each_job_checks_its_device(slurm, shared, tmp_path):
    """A login node has no GPUs; the nodes that run the jobs may. Here the node has none either: the job
    stops in one line, on the node."""
    res = shiftkit("train", "-m", *SLURM, "seed=0", f"out={shared / 'gpu'}", "train.epochs=1", "model.width=8",
                   "device=cuda", env=slurm.env, cwd=tmp_path)
    assert res.returncode == 2
    _wait("the job's accounting", lambda: len(_jobs(slurm, tmp_path)) == 1, timeout=60)
    assert res.stderr.splitlines()[-1].startswith(
        "shiftkit: error: 1 of 1 runs failed (the first: device 'cuda' is not available here"), res.stderr


def test_slurm_refuses_a_node_local_results_folder_before_submitting(slurm, tmp_path):
    res = shiftkit("train", "-m", *SLURM, "seed=0,1", f"out={tmp_path / 'results'}", *TINY, env=slurm.env, cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert res.stderr.startswith(f"shiftkit: error: out={tmp_path / 'results'} is not shared between the cluster's")
    assert "which each machine has for itself" in res.stderr
    time.sleep(2)  # as long as accounting lags
    assert not _jobs(slurm, tmp_path) and not (tmp_path / "results").exists()  # nor submitit's folder in it


PLUGIN = '''
from shiftkit.losses import register
from shiftkit.losses.basic import CrossEntropy


@register("cluster_ce")
class ClusterCE(CrossEntropy):
    """Cross-entropy under a plugin's name: the workers must import the plugin to build it."""
'''


def test_ray_sweep_through_a_running_cluster_loads_plugins_finds_data_and_matches_in_process(ray_cluster, shared,
                                                                                             tmp_path):
    from test_data_files import _waterbirds

    plugin_dir, data_dir = tmp_path / "plugins", shared / "data"
    plugin_dir.mkdir()
    (plugin_dir / "cluster_plugin.py").write_text(textwrap.dedent(PLUGIN))
    _waterbirds(data_dir / "waterbirds")
    env = {**os.environ, "SHIFTKIT_PLUGINS": "cluster_plugin", "SHIFTKIT_DATA": str(data_dir),
           "PYTHONPATH": os.pathsep.join([str(plugin_dir), os.environ.get("PYTHONPATH", "")])}
    sweep = ["seed=0,1", "loss=cluster_ce", "data=waterbirds", "data.image_size=8", *TINY]
    out, here = shared / "ray", shared / "ray-in-process"
    res = shiftkit("train", "-m", "hydra/launcher=ray", f"hydra.launcher.ray.init.address={ray_cluster.address}",
                   f"out={out}", *sweep, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "Connected to Ray cluster" in res.stderr or "Connecting to existing Ray cluster" in res.stderr
    runs = sorted(p.parent for p in out.rglob("done"))
    assert len(runs) == 2 and sorted(res.stdout.split()) == [str(r) for r in runs]
    assert res.stderr.count("(_run_job pid=") == 2  # each run's line, from the Ray worker that ran it
    local = shiftkit("train", "-m", f"out={here}", *sweep, env=env, cwd=tmp_path)
    assert local.returncode == 0, local.stderr
    for run in runs:
        assert results(run) == results(here / run.relative_to(out))
