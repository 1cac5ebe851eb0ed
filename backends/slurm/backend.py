"""The Slurm backend: one ``sbatch`` allocation per launch, ``srun`` + torchrun inside it.

The package, by concern: ``options`` (the options and their parsing), ``script`` (the batch
script; what ``--dry-run`` prints), ``head_node`` (the program the script runs on the batch
host to find the rendezvous address), ``status`` (parsing squeue/scontrol/sacct/sinfo),
``classify`` (a finished job -> LaunchOutcome), and this module, which runs the tools.

The head node hosts the rendezvous store (``--rdzv-conf is_host=1`` there, 0 elsewhere), so
the store never lives on a node that may die first, and several "nodes" on one host (the
test cluster) do not race for the port.

``pooled`` wraps the backend in warm worker pools (``runner.run.pooling``): a pool is one
allocation whose ranks run the poolable cases of one shape in turn.

Status is polled for every in-flight job with one ``squeue --json`` call; jobs it no longer
lists are looked up with one ``scontrol -o show job`` call, then ``sacct`` (or ``sacct -c``,
the jobcomp file, when the cluster has no accounting database).
"""
from __future__ import annotations

import getpass
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping, Sequence

from backends.slurm.classify import NOT_FOUND, classify
from backends.slurm.options import OPTION_HELP, SlurmOptions
from backends.slurm.script import SCRIPT_NAME, render_script
from backends.slurm.status import (
    SACCT_FORMAT,
    SlurmJobInfo,
    SlurmParseError,
    accounting_disabled,
    parse_sacct,
    parse_sbatch_parsable,
    parse_scontrol_jobs,
    parse_squeue_json,
    parse_unhealthy_nodes,
)
from runner.errors import UsageError
from runner.hookspecs import hookimpl
from runner.records import Launch, LaunchOutcome
from runner.run.backend import Backend, Capacity, Handle, JobState, OptionSpec, Rendered
from runner.run.lock import owner_alive, owner_tag, root_tag

if TYPE_CHECKING:
    from runner.plugins import BackendRegistry

#: how long a job may be missing from every status source before it counts as gone
MISSING_GRACE_S = 15.0
#: how long squeue may keep failing before in-flight jobs are given up as lost (INFRA)
OUTAGE_GIVE_UP_S = 300.0
#: commands that talk to the controller; a hung controller must not hang the runner
COMMAND_TIMEOUT_S = 60.0
#: job comment ``dist-spec-runner:<results root tag>:<owner tag>`` (found by the startup sweep)
COMMENT_PREFIX = "dist-spec-runner:"


@dataclass
class SlurmJob:
    """What the backend keeps about one submitted job (``Handle.state``)."""

    script: str = ""
    info: SlurmJobInfo | None = None      # the last answer of a status source
    missing_since: float | None = None    # first poll that found it nowhere
    finished_at: float | None = None
    lost: str | None = None               # why it counts as gone without a final state

    @staticmethod
    def of(handle: Handle) -> "SlurmJob":
        if not isinstance(handle.state, SlurmJob):
            handle.state = SlurmJob()
        return handle.state


class SlurmBackend(Backend):
    id: ClassVar[str] = "slurm"
    description: ClassVar[str] = "Slurm: one sbatch allocation per launch, srun + torchrun (c10d) inside"
    poll_interval: ClassVar[float] = 1.0
    options: ClassVar[Mapping[str, OptionSpec]] = OPTION_HELP

    def __init__(self, options: Mapping[str, str] | None = None) -> None:
        super().__init__(options)
        self.config = SlurmOptions.parse(self.opts)
        self._sacct_mode: str | None = None     # "db", "jobcomp" or "none" once known
        self._squeue_error: str | None = None   # why the last status query got no answer
        self._outage_since: float | None = None

    # -- environment ------------------------------------------------------------------------
    def check(self) -> None:
        for tool in ("sbatch", "squeue", "scontrol", "scancel"):
            if shutil.which(tool) is None:
                raise UsageError(f"slurm backend: '{tool}' not found on PATH; install the Slurm client "
                                 "tools or run the runner on a login node of the cluster")

    def capacity(self) -> Capacity:
        return Capacity()   # the cluster queues

    def _run(self, argv: Sequence[str], *, cwd: str | None = None,
             timeout: float = COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(list(argv), capture_output=True, text=True, cwd=cwd, timeout=timeout,
                                  env=os.environ.copy())
        except FileNotFoundError:
            raise UsageError(f"slurm backend: '{argv[0]}' not found on PATH") from None
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(list(argv), 124, "", f"{argv[0]} timed out after {timeout:g}s")

    # -- render / submit --------------------------------------------------------------------
    def script_path(self, launch: Launch) -> Path:
        return Path(launch.results_dir) / SCRIPT_NAME

    def render(self, launch: Launch) -> Rendered:
        text = render_script(launch, self.config)
        script = str(self.script_path(launch))
        return Rendered(launch=launch, text=text, files={SCRIPT_NAME: text},
                        command=("sbatch", "--parsable", script), env=dict(launch.env))

    def submit(self, launch: Launch) -> Handle:
        rendered = self.render(launch)
        results = Path(launch.results_dir)
        (results / "logs").mkdir(parents=True, exist_ok=True)
        script = self.script_path(launch)
        script.write_text(rendered.text)
        script.chmod(0o755)
        tag = []
        if launch.results_root:   # what the startup sweep of a later run finds this job by
            tag = [f"--comment={COMMENT_PREFIX}{root_tag(launch.results_root)}:{owner_tag()}"]
        proc = self._run(["sbatch", "--parsable", *tag, str(script)], cwd=str(results))
        if proc.returncode != 0:
            # e.g. an invalid partition or account; the scheduler reports it on the case
            raise UsageError(f"slurm backend: sbatch failed (exit {proc.returncode}): "
                             f"{(proc.stderr or proc.stdout).strip()[-500:]}")
        try:
            job_id = parse_sbatch_parsable(proc.stdout)
        except SlurmParseError as exc:
            raise UsageError(f"slurm backend: {exc}") from None
        return Handle(id=job_id, launch=launch, submitted_at=time.time(), state=SlurmJob(script=str(script)))

    # -- poll -------------------------------------------------------------------------------
    def query(self, job_ids: Sequence[str]) -> dict[str, SlurmJobInfo]:
        """What Slurm knows about these jobs: squeue --json, then scontrol, then sacct."""
        ids = [str(j) for j in job_ids]
        found: dict[str, SlurmJobInfo] = {}
        if not ids:
            return found
        errors: list[str] = []
        proc = self._run(["squeue", "--json"])
        if proc.returncode == 0:
            try:
                found.update(parse_squeue_json(proc.stdout, ids))
            except SlurmParseError as exc:
                errors.append(str(exc))
        else:
            errors.append("squeue: " + ((proc.stderr or proc.stdout).strip()[-300:] or f"exit {proc.returncode}"))
        missing = [j for j in ids if j not in found]
        if missing:
            # finished jobs squeue no longer lists, or a Slurm whose squeue lacks --json
            argv = ["scontrol", "-o", "show", "job"] + (missing if len(missing) == 1 else [])
            proc = self._run(argv)
            if proc.returncode == 0:
                found.update(parse_scontrol_jobs(proc.stdout, missing))
                errors.clear()     # the controller answered
            elif "invalid job id" in (proc.stderr or "").lower():
                errors.clear()     # it answered: that job is gone
            else:
                errors.append("scontrol: " + ((proc.stderr or proc.stdout).strip()[-300:] or f"exit {proc.returncode}"))
        self._squeue_error = "; ".join(errors) if errors else None
        missing = [j for j in ids if j not in found]
        if missing:
            found.update(self._sacct(missing))
        return found

    def _sacct(self, job_ids: Sequence[str]) -> dict[str, SlurmJobInfo]:
        if self._sacct_mode == "none" or shutil.which("sacct") is None:
            return {}
        base = ["sacct", "-n", "-P", "-X", "-o", SACCT_FORMAT, "-j", ",".join(job_ids)]
        if self._sacct_mode in (None, "db"):
            proc = self._run(base)
            if proc.returncode == 0:
                self._sacct_mode = "db"
                return parse_sacct(proc.stdout, job_ids)
            if not accounting_disabled(proc.stderr + proc.stdout):
                return {}
        proc = self._run(base[:1] + ["-c"] + base[1:])   # the jobcomp text file
        if proc.returncode == 0:
            self._sacct_mode = "jobcomp"
            return parse_sacct(proc.stdout, job_ids)
        self._sacct_mode = "none"
        return {}

    def poll(self, handles: Sequence[Handle]) -> Mapping[str, JobState]:
        infos = self.query([h.id for h in handles])
        now = time.time()
        if self._squeue_error is not None:
            # The controller did not answer (restarting, overloaded): absence means
            # nothing yet. Only a long outage ends the jobs, so the runner cannot hang.
            self._outage_since = self._outage_since or now
        else:
            self._outage_since = None
        outage = now - self._outage_since if self._outage_since else 0.0
        return {h.id: self._job_state(h, SlurmJob.of(h), infos.get(h.id), now, outage) for h in handles}

    def _job_state(self, h: Handle, job: SlurmJob, info: SlurmJobInfo | None, now: float,
                   outage: float) -> JobState:
        if info is not None:
            job.info, job.missing_since = info, None
            if info.done and job.finished_at is None:
                job.finished_at = now
            return JobState(done=info.done, state=info.state, detail=info.describe())
        last_state = job.info.state if job.info else "UNKNOWN"
        if self._squeue_error is not None:
            if outage >= OUTAGE_GIVE_UP_S:
                return self._gone(job, now, f"squeue failing for {outage:.0f}s: {self._squeue_error}")
            return JobState(done=False, state=last_state, detail=f"squeue failed: {self._squeue_error}")
        if job.missing_since is None:
            job.missing_since = now
        if now - max(job.missing_since, h.submitted_at) >= MISSING_GRACE_S:
            return self._gone(job, now, NOT_FOUND)
        return JobState(done=False, state=last_state, detail="not listed yet")

    @staticmethod
    def _gone(job: SlurmJob, now: float, why: str) -> JobState:
        if job.finished_at is None:
            job.finished_at = now
        job.lost = why
        return JobState(done=True, state="UNKNOWN", detail=why)

    # -- cancel -----------------------------------------------------------------------------
    def cancel(self, handle: Handle, reason: str) -> None:
        if handle.cancel_reason is None:
            handle.cancel_reason = reason
        proc = self._run(["scancel", handle.id])
        if proc.returncode != 0 and "invalid job id" not in (proc.stderr or "").lower():
            # the job may already be gone; anything else is worth a line in the launcher log
            _append_launcher_note(handle, f"scancel {handle.id} failed: {proc.stderr.strip()}")

    # -- collect ----------------------------------------------------------------------------
    def collect(self, handle: Handle) -> LaunchOutcome:
        job = SlurmJob.of(handle)
        info = job.info
        if info is None or not info.done:
            info = self.query([handle.id]).get(handle.id, info)
        finished = job.finished_at if job.finished_at is not None else time.time()
        if info is None or info.state == "UNKNOWN":
            self._run(["scancel", handle.id])   # best effort: never leave it running unseen
        return classify(handle.launch, handle.id, info, duration=finished - handle.submitted_at,
                        cancel_reason=handle.cancel_reason, lost=job.lost,
                        time_margin=self.config.time_margin, unhealthy_nodes=self.unhealthy_nodes_reason)

    def sweep(self, results_root: Any) -> list[str]:
        """scancel this user's jobs tagged with this results root by another (dead) runner."""
        if shutil.which("squeue") is None:
            return []
        mine = f"{COMMENT_PREFIX}{root_tag(results_root)}:"
        proc = self._run(["squeue", "--noheader", f"--user={getpass.getuser()}", "--format=%i|%k"])
        if proc.returncode != 0:
            return []
        lines = []
        for row in proc.stdout.splitlines():
            job_id, _, comment = row.strip().partition("|")
            owner = comment[len(mine):]
            if comment.startswith(mine) and owner != owner_tag() and not owner_alive(owner):
                self._run(["scancel", job_id])
                lines.append(f"scancelled Slurm job {job_id} left by an earlier run of this results root "
                             f"(owner {owner})")
        return lines

    def pooled(self, poolable: Callable[[Launch], bool]) -> Backend:
        """This backend with warm worker pools (``runner.run.pooling``): one allocation serves
        the poolable cases of its shape in turn, its ``--time`` the sum of their timeouts up
        to ``pool_time``; the scheduler calls it unless ``--no-reuse`` (``pools=0``: no pools)."""
        if self.config.pools is None:
            return self
        from runner.run.pooling import PoolingBackend

        return PoolingBackend(self, poolable, self.config.pools)

    def unhealthy_nodes_reason(self, nodes: str) -> str | None:
        """'node n2 is down (Not responding)' when a node of the job is down or failing."""
        if not nodes:
            return None
        try:
            proc = self._run(["sinfo", "-h", "-N", "-n", nodes, "-o", "%N|%T|%E"])
        except UsageError:      # no sinfo here: nothing more to learn
            return None
        if proc.returncode != 0:
            return None
        bad = parse_unhealthy_nodes(proc.stdout)
        if not bad:
            return None
        return "; ".join(f"node {name} is {state}" + (f" ({why})" if why else "") for name, state, why in bad)


def _append_launcher_note(handle: Handle, line: str) -> None:
    try:
        with open(Path(handle.launch.results_dir) / "logs" / "runner-slurm.log", "a") as fh:
            fh.write(line.rstrip() + "\n")
    except OSError:
        pass


@hookimpl
def runner_register_backends(registry: "BackendRegistry") -> None:
    registry.add(SlurmBackend)
