"""The Slurm backend: one ``sbatch`` allocation per launch, ``srun`` + torchrun inside it.

A launch becomes a batch script (``render``; what ``--dry-run`` prints)::

    #SBATCH --job-name/--nodes/--ntasks-per-node=1/--gpus-per-node/--time/--output ...
    export <launch env>
    HEAD_NODE / HEAD_IP / RDZV_PORT       resolved on the batch host (= the first node)
    srun ... python -m torch.distributed.run --nnodes N --nproc-per-node P
         --rdzv-backend c10d --rdzv-endpoint $HEAD_IP:$RDZV_PORT --rdzv-id $SLURM_JOB_ID
         -m runner.worker <results_dir>/launch.json

The head node hosts the rendezvous store (``--rdzv-conf is_host=1`` there, 0 elsewhere), so
the store never lives on a node that may die first, and several "nodes" on one host (the
test cluster) do not race for the port.

Status is polled for every in-flight job with one ``squeue --json`` call; jobs it no longer
lists are looked up with one ``scontrol -o show job`` call, then ``sacct`` (or ``sacct -c``,
the jobcomp file, when the cluster has no accounting database). The completion records in
the results dir decide COMPLETED vs ERROR; the scheduler's state only adds what the
workload cannot know: node failure, preemption, a cancel from outside the runner (INFRA),
or Slurm's own time limit (TIMEOUT).

Every string that comes from a spec reaches the script through ``shlex.quote`` (the shell
body and the ``#SBATCH`` lines, which sbatch splits with shell-like quoting); job names are
sanitised by ``runner.run.backend.job_name``; values that could break a line are rejected.
"""
from __future__ import annotations

import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar, Mapping, Sequence

from backends.slurm_status import (
    INFRA_STATES,
    SACCT_FORMAT,
    SlurmJobInfo,
    SlurmParseError,
    accounting_disabled,
    parse_sacct,
    parse_sbatch_parsable,
    parse_scontrol_jobs,
    parse_squeue_json,
)
from runner.run.backend import Backend, Capacity, Handle, JobState, Rendered, outcome_from_records
from runner.errors import UsageError
from runner.hookspecs import hookimpl
from runner.records import Launch, LaunchOutcome, Outcome

SCRIPT_NAME = "slurm-job.sh"
LAUNCHER_LOG = "launcher-%j.log"
#: how long a job may be missing from every status source before it counts as gone
MISSING_GRACE_S = 15.0
#: how long squeue may keep failing before in-flight jobs are given up as lost (INFRA)
OUTAGE_GIVE_UP_S = 300.0
#: commands that talk to the controller; a hung controller must not hang the runner
COMMAND_TIMEOUT_S = 60.0

_SLURM_NAME = re.compile(r"^[A-Za-z0-9_.,:+@=-]+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# Prints "<head ip> <port>" on the batch host. The hostname's address unless it is a
# loopback one (Debian maps the hostname to 127.0.1.1), then the address of the interface
# with a route out (a UDP connect sends nothing), then loopback (one-host clusters).
_HEAD_SNIPPET = """\
import socket, sys
def ip():
    try:
        addr = socket.gethostbyname(socket.gethostname())
        if not addr.startswith("127."):
            return addr
    except OSError:
        pass
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))
            return s.getsockname()[0]
    except OSError:
        return "127.0.0.1"
def free_port():
    # below the ephemeral range, so no outgoing connection takes it before torchrun binds it
    import random
    try:
        lo = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    except (OSError, ValueError, IndexError):
        lo = 32768
    for _ in range(200):
        p = random.SystemRandom().randrange(10000 if lo > 12000 else 1024, lo)
        with socket.socket() as s:
            try:
                s.bind(("", p))
                return p
            except OSError:
                continue
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]
port = int(sys.argv[1]) or free_port()
print(ip(), port)
"""

# Runs on every node under srun: the head node hosts the rendezvous store.
_NODE_WRAPPER = ('if [ "${SLURMD_NODENAME:-}" = "$RUNNER_HEAD_NODE" ]; then h=1; else h=0; fi; '
                 'py=$1; shift; exec "$py" -m torch.distributed.run --rdzv-conf "is_host=$h" "$@"')


@dataclass(frozen=True)
class SlurmOptions:
    """Validated backend options (``--backend-opt key=value`` or the config file)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_margin: int = 60
    python: str = sys.executable
    container_image: str | None = None
    container_mounts: str | None = None
    extra_sbatch: tuple[str, ...] = ()
    rdzv_port: int = 0                      # 0: a free port picked on the head node
    env_passthrough: str = "ALL"            # sbatch --export: ALL, NONE or NAME,NAME,...

    @classmethod
    def parse(cls, opts: Mapping[str, str]) -> "SlurmOptions":
        unknown = sorted(set(opts) - set(SlurmBackend.options))
        if unknown:
            raise UsageError(f"slurm backend: unknown option '{unknown[0]}'; known: {', '.join(sorted(SlurmBackend.options))}")
        values: dict[str, object] = {}
        for key in ("partition", "account", "qos"):
            value = opts.get(key)
            if value is None or value == "":
                continue
            if not _SLURM_NAME.match(value):
                raise UsageError(f"slurm backend: option '{key}': {value!r} is not a valid Slurm name "
                                 "(letters, digits and _ . , : + @ = - only)")
            values[key] = value
        for key, lo, hi in (("time_margin", 0, 7 * 24 * 3600), ("rdzv_port", 0, 65535)):
            if key in opts:
                try:
                    number = int(str(opts[key]).strip())
                except ValueError:
                    raise UsageError(f"slurm backend: option '{key}': {opts[key]!r} is not an integer") from None
                if not lo <= number <= hi:
                    raise UsageError(f"slurm backend: option '{key}': {number} is outside {lo}..{hi}")
                values[key] = number
        for key in ("python", "container_image", "container_mounts"):
            value = opts.get(key)
            if value is None or value == "":
                continue
            if "\n" in value or "\r" in value or "\0" in value:
                raise UsageError(f"slurm backend: option '{key}' must be one line")
            values[key] = value
        if opts.get("extra_sbatch"):
            try:
                extra = tuple(shlex.split(opts["extra_sbatch"]))
            except ValueError as exc:
                raise UsageError(f"slurm backend: option 'extra_sbatch': {exc}") from None
            for arg in extra:
                if "\n" in arg or "\r" in arg or "\0" in arg:
                    raise UsageError("slurm backend: option 'extra_sbatch': arguments must be one line")
                if not arg.startswith("-"):
                    raise UsageError(f"slurm backend: option 'extra_sbatch': {arg!r} is not a flag "
                                     "(write --flag=value)")
            values["extra_sbatch"] = extra
        if opts.get("env_passthrough"):
            raw = opts["env_passthrough"].strip()
            if raw.upper() in ("ALL", "NONE"):
                values["env_passthrough"] = raw.upper()
            else:
                names = [n.strip() for n in raw.split(",") if n.strip()]
                bad = [n for n in names if not _ENV_NAME.match(n)]
                if bad or not names:
                    raise UsageError(f"slurm backend: option 'env_passthrough': {bad[0] if bad else raw!r} is not "
                                     "ALL, NONE or a comma-separated list of variable names")
                values["env_passthrough"] = ",".join(names)
        return cls(**values)  # type: ignore[arg-type]


def format_time_limit(seconds: float) -> str:
    """Slurm's ``--time`` ([D-]HH:MM:SS), rounded up to whole minutes (Slurm's granularity)."""
    minutes = max(1, math.ceil(seconds / 60.0))
    days, rem = divmod(minutes, 24 * 60)
    hours, mins = divmod(rem, 60)
    text = f"{hours:02d}:{mins:02d}:00"
    return f"{days}-{text}" if days else text


def _one_line(what: str, value: str) -> str:
    if "\n" in value or "\r" in value or "\0" in value:
        raise UsageError(f"slurm backend: {what} must not contain line breaks: {value!r}")
    return value


def _slurm_path(path: str) -> str:
    """A path for --output/--error: '%' would start a Slurm filename pattern, so double it."""
    return path.replace("%", "%%")


class SlurmBackend(Backend):
    id: ClassVar[str] = "slurm"
    description: ClassVar[str] = "Slurm: one sbatch allocation per launch, srun + torchrun (c10d) inside"
    poll_interval: ClassVar[float] = 1.0
    options: ClassVar[Mapping[str, str]] = {
        "partition": "sbatch --partition",
        "account": "sbatch --account",
        "qos": "sbatch --qos",
        "time_margin": "seconds added to the case timeout for sbatch --time (default 60); "
                       "the runner cancels at the case timeout, Slurm's limit is the backstop",
        "python": "Python interpreter on the compute nodes, inside the container when container_image "
                  "is set (default: the runner's own)",
        "container_image": "srun --container-image (pyxis/enroot)",
        "container_mounts": "srun --container-mounts (pyxis/enroot); mount the results dir at the same "
                            "path, e.g. /data:/data,/results:/results",
        "extra_sbatch": "extra sbatch flags, shell-split, e.g. \"--constraint=a100 --exclusive\"",
        "rdzv_port": "rendezvous port on the head node (default 0: a free port picked there)",
        "env_passthrough": "which of the runner's environment variables the job sees: "
                           "ALL (default), NONE, or NAME,NAME,... (sbatch --export)",
    }

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

    # -- render -----------------------------------------------------------------------------
    def script_path(self, launch: Launch) -> Path:
        return Path(launch.results_dir) / SCRIPT_NAME

    def render(self, launch: Launch) -> Rendered:
        q = shlex.quote
        cfg = self.config
        results = _one_line("the results dir", str(Path(launch.results_dir)))
        if not Path(results).is_absolute():
            raise UsageError(f"slurm backend: results dir must be an absolute path: {results!r}")
        launch_json = str(Path(results) / "launch.json")
        log = _slurm_path(str(Path(results) / "logs")) + "/" + LAUNCHER_LOG
        nodes, nproc, gpus = int(launch.nodes), int(launch.nproc_per_node), int(launch.gpus_per_node)
        if nodes < 1 or nproc < 1 or gpus < 0:
            raise UsageError(f"slurm backend: bad resources for {launch.job_name}: nodes={nodes} "
                             f"nproc_per_node={nproc} gpus_per_node={gpus}")

        sb: list[str] = [
            f"--job-name={q(launch.job_name)}",
            f"--nodes={nodes}",
            "--ntasks-per-node=1",
        ]
        if gpus > 0:
            sb.append(f"--gpus-per-node={gpus}")
        sb += [
            f"--time={format_time_limit(float(launch.timeout) + cfg.time_margin)}",
            f"--output={q(log)}",
            f"--error={q(log)}",
            f"--chdir={q(results)}",
            "--no-requeue",          # the runner retries INFRA failures itself
            f"--export={cfg.env_passthrough}",
        ]
        for key in ("partition", "account", "qos"):
            value = getattr(cfg, key)
            if value:
                sb.append(f"--{key}={q(value)}")
        sb += [q(arg) for arg in cfg.extra_sbatch]

        host_python = "python3" if cfg.container_image else '"$RUNNER_PYTHON"'
        lines = [
            "#!/bin/bash",
            f"# runner launch {launch.job_name}: {nodes} node(s) x {nproc} process(es)",
            *(f"#SBATCH {flag}" for flag in sb),
            "",
            "set -euo pipefail",
        ]
        env_lines = []
        for key in sorted(launch.env):
            if not _ENV_NAME.match(str(key)):
                raise UsageError(f"slurm backend: env: {key!r} is not a valid environment variable name")
            env_lines.append(f"export {key}={q(str(launch.env[key]))}")
        if env_lines:
            lines += ["", "# the case's environment", *env_lines]
        lines += [
            "",
            f"RUNNER_PYTHON={q(cfg.python)}",
            "# the batch script runs on the first node of the allocation: it is the head node",
            'export RUNNER_HEAD_NODE="${SLURMD_NODENAME:-$(hostname -s)}"',
            # outside the container on the batch host: its own python3 when a container is used
            f'read -r HEAD_IP RDZV_PORT < <({host_python} -c {q(_HEAD_SNIPPET)} {cfg.rdzv_port})',
            'echo "runner: job $SLURM_JOB_ID on $SLURM_JOB_NODELIST; rendezvous $HEAD_IP:$RDZV_PORT '
            'hosted by $RUNNER_HEAD_NODE"',
            "",
        ]
        srun = ["srun", "--export=ALL", "--kill-on-bad-exit=1", f"--nodes={nodes}", "--ntasks-per-node=1"]
        if cfg.container_image:
            srun.append(f"--container-image={q(cfg.container_image)}")
        if cfg.container_mounts:
            srun.append(f"--container-mounts={q(cfg.container_mounts)}")
        torchrun = [
            "bash", "-c", q(_NODE_WRAPPER), "runner-node", '"$RUNNER_PYTHON"',
            "--nnodes", str(nodes), "--nproc-per-node", str(nproc),
            "--rdzv-backend", "c10d", '--rdzv-endpoint "$HEAD_IP:$RDZV_PORT"', '--rdzv-id "$SLURM_JOB_ID"',
            "-m", "runner.worker", q(launch_json),
        ]
        lines.append(" ".join(srun) + " \\\n    " + " ".join(torchrun))
        text = "\n".join(lines) + "\n"
        script = str(self.script_path(launch))
        return Rendered(launch=launch, text=text, files={SCRIPT_NAME: text},
                        command=("sbatch", "--parsable", script), env=dict(launch.env))

    # -- submit -----------------------------------------------------------------------------
    def submit(self, launch: Launch) -> Handle:
        rendered = self.render(launch)
        results = Path(launch.results_dir)
        (results / "logs").mkdir(parents=True, exist_ok=True)
        script = self.script_path(launch)
        script.write_text(rendered.text)
        script.chmod(0o755)
        proc = self._run(["sbatch", "--parsable", str(script)], cwd=str(results))
        if proc.returncode != 0:
            # e.g. an invalid partition or account; the scheduler reports it on the case
            raise UsageError(f"slurm backend: sbatch failed (exit {proc.returncode}): "
                             f"{(proc.stderr or proc.stdout).strip()[-500:]}")
        try:
            job_id = parse_sbatch_parsable(proc.stdout)
        except SlurmParseError as exc:
            raise UsageError(f"slurm backend: {exc}") from None
        return Handle(id=job_id, launch=launch, submitted_at=time.time(), data={"script": str(script)})

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
        out: dict[str, JobState] = {}
        if self._squeue_error is not None:
            # The controller did not answer (restarting, overloaded): absence means
            # nothing yet. Only a long outage ends the jobs, so the runner cannot hang.
            self._outage_since = self._outage_since or now
        else:
            self._outage_since = None
        outage = now - self._outage_since if self._outage_since else 0.0
        for h in handles:
            info = infos.get(h.id)
            if info is not None:
                h.data["info"] = info
                h.data.pop("missing_since", None)
                if info.done:
                    h.data.setdefault("finished_at", now)
                out[h.id] = JobState(done=info.done, state=info.state, detail=info.describe())
                continue
            if self._squeue_error is not None:
                if outage >= OUTAGE_GIVE_UP_S:
                    h.data.setdefault("finished_at", now)
                    h.data["lost"] = f"squeue failing for {outage:.0f}s: {self._squeue_error}"
                    out[h.id] = JobState(done=True, state="UNKNOWN", detail=h.data["lost"])
                else:
                    last = h.data.get("info")
                    out[h.id] = JobState(done=False, state=last.state if last else "UNKNOWN",
                                         detail=f"squeue failed: {self._squeue_error}")
                continue
            since = h.data.setdefault("missing_since", now)
            if now - max(since, h.submitted_at) >= MISSING_GRACE_S:
                h.data.setdefault("finished_at", now)
                h.data["lost"] = "not found by squeue, scontrol or sacct"
                out[h.id] = JobState(done=True, state="UNKNOWN", detail=h.data["lost"])
            else:
                last = h.data.get("info")
                out[h.id] = JobState(done=False, state=last.state if last else "UNKNOWN",
                                     detail="not listed yet")
        return out

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
        launch = handle.launch
        info: SlurmJobInfo | None = handle.data.get("info")
        if info is None or not info.done:
            info = self.query([handle.id]).get(handle.id, info)
        duration = handle.data.get("finished_at", time.time()) - handle.submitted_at
        state = info.state if info else "UNKNOWN"
        exit_code = info.exit_code if info else None
        cancel_reason = handle.cancel_reason
        infra_reason: str | None = None
        slurm_timeout = state == "TIMEOUT" and cancel_reason is None
        if slurm_timeout:
            cancel_reason = "timeout"
        elif state in INFRA_STATES:
            infra_reason = f"Slurm job {handle.id} ended {info.describe() if info else state}"
            if info and info.nodes:
                infra_reason += f" on {info.nodes}"
                unhealthy = self.unhealthy_nodes_reason(info.nodes)
                if unhealthy:
                    infra_reason += f": {unhealthy}"
        elif state == "CANCELLED" and cancel_reason is None:
            infra_reason = f"Slurm job {handle.id} was cancelled outside the runner (scancel or an administrator)"
        elif state == "UNKNOWN":
            lost = handle.data.get("lost", "not found by squeue, scontrol or sacct")
            infra_reason = f"Slurm job {handle.id} lost: {lost}"
            self._run(["scancel", handle.id])   # best effort: never leave it running unseen

        if infra_reason is None and cancel_reason is None and state not in ("COMPLETED", "TIMEOUT"):
            # A node that dies mid-job often makes the job fail (srun loses a task) before
            # the controller declares the node down; by the time the job has left
            # COMPLETING the controller knows, so ask about the job's nodes once.
            unhealthy = self.unhealthy_nodes_reason(info.nodes if info else "")
            if unhealthy:
                infra_reason = f"{unhealthy}: Slurm job {handle.id} ended {info.describe() if info else state}"

        outcome = outcome_from_records(launch, exit_code=exit_code, duration=duration,
                                       cancel_reason=cancel_reason, infra_reason=infra_reason)
        if slurm_timeout and outcome.outcome is Outcome.TIMEOUT:
            limit = format_time_limit(float(launch.timeout) + self.config.time_margin)
            return replace(outcome, detail=f"Slurm time limit ({limit}) reached: job {handle.id} ended TIMEOUT")
        if infra_reason and outcome.outcome is Outcome.ERROR:
            # Ranks that lost their peers to a dead node or a cancel fail too; the cause
            # is the infrastructure, and the rank's error is a consequence.
            detail = f"{infra_reason}; {outcome.detail}" if outcome.detail else infra_reason
            return replace(outcome, outcome=Outcome.INFRA, detail=detail)
        return outcome

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


def parse_unhealthy_nodes(text: str) -> list[tuple[str, str, str]]:
    """Nodes that are down, failing or not responding, from ``sinfo -N -o '%N|%T|%E'``."""
    out = []
    seen = set()
    for line in text.splitlines():
        parts = line.strip().split("|", 2)
        if len(parts) < 2 or parts[0] in seen:
            continue
        name, state = parts[0], parts[1].lower()
        why = parts[2].strip() if len(parts) > 2 and parts[2].strip() not in ("none", "(null)") else ""
        base = state.rstrip("*~#!%$@^-")
        if state.endswith("*") or base.startswith(("down", "fail", "no_respond", "not_responding")):
            seen.add(name)
            out.append((name, state, why))
    return out


def _append_launcher_note(handle: Handle, line: str) -> None:
    try:
        with open(Path(handle.launch.results_dir) / "logs" / "runner-slurm.log", "a") as fh:
            fh.write(line.rstrip() + "\n")
    except OSError:
        pass


@hookimpl
def runner_register_backends(registry) -> None:
    registry.add(SlurmBackend)
