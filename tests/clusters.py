"""Real clusters for the tests, started on this machine: a single-node SLURM (Debian's ``slurmctld``,
``slurmd`` and ``slurmdbd``, with ``munge`` for authentication and MariaDB for ``sacct``'s accounting)
and a local Ray cluster (``ray start --head`` on 127.0.0.1). ``make test`` installs the SLURM packages
where it runs as root with apt (``make clusters``); Ray comes with the ``test`` extra.

Each cluster lives in one folder (configs, sockets, state, logs) on free ports, is started once per test
session and stopped at its end. Where the engines are missing, :func:`missing` says why and the tests skip;
with ``SHIFTKIT_REQUIRE_CLUSTERS`` set (as CI sets it) they fail instead.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import pytest

SLURM_PROGRAMS = ["slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd", "mariadb-install-db", "mariadb",
                  "sbatch", "sacct", "squeue", "scancel", "sinfo", "sacctmgr", "scontrol"]
#: Where Debian's munge package puts its key (a fresh one is made where it cannot be read).
MUNGE_KEY = Path("/etc/munge/munge.key")
#: The daemons' pid files in a cluster's folder, in the order they are stopped.
PID_FILES = ["slurmd.pid", "slurmctld.pid", "slurmdbd.pid", "mariadb.pid", "munge/munged.pid"]


def _which(name: str) -> Optional[str]:
    return shutil.which(name) or next((str(p) for p in (Path("/usr/sbin") / name, Path("/sbin") / name)
                                       if p.exists()), None)


def missing_slurm() -> Optional[str]:
    """Why a SLURM cluster cannot be started here (None: it can)."""
    absent = [name for name in SLURM_PROGRAMS if _which(name) is None]
    if absent:
        return f"SLURM is not installed ({', '.join(absent)} missing): run 'make clusters' as root"
    if os.geteuid() != 0:
        return "the test SLURM cluster runs its daemons as root"
    return None


def missing_ray() -> Optional[str]:
    """Why a Ray cluster cannot be started here (None: it can)."""
    import importlib.util

    if importlib.util.find_spec("ray") is None or importlib.util.find_spec("hydra_plugins.hydra_ray_launcher") is None:
        return "Ray and its Hydra launcher are not installed: pip install 'shiftkit[ray]'"
    return None


def require(reason: Optional[str]) -> None:
    """Skip with ``reason`` (fail where ``SHIFTKIT_REQUIRE_CLUSTERS`` is set); nothing if None."""
    if reason is None:
        return
    if os.environ.get("SHIFTKIT_REQUIRE_CLUSTERS"):
        pytest.fail(f"SHIFTKIT_REQUIRE_CLUSTERS is set but {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, ready, timeout: float = 60.0, log: Optional[Path] = None) -> None:
    """Poll ``ready()`` until it is true; fail naming ``what`` (and the end of ``log``) after ``timeout``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if ready():
            return
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-2000:] if log is not None and log.exists() else ""
    raise RuntimeError(f"{what} did not come up in {timeout:.0f} s\n{tail}")


def _quiet(*cmd: str, env: Optional[Dict[str, str]] = None, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=env, check=check, timeout=60)


class Slurm:
    """A single-node SLURM cluster in ``root``: node ``localhost`` with ``cpus`` CPUs in partition
    ``debug``, accounting through slurmdbd into a private MariaDB (so ``sacct`` works, as submitit needs)."""

    def __init__(self, root: Path, cpus: int = 2):
        self.root, self.cpus = Path(root), cpus
        self.conf = self.root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def __enter__(self) -> "Slurm":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def path(self, name: str) -> str:
        return str(self.root / name)

    def start(self) -> None:
        r = self.root
        for sub in ("state", "spool", "munge", "run", "db"):
            (r / sub).mkdir(parents=True, exist_ok=True)
        self._munge()
        self._mariadb()
        ports = {name: free_port() for name in ("dbd", "ctld", "slurmd")}
        self._write_configs(ports)
        self._daemon("slurmdbd", [_which("slurmdbd")], "slurmdbd.pid", "slurmdbd.log",
                     lambda: self._listening(ports["dbd"]))
        self._daemon("slurmctld", [_which("slurmctld")], "slurmctld.pid", "slurmctld.log",
                     lambda: self._run_ok("sinfo", "-h"))
        self._daemon("slurmd", [_which("slurmd"), "-N", "localhost"], "slurmd.pid", "slurmd.log",
                     lambda: self._node_state() in {"idle", "mixed", "allocated"})
        wait_for("the cluster's accounting", lambda: "shiftkit" in self.run("sacctmgr", "-n", "-P", "list",
                                                                            "cluster", "format=cluster").stdout,
                 log=r / "slurmdbd.log")

    def _munge(self) -> None:
        key = self.root / "munge" / "munge.key"
        if MUNGE_KEY.is_file() and os.access(MUNGE_KEY, os.R_OK):
            shutil.copyfile(MUNGE_KEY, key)
        else:
            key.write_bytes(os.urandom(1024))
        os.chmod(self.root / "munge", 0o700)  # munged insists on a private key and a public socket folder
        os.chmod(key, 0o600)
        os.chmod(self.root / "run", 0o755)
        self.munge_socket = self.path("run/munge.socket")
        _quiet(_which("munged"), f"--key-file={key}", f"--socket={self.munge_socket}",
               f"--pid-file={self.path('munge/munged.pid')}", f"--log-file={self.path('munge/munged.log')}",
               f"--seed-file={self.path('munge/munged.seed')}")
        wait_for("munged", lambda: os.path.exists(self.munge_socket), log=self.root / "munge" / "munged.log")

    def _mariadb(self) -> None:
        data, self.db_socket, self.db_port = self.root / "db", self.path("mysql.sock"), free_port()
        _quiet(_which("mariadb-install-db"), f"--datadir={data}", "--auth-root-authentication-method=normal",
               "--skip-test-db", "--user=root")
        with open(self.root / "mariadb.out", "w") as log:
            subprocess.Popen([_which("mariadbd"), "--no-defaults", f"--datadir={data}", f"--socket={self.db_socket}",
                              f"--port={self.db_port}", "--bind-address=127.0.0.1", "--user=root",
                              f"--pid-file={self.path('mariadb.pid')}", f"--log-error={self.path('mariadb.log')}"],
                             stdout=log, stderr=log, start_new_session=True)
        wait_for("MariaDB", lambda: os.path.exists(self.db_socket) and self._listening(self.db_port),
                 log=self.root / "mariadb.log")
        _quiet(_which("mariadb"), "-S", self.db_socket, "-u", "root", "-e",
               "create user 'slurm'@'127.0.0.1' identified by 'slurm'; grant all on *.* to 'slurm'@'127.0.0.1';")

    def _write_configs(self, ports: Dict[str, int]) -> None:
        munge = f"AuthType=auth/munge\nAuthInfo=socket={self.munge_socket}\n"
        dbd = self.root / "slurmdbd.conf"  # slurmdbd reads it beside $SLURM_CONF, and only if private
        dbd.write_text(munge + f"""DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={ports['dbd']}
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={self.db_port}
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct
PidFile={self.path('slurmdbd.pid')}
LogFile={self.path('slurmdbd.log')}
""")
        os.chmod(dbd, 0o600)
        # cred_expire: how long a requeued job waits before it may start again (default 120 s)
        self.conf.write_text(munge.replace("\nAuthInfo=", "\nAuthInfo=cred_expire=10,") + f"""ClusterName=shiftkit
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ports['ctld']}
SlurmdPort={ports['slurmd']}
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={self.path('state')}
SlurmdSpoolDir={self.path('spool')}
SlurmctldPidFile={self.path('slurmctld.pid')}
SlurmdPidFile={self.path('slurmd.pid')}
SlurmctldLogFile={self.path('slurmctld.log')}
SlurmdLogFile={self.path('slurmd.log')}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={ports['dbd']}
AccountingStoragePass={self.munge_socket}
JobAcctGatherType=jobacct_gather/none
KillWait=5
MinJobAge=5
MailProg=/bin/true
MpiDefault=none
NodeName=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
""")

    def _daemon(self, name: str, cmd: List[str], pid: str, log: str, ready) -> None:
        _quiet(*cmd, env=self.env)  # each daemonizes itself
        wait_for(name, ready, log=self.root / log)

    def _listening(self, port: int) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    def _run_ok(self, *cmd: str) -> bool:
        return self.run(*cmd).returncode == 0

    def _node_state(self) -> str:
        return self.run("sinfo", "-h", "-N", "-o", "%T").stdout.strip().rstrip("*~#")

    def run(self, *cmd: str) -> subprocess.CompletedProcess:
        """A SLURM command against this cluster."""
        return _quiet(*cmd, env=self.env, check=False)

    def jobs(self, *fields: str) -> List[List[str]]:
        """``sacct``'s rows (allocations only) for every job of this session, as lists of ``fields``; a
        field ``-D`` asks for every run of a requeued job too."""
        flags = [f for f in fields if f.startswith("-")]
        fields = tuple(f for f in fields if not f.startswith("-"))
        out = self.run("sacct", "-n", "-X", "-P", "-a", "-S", "now-1days", *flags, "-o", ",".join(fields)).stdout
        return [line.split("|") for line in out.splitlines() if line]

    def stop(self) -> None:
        """Cancel every job (their processes with them), then stop the daemons."""
        if (self.root / "slurmctld.pid").exists():
            self.run("scancel", "--full", "--user", str(os.geteuid()))
            end = time.monotonic() + 15
            while time.monotonic() < end and self.run("squeue", "-h").stdout.strip():
                time.sleep(0.2)
        for name in PID_FILES:
            pid_file = self.root / name
            try:
                pid = int(pid_file.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            end = time.monotonic() + 15
            while time.monotonic() < end and _alive(pid):
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child of ours counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


class Ray:
    """A local Ray cluster: ``ray start --head`` on 127.0.0.1 with ``cpus`` CPUs, its files in ``root``."""

    def __init__(self, root: Path, cpus: int = 2):
        self.root, self.cpus = Path(root), cpus
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.ray = str(Path(sys.executable).parent / "ray")
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}

    def __enter__(self) -> "Ray":
        self.root.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [self.ray, "start", "--head", f"--port={self.port}", "--node-ip-address=127.0.0.1",
             f"--num-cpus={self.cpus}", "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats",
             f"--temp-dir={self.root}"],
            capture_output=True, text=True, env=self.env, timeout=120)
        if done.returncode != 0:
            self.__exit__()
            raise RuntimeError(f"ray start failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        return self

    def __exit__(self, *exc) -> None:
        subprocess.run([self.ray, "stop", "--force"], capture_output=True, env=self.env, timeout=120)
