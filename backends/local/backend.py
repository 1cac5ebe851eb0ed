"""The local backend: torchrun on this machine.

Each launch runs torchrun (``python -m backends.local.torchrun``: ``torch.distributed.run``
with two of its costs taken out, see that module) with a c10d rendezvous on
127.0.0.1 and a free port; a case asking for ``nodes > 1`` gets that many torchrun agents
(simulated nodes) meeting at the same rendezvous. The agents share one process group of
their own; every process of the launch carries a token in its environment, so a time limit
or Ctrl-C reaches torchrun's workers too (torchrun starts them in sessions of their own):
SIGTERM to all of them, SIGKILL after a grace period, nothing left running. On a machine
with GPUs each launch gets its own slice of ``CUDA_VISIBLE_DEVICES``.

The runner's own death is covered too (``backends.local.ownership``): agents and workers get
SIGKILL from the kernel when their parent dies, each launch is recorded under
``<results root>/.runner/local/``, and ``sweep`` ends what a dead earlier run left behind.
"""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Mapping, Sequence

from backends.local import ownership, proctree
from runner.run.backend import Backend, Capacity, Handle, JobState, Rendered, outcome_from_records
from runner.errors import UsageError
from runner.hookspecs import hookimpl
from runner.records import Launch, LaunchOutcome
from runner.platforms import gpu_count
from backends.local.ports import free_port


class LocalBackend(Backend):
    id = "local"
    description = "torchrun on this machine (c10d rendezvous on 127.0.0.1; simulated nodes as extra agents)"
    #: a poll is one ``waitpid(WNOHANG)`` per agent (a /proc scan once they have all exited):
    #: cheap enough to look often, so a finished launch is seen within 50 ms
    poll_interval = 0.05
    options = {
        "python": "interpreter that runs torchrun (default: the runner's own)",
        "grace": "seconds between SIGTERM and SIGKILL when a launch is stopped (default 10)",
        "cpus": "how many CPU slots the scheduler may fill (default: the machine's cores)",
        "gpus": "how many GPUs to hand out (default: all that nvidia-smi lists)",
    }

    def __init__(self, options: Mapping[str, str] | None = None) -> None:
        super().__init__(options)
        self.python = self.opts.get("python", sys.executable)
        try:
            self.grace = float(self.opts.get("grace", "10"))
            self._cpus = int(self.opts["cpus"]) if "cpus" in self.opts else (os.cpu_count() or 1)
            self._gpus = int(self.opts["gpus"]) if "gpus" in self.opts else gpu_count()
        except ValueError as exc:
            raise UsageError(f"local backend: bad option value: {exc}") from None
        self._free_gpus = list(range(self._gpus))

    def capacity(self) -> Capacity:
        return Capacity(cpus=self._cpus, gpus=self._gpus)

    # -- rendering ------------------------------------------------------------------------------
    def _agent_cmd(self, launch: Launch, node_rank: int, port: int | str) -> list[str]:
        cmd = [self.python, "-m", "backends.local.torchrun",
               "--nnodes", str(launch.nodes), "--nproc-per-node", str(launch.nproc_per_node),
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
               "--rdzv-id", launch.job_name, "--max-restarts", "0",
               "--monitor-interval", "0.1"]   # how soon the agent sees its workers end
        if launch.nodes > 1:
            cmd += ["--rdzv-conf", "join_timeout=120"]
        return cmd + list(launch.worker_argv)

    def _env(self, launch: Launch, node_rank: int, gpu_slice: Sequence[int] | None) -> dict[str, str]:
        env = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        env.update(launch.env)
        env["RUNNER_NODE_RANK"] = str(node_rank)
        if gpu_slice is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpu_slice))
        elif launch.gpus_per_node == 0:
            env["CUDA_VISIBLE_DEVICES"] = ""
        return env

    def render(self, launch: Launch) -> Rendered:
        lines = []
        for node in range(launch.nodes):
            env = self._env(launch, node, None)
            cmd = self._agent_cmd(launch, node, "<free port>")
            prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items()))
            lines.append(f"{prefix} {shlex.join(cmd)}")
        text = "\n".join(lines)
        return Rendered(launch, text, command=tuple(self._agent_cmd(launch, 0, "<free port>")),
                        env=self._env(launch, 0, None))

    # -- running --------------------------------------------------------------------------------
    def submit(self, launch: Launch) -> Handle:
        gpus_needed = launch.gpus_per_node * launch.nodes
        if gpus_needed > len(self._free_gpus):
            raise UsageError(f"{launch.case_id}: needs {gpus_needed} GPUs, {len(self._free_gpus)} free "
                             f"of {self._gpus} on this machine")
        taken, self._free_gpus = self._free_gpus[:gpus_needed], self._free_gpus[gpus_needed:]
        token = uuid.uuid4().hex
        record = None
        if launch.results_root:
            record = ownership.write_record(launch.results_root, ownership.LaunchRecord(
                token=token, owner_pid=os.getpid(), owner_start=ownership.start_time(os.getpid()),
                case_id=launch.case_id, results_dir=launch.results_dir))
        port = free_port()
        logs = Path(launch.results_dir) / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        procs: list[subprocess.Popen] = []
        pgid = 0
        base_env = dict(os.environ)
        for node in range(launch.nodes):
            gslice = taken[node * launch.gpus_per_node:(node + 1) * launch.gpus_per_node] if gpus_needed else None
            env = dict(base_env)
            env.update(self._env(launch, node, gslice))
            env[proctree.TOKEN_VAR] = token
            name = "launcher.log" if launch.nodes == 1 else f"launcher-node{node}.log"
            with open(logs / name, "ab") as out:
                proc = subprocess.Popen(self._agent_cmd(launch, node, port), env=env, stdout=out,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        process_group=pgid, cwd=os.getcwd(),
                                        preexec_fn=ownership.preexec_die_with_runner)
            if pgid == 0:
                pgid = proc.pid
            procs.append(proc)
        return Handle(id=str(procs[0].pid), launch=launch, submitted_at=time.monotonic(),
                      data={"procs": procs, "token": token, "pgid": pgid, "gpus": taken,
                            "term_at": None, "first_exit": None, "record": record})

    def poll(self, handles: Sequence[Handle]) -> Mapping[str, JobState]:
        states: dict[str, JobState] = {}
        now = time.monotonic()
        for h in handles:
            procs: list[subprocess.Popen] = h.data["procs"]
            codes = [p.poll() for p in procs]
            if any(c is not None and c != 0 for c in codes) and h.data["first_exit"] is None:
                h.data["first_exit"] = now
            # one agent failed and the others hang at rendezvous: stop them after a while
            if (h.data["first_exit"] is not None and any(c is None for c in codes)
                    and now - h.data["first_exit"] > 30 and h.data["term_at"] is None):
                self._terminate(h)
            if h.data["term_at"] is not None and now - h.data["term_at"] > self.grace:
                proctree.signal_all([p.pid for p in procs if p.poll() is None], signal.SIGKILL)
                proctree.kill_token(h.data["token"])
            if all(c is not None for c in codes):
                # agents are gone; make sure no worker outlived them
                leftovers = proctree.processes_with_token(h.data["token"])
                if leftovers:
                    if h.data["term_at"] is None:
                        self._terminate(h)
                    elif now - h.data["term_at"] > self.grace:
                        proctree.kill_token(h.data["token"])
                    states[h.id] = JobState(False, "STOPPING")
                    continue
                worst = next((c for c in codes if c != 0), 0)
                if h.data.get("record") is not None:
                    ownership.mark_ended(h.data["record"])
                    h.data["record"] = None
                states[h.id] = JobState(True, "EXITED", f"exit code {worst}")
            else:
                states[h.id] = JobState(False, "RUNNING")
        return states

    def _terminate(self, h: Handle) -> None:
        h.data["term_at"] = time.monotonic()
        try:
            os.killpg(h.data["pgid"], signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
        proctree.signal_all(proctree.processes_with_token(h.data["token"]), signal.SIGTERM)

    def cancel(self, handle: Handle, reason: str) -> None:
        handle.cancel_reason = handle.cancel_reason or reason
        if handle.data["term_at"] is None:
            self._terminate(handle)

    def collect(self, handle: Handle) -> LaunchOutcome:
        procs: list[subprocess.Popen] = handle.data["procs"]
        codes = [p.returncode for p in procs]
        worst = next((c for c in codes if c not in (0, None)), 0)
        self._free_gpus = sorted(self._free_gpus + handle.data["gpus"])
        handle.data["gpus"] = []
        return outcome_from_records(handle.launch, exit_code=worst,
                                    duration=time.monotonic() - handle.submitted_at,
                                    cancel_reason=handle.cancel_reason)

    def sweep(self, results_root: str | os.PathLike[str]) -> list[str]:
        """End leftovers of dead earlier runs of this results root (never anyone else's)."""
        return ownership.sweep(results_root)

    def close(self) -> None:
        pass

    def pooled(self, poolable):
        """This backend with warm worker pools for the launches ``poolable`` accepts
        (backends/local/pool.py); the scheduler calls it unless ``--no-reuse``."""
        from backends.local.pool import PoolingBackend

        return PoolingBackend(self, poolable)


@hookimpl
def runner_register_backends(registry) -> None:
    registry.add(LocalBackend)
