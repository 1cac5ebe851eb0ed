"""A real Slurm cluster on this host for the tests: munge, a controller and two slurmd nodes.

What it does (facts in ``shared/notes/local-slurm.md``):

- installs Debian's ``slurmctld slurmd slurm-client munge`` when missing (root only:
  ``apt-get update`` once, then ``apt-get install -y --no-install-recommends``);
- writes a ``slurm.conf`` into a scratch dir: free TCP ports, no accounting database
  (``sacct -c`` reads the jobcomp text file), linuxproc + task/none (no cgroups), two nodes
  ``n1``/``n2`` served by two ``slurmd -N`` daemons on this host, a short ``SlurmdTimeout``
  so a killed node is declared down within seconds, and two fake GPUs per node (character
  devices: jobs asking for ``--gpus-per-node`` are scheduled and get CUDA_VISIBLE_DEVICES);
- starts a *private* munged (its own key, socket and pid file in the scratch dir, so it
  never touches a system munged another session relies on), then slurmctld, then the
  slurmd daemons, and waits until ``sinfo`` shows the nodes idle;
- stops exactly the daemons it started, by the pids they wrote, and kills nothing else.

Clients find the cluster through ``SlurmCluster.env`` (``SLURM_CONF``); the results dirs live
on the local disk, which is the "shared filesystem" of a one-host cluster.

Run by hand: ``python tests/slurm_cluster.py [SCRATCH]`` starts a cluster, prints the
``export SLURM_CONF=...`` line and stops it on Enter.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from fakes.net import free_ports

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
REQUIRED_BINARIES = ("slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "munged", "munge", "unmunge")
NODE_NAMES = ("n1", "n2")
_SBIN_DIRS = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")


class ClusterUnavailable(RuntimeError):
    """Slurm cannot be installed or started on this machine (the fixture skips, or fails in CI)."""


def which(name: str) -> str | None:
    """shutil.which that also looks in sbin dirs (the daemons live there; PATH may lack them)."""
    found = shutil.which(name)
    if found:
        return found
    for d in _SBIN_DIRS:
        candidate = Path(d) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def missing_binaries() -> list[str]:
    return [b for b in REQUIRED_BINARIES if which(b) is None]


def ensure_installed(timeout: float = 600.0) -> None:
    """Install the Debian packages when a binary is missing; ClusterUnavailable when that fails."""
    if not missing_binaries():
        return
    if os.geteuid() != 0:
        raise ClusterUnavailable(f"Slurm binaries missing ({', '.join(missing_binaries())}) and not root to install them")
    if which("apt-get") is None:
        raise ClusterUnavailable("Slurm binaries missing and apt-get is not available")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    steps: Sequence[Sequence[str]] = (
        ("apt-get", "update"),
        ("apt-get", "install", "-y", "--no-install-recommends", *PACKAGES),
    )
    for argv in steps:
        proc = subprocess.run(list(argv), env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-10:])
            raise ClusterUnavailable(f"{' '.join(argv)} failed (exit {proc.returncode}):\n{tail}")
    still = missing_binaries()
    if still:
        raise ClusterUnavailable(f"installed {' '.join(PACKAGES)} but still missing: {', '.join(still)}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is not alive for our purposes
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _wait(predicate, timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise ClusterUnavailable(f"timed out after {timeout:g}s waiting for {what}")


def _environ_of(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    out = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            out[key.decode(errors="replace")] = value.decode(errors="replace")
    return out


def _unix_socket_paths() -> dict[str, str]:
    """Socket inode -> path of every bound unix socket (/proc/net/unix)."""
    out = {}
    try:
        lines = Path("/proc/net/unix").read_text().splitlines()[1:]
    except OSError:
        return out
    for line in lines:
        parts = line.split()
        if len(parts) >= 8:
            out[parts[6]] = parts[7]
    return out


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


@dataclass
class SlurmCluster:
    """One controller and ``nodes`` slurmd daemons on this host, configured under ``scratch``."""

    scratch: Path
    nodes: tuple[str, ...] = NODE_NAMES
    cpus_per_node: int = 0          # 0: this machine's CPU count (at least 2)
    slurmd_timeout: int = 5         # seconds until a silent node is declared DOWN
    gpus_per_node: int = 2          # fake GPUs (scheduling only); 0 when they cannot be made
    env: dict[str, str] = field(default_factory=dict)
    _pids: dict[str, int] = field(default_factory=dict)
    _node_ports: dict[str, int] = field(default_factory=dict)

    # -- paths ----------------------------------------------------------------------------
    @property
    def conf(self) -> Path:
        return self.scratch / "etc" / "slurm.conf"

    @property
    def munge_socket(self) -> Path:
        return self.scratch / "munge" / "munge.socket"

    def log(self, daemon: str) -> Path:
        """Log file of 'slurmctld', 'munged' or a node name."""
        if daemon == "slurmctld":
            return self.scratch / "log" / "slurmctld.log"
        if daemon == "munged":
            return self.scratch / "munge" / "munged.log"
        return self.scratch / "log" / f"slurmd-{daemon}.log"

    def _pidfile(self, daemon: str) -> Path:
        if daemon == "slurmctld":
            return self.scratch / "run" / "slurmctld.pid"
        if daemon == "munged":
            return self.scratch / "munge" / "munged.pid"
        return self.scratch / "run" / f"slurmd-{daemon}.pid"

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> "SlurmCluster":
        ensure_installed()
        self.scratch = Path(self.scratch).resolve()
        for sub in ("etc", "state", "spool", "log", "run", "munge", "jobs"):
            (self.scratch / sub).mkdir(parents=True, exist_ok=True)
        self.env = {"SLURM_CONF": str(self.conf)}
        try:
            self._start_munge()
            self._write_conf()
            self._start_controller()
            for node in self.nodes:
                self.start_node(node)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_munge(self) -> None:
        mdir = self.scratch / "munge"
        os.chmod(mdir, 0o700)
        key = mdir / "munge.key"
        if not key.exists():
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
            with os.fdopen(fd, "wb") as fh:
                fh.write(os.urandom(1024))
        argv = [which("munged") or "munged", "--force", f"--socket={self.munge_socket}",
                f"--key-file={key}", f"--pid-file={self._pidfile('munged')}",
                f"--log-file={self.log('munged')}", f"--seed-file={mdir / 'munged.seed'}"]
        self._daemon("munged", argv)

        def ready() -> bool:
            enc = subprocess.run([which("munge") or "munge", "-n", f"--socket={self.munge_socket}"],
                                 capture_output=True)
            if enc.returncode != 0:
                return False
            dec = subprocess.run([which("unmunge") or "unmunge", f"--socket={self.munge_socket}"],
                                 input=enc.stdout, capture_output=True)
            return dec.returncode == 0

        _wait(ready, 15, "munged to answer")

    def _make_fake_gpus(self) -> None:
        """Character devices (/dev/null's numbers) Slurm can hand out as GPUs: jobs asking for
        --gpus-per-node get them allocated and CUDA_VISIBLE_DEVICES set; nothing more."""
        if self.gpus_per_node <= 0:
            return
        dev = self.scratch / "dev"
        dev.mkdir(exist_ok=True)
        try:
            for node in self.nodes:
                for i in range(self.gpus_per_node):
                    path = dev / f"{node}-gpu{i}"
                    if not path.exists():
                        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        except (OSError, AttributeError):
            self.gpus_per_node = 0   # no CAP_MKNOD: a cluster without GPUs

    def _write_conf(self) -> None:
        cpus = self.cpus_per_node or max(2, os.cpu_count() or 2)
        self._make_fake_gpus()
        ctld_port, *node_ports = free_ports(1 + len(self.nodes))
        self._node_ports = dict(zip(self.nodes, node_ports))
        host = socket.gethostname().split(".")[0]
        s = self.scratch
        lines = [
            "# written by tests/slurm_cluster.py: a test cluster on one host",
            "ClusterName=runnertest",
            "SlurmctldHost=localhost(127.0.0.1)",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"SlurmctldPort={ctld_port}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            f"StateSaveLocation={s / 'state'}",
            f"SlurmdSpoolDir={s / 'spool'}/slurmd-%n",
            f"SlurmctldPidFile={self._pidfile('slurmctld')}",
            f"SlurmdPidFile={s / 'run'}/slurmd-%n.pid",
            f"SlurmctldLogFile={self.log('slurmctld')}",
            f"SlurmdLogFile={s / 'log'}/slurmd-%n.log",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "MpiDefault=none",
            "MailProg=/bin/true",
            "ReturnToService=2",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/filetxt",
            f"JobCompLoc={s / 'log' / 'jobcomp.txt'}",
            "MinJobAge=3600",
            "KillWait=5",
            "InactiveLimit=0",
            f"SlurmdTimeout={self.slurmd_timeout}",
            "SchedulerParameters=batch_sched_delay=0,sched_min_interval=0",
        ]
        gres = ""
        if self.gpus_per_node:
            lines.append("GresTypes=gpu")
            gres = f" Gres=gpu:fake:{self.gpus_per_node}"
            last = self.gpus_per_node - 1
            (self.scratch / "etc" / "gres.conf").write_text("".join(
                f"NodeName={node} Name=gpu Type=fake File={s / 'dev'}/{node}-gpu[0-{last}]\n"
                for node in self.nodes))
        for node, port in self._node_ports.items():
            lines.append(f"NodeName={node} NodeHostname={host} NodeAddr=127.0.0.1 Port={port} "
                         f"CPUs={cpus} RealMemory=1000{gres} State=UNKNOWN")
        lines.append(f"PartitionName=debug Nodes={','.join(self.nodes)} Default=YES MaxTime=INFINITE State=UP")
        self.conf.write_text("\n".join(lines) + "\n")

    def _start_controller(self) -> None:
        self._daemon("slurmctld", [which("slurmctld") or "slurmctld", "-f", str(self.conf)])
        _wait(lambda: "UP" in self.run("scontrol", "ping").stdout, 20, "slurmctld to answer 'scontrol ping'")

    def start_node(self, name: str, timeout: float = 30.0) -> None:
        """Start (or restart) the slurmd of one node and wait until the node is usable."""
        if name not in self.nodes:
            raise ValueError(f"unknown node {name!r}; nodes: {self.nodes}")
        self._daemon(name, [which("slurmd") or "slurmd", "-f", str(self.conf), "-N", name])
        _wait(lambda: self.node_state(name) in ("idle", "mixed", "allocated"), timeout,
              f"node {name} to become idle (now {self.node_state(name)!r})", interval=0.3)

    def stop_node(self, name: str) -> None:
        """Simulate a node failure: SIGKILL its slurmd and every job process running "on" it.

        The controller stops hearing from the node and declares it DOWN after
        ``slurmd_timeout`` seconds; jobs using it end as NODE_FAIL.
        """
        pid = self._pids.pop(name, None)
        # Freeze everything first so no process of the node can report the others' death
        # (a real node that loses power says nothing), then kill them all.
        victims = ([pid] if pid is not None and _pid_alive(pid) else []) + self.node_processes(name)
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for victim in victims:
                try:
                    os.kill(victim, sig)
                except ProcessLookupError:
                    pass
        if pid is not None:
            _wait(lambda: not _pid_alive(pid), 10, f"slurmd {name} to die")

    def node_processes(self, name: str) -> list[int]:
        """Processes of jobs placed on one node: the slurmstepd daemons serving it (found by
        their unix sockets in the node's spool dir) and the tasks (SLURMD_NODENAME=name)."""
        me = os.getpid()
        spool = str(self.scratch / "spool" / f"slurmd-{name}") + "/"
        socket_paths = _unix_socket_paths()
        out = []
        for pid in _all_pids():
            if pid == me:
                continue
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if cmd.startswith(b"slurmstepd"):
                try:
                    fds = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
                except OSError:
                    continue
                inodes = [t[len("socket:["):-1] for t in fds if t.startswith("socket:[")]
                if any(socket_paths.get(i, "").startswith(spool) for i in inodes):
                    out.append(pid)
                continue
            env = _environ_of(pid)
            if env.get("SLURMD_NODENAME") == name and env.get("SLURM_CONF") == str(self.conf):
                out.append(pid)
        return out

    def stop(self) -> None:
        """Stop the daemons this object started (slurmd, slurmctld, munged), by pid."""
        for name in list(self.nodes) + ["slurmctld", "munged"]:
            pid = self._pids.pop(name, None)
            if pid is None or not _pid_alive(pid):
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _pid_alive(pid):
                time.sleep(0.1)
            if _pid_alive(pid):
                os.kill(pid, signal.SIGKILL)

    def __enter__(self) -> "SlurmCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- helpers --------------------------------------------------------------------------
    def _daemon(self, name: str, argv: list[str]) -> None:
        """Run a self-daemonizing program and record the pid from its pid file."""
        pidfile = self._pidfile(name)
        old = _read_pid(pidfile)
        if old is not None and _pid_alive(old) and name in self._pids:
            raise ClusterUnavailable(f"{name} already running (pid {old})")
        pidfile.unlink(missing_ok=True)
        proc = subprocess.run(argv, env=self.client_env(), capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise ClusterUnavailable(f"{' '.join(argv)} failed (exit {proc.returncode}): "
                                     f"{(proc.stderr or proc.stdout).strip()[-500:]}\n{self._log_tail(name)}")

        def started() -> bool:
            pid = _read_pid(pidfile)
            return pid is not None and _pid_alive(pid)

        try:
            _wait(started, 15, f"{name} to write {pidfile}")
        except ClusterUnavailable as exc:
            raise ClusterUnavailable(f"{exc}\n{self._log_tail(name)}") from None
        self._pids[name] = _read_pid(pidfile)  # type: ignore[assignment]

    def _log_tail(self, name: str, lines: int = 15) -> str:
        try:
            return "\n".join(self.log(name).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def client_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """``base`` (default: os.environ) plus SLURM_CONF, with the sbin dirs on PATH."""
        env = dict(os.environ if base is None else base)
        env.update(self.env)
        path = env.get("PATH", "")
        for d in _SBIN_DIRS:
            if d not in path.split(os.pathsep):
                path = path + os.pathsep + d if path else d
        env["PATH"] = path
        return env

    def run(self, *argv: str, check: bool = False, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run a Slurm client command against this cluster."""
        return subprocess.run(list(argv), env=self.client_env(), capture_output=True, text=True,
                              timeout=timeout, check=check)

    def node_state(self, name: str) -> str:
        proc = self.run("sinfo", "-h", "-n", name, "-o", "%T")
        return proc.stdout.strip().split("\n")[0].rstrip("*~#!%$@^-") if proc.returncode == 0 else ""

    def queue(self) -> list[str]:
        """Job ids still in squeue (pending, running or completing)."""
        proc = self.run("squeue", "-h", "-o", "%i")
        return proc.stdout.split()

    def pids(self) -> dict[str, int]:
        return dict(self._pids)


def main(argv: list[str]) -> int:
    scratch = Path(argv[0]) if argv else Path(tempfile.mkdtemp(prefix="slurm-cluster-"))
    with SlurmCluster(scratch) as cluster:
        print(f"export SLURM_CONF={cluster.conf}")
        print(f"daemons: {cluster.pids()}")
        print(cluster.run("sinfo").stdout)
        try:
            input("press Enter to stop the cluster ")
        except EOFError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
