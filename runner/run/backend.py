"""The backend contract: how a Launch becomes a running distributed job and an outcome.

A backend knows launches, never case kinds. Life of a launch::

    render(launch)  -> Rendered      pure; what --dry-run prints (command line, sbatch
                                     script, manifests); starts and writes nothing
    submit(launch)  -> Handle        starts the job; the results dir already holds launch.json
    poll(handles)   -> {id: JobState} ONE batched status call for every in-flight job
    cancel(handle, reason)           stop it (time limit, Ctrl-C, -x); must leave nothing running
    collect(handle) -> LaunchOutcome classify the finished job: COMPLETED / ERROR / TIMEOUT / INFRA

The runner owns time limits: at ``launch.timeout`` it calls ``cancel(handle, "timeout")``
and keeps polling until the job is gone. ``collect`` should read the results dir's
completion records (``runner.run.backend.outcome_from_records`` does the common part) and only
add what the scheduler knows (node failures, preemption, evictions -> INFRA).
"""
from __future__ import annotations

import abc
import re
import signal
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping, Sequence, Union

from runner.errors import UsageError, did_you_mean
from runner.records import Launch, LaunchOutcome, Outcome
from runner.results import ResultsDir


@dataclass(frozen=True)
class Rendered:
    """What a backend would submit: a title line and the text (command, script, manifests)."""

    launch: Launch
    text: str
    files: Mapping[str, str] = field(default_factory=dict)   # name -> content (sbatch script, YAML)
    command: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Handle:
    """A submitted job. ``id`` is the backend's id (pid, Slurm job id, Job name).

    ``state`` is the backend's own record of the job, a dataclass the backend defines
    (``backends.slurm.backend.SlurmJob``, ``backends.kubernetes.backend.KubernetesJob``);
    ``data`` is a free-form mapping for backends that need nothing typed.
    """

    id: str
    launch: Launch
    submitted_at: float
    data: dict[str, Any] = field(default_factory=dict)
    cancel_reason: str | None = None
    state: Any = None


@dataclass(frozen=True)
class JobState:
    done: bool
    state: str = ""              # backend's words: RUNNING, PENDING, COMPLETED, NODE_FAIL, ...
    detail: str = ""


@dataclass(frozen=True)
class Capacity:
    """How much one backend can run at once (None: unlimited, the cluster queues)."""

    cpus: int | None = None
    gpus: int | None = None


@dataclass(frozen=True)
class BackendOption:
    """One declared backend option: its help line and, optionally, how a value is checked.

    ``check`` gets the option's string (from ``--backend-opt KEY=VALUE`` or the config file)
    and raises ``ValueError`` with the reason when it is not acceptable; its return value is
    not kept (the backend parses ``self.opts`` itself).
    """

    help: str
    check: Callable[[str], object] | None = None


#: what a backend's ``options`` maps each name to: a help line, or a BackendOption
OptionSpec = Union[str, BackendOption]


def option_help(spec: OptionSpec) -> str:
    return spec.help if isinstance(spec, BackendOption) else str(spec)


def check_options(backend_id: str, declared: Mapping[str, OptionSpec],
                  given: Mapping[str, str]) -> dict[str, str]:
    """The one place backend options are checked against what a backend declares:
    an unknown name, or a value its ``BackendOption.check`` refuses, is a usage error."""
    for key in given:
        if key not in declared:
            allowed = ", ".join(sorted(declared)) or "none"
            raise UsageError(f"backend '{backend_id}': unknown option '{key}'{did_you_mean(key, declared)}; "
                             f"known: {allowed}")
    for key, value in given.items():
        spec = declared[key]
        if isinstance(spec, BackendOption) and spec.check is not None:
            try:
                spec.check(str(value))
            except (ValueError, TypeError) as exc:
                raise UsageError(f"backend '{backend_id}': option '{key}'={value!r}: {exc}") from None
    return {str(k): str(v) for k, v in given.items()}


class Backend(abc.ABC):
    #: static id used in ``--backend ID`` and specs
    id: ClassVar[str]
    #: one line for ``runner plugins``
    description: ClassVar[str] = ""
    #: seconds between batched polls
    poll_interval: ClassVar[float] = 0.5
    #: the options schema: name -> one-line help or a BackendOption; checked once, here,
    #: when the backend is made (unknown ``--backend-opt`` keys are usage errors)
    options: ClassVar[Mapping[str, OptionSpec]] = {}

    def __init__(self, options: Mapping[str, str] | None = None) -> None:
        self.opts: dict[str, str] = check_options(getattr(self, "id", type(self).__name__), self.options,
                                                  options or {})

    def check(self) -> None:
        """Raise UsageError when the backend cannot work here (tools missing, bad options)."""

    def capacity(self) -> Capacity:
        return Capacity()

    @abc.abstractmethod
    def render(self, launch: Launch) -> Rendered: ...

    @abc.abstractmethod
    def submit(self, launch: Launch) -> Handle: ...

    @abc.abstractmethod
    def poll(self, handles: Sequence[Handle]) -> Mapping[str, JobState]: ...

    @abc.abstractmethod
    def cancel(self, handle: Handle, reason: str) -> None: ...

    @abc.abstractmethod
    def collect(self, handle: Handle) -> LaunchOutcome: ...

    def sweep(self, results_root: Any) -> list[str]:
        """Before a session starts anything: end what a dead earlier run of the same results
        root left running (only that root's; the session holds the root's lock). One line per
        thing ended, shown as a warning."""
        return []

    def close(self) -> None:
        """Called once at the end of a session (stop helpers, close clients)."""


_JOB_NAME_RE = re.compile(r"[^a-z0-9-]+")


def job_name(case_id: str, launch_name: str, max_len: int = 63) -> str:
    """A DNS-1123 label (valid as a Slurm job name and a Kubernetes name) from a case id."""
    base = case_id.rsplit("::", 1)[-1]
    raw = f"{base}-{launch_name}".lower()
    name = _JOB_NAME_RE.sub("-", raw).strip("-")
    name = re.sub(r"-{2,}", "-", name) or "case"
    if not name[0].isalpha():
        name = "c-" + name
    if len(name) > max_len:
        import hashlib

        digest = hashlib.sha1(raw.encode()).hexdigest()[:8]
        name = name[: max_len - 9].rstrip("-") + "-" + digest
    return name


def outcome_from_records(launch: Launch, *, exit_code: int | None, duration: float,
                         cancel_reason: str | None = None, infra_reason: str | None = None,
                         attempts: int = 1) -> LaunchOutcome:
    """Classify a finished launch from its completion records.

    Precedence: cancelled for timeout -> TIMEOUT; Ctrl-C -> INTERRUPTED; a rank's error
    record -> ERROR (that rank, its exception); all ranks ok -> COMPLETED (even if the
    scheduler reports otherwise); infra_reason -> INFRA; missing records -> ERROR with the
    exit code.
    """
    rd = ResultsDir(launch.results_dir)
    records = rd.completion_records()
    world = launch.world_size
    if cancel_reason == "timeout":
        return LaunchOutcome(launch, Outcome.TIMEOUT, f"time limit of {launch.timeout:g}s reached; job cancelled",
                             exit_code=exit_code, duration=duration, attempts=attempts)
    if cancel_reason == "interrupt":
        return LaunchOutcome(launch, Outcome.INTERRUPTED, "interrupted", exit_code=exit_code,
                             duration=duration, attempts=attempts)
    # the first rank to fail is the cause; the others usually fail in a collective after it.
    # torchrun names the first observed failure; a rank that died without a record (os._exit,
    # a signal, a segfault) is found that way.
    root = torchrun_root_cause(rd)
    if root is None or root[0] in records:
        # a rank that died without a record (signal, os._exit) caused the others' errors --
        # unless torchrun itself stopped it (SIGTERM, after another rank had failed)
        root = next(((r, c) for r, c in torchrun_failures(rd) if r not in records and c != -signal.SIGTERM), root)
    if root is not None and records.get(root[0], {}).get("status") != "ok" and root[0] not in records:
        rank, code = root
        return LaunchOutcome(launch, Outcome.ERROR,
                             f"rank {rank} {_exit_words(code)} without a completion record",
                             exit_code=code, failed_rank=rank, log_tail=rd.log_tail(rank), duration=duration,
                             attempts=attempts)
    errors = sorted((r for r, rec in records.items() if rec.get("status") != "ok"),
                    key=lambda r: (records[r].get("finished", float("inf")), r))
    if errors:
        rank = errors[0]
        exc = records[rank].get("exception") or "failed"
        return LaunchOutcome(launch, Outcome.ERROR, f"rank {rank}: {exc}", exit_code=exit_code,
                             failed_rank=rank, log_tail=rd.log_tail(rank), duration=duration,
                             attempts=attempts)
    if len(records) == world and all(rec.get("status") == "ok" for rec in records.values()):
        return LaunchOutcome(launch, Outcome.COMPLETED, "", exit_code=exit_code, duration=duration,
                             attempts=attempts)
    if infra_reason:
        return LaunchOutcome(launch, Outcome.INFRA, infra_reason, exit_code=exit_code,
                             duration=duration, attempts=attempts)
    missing = sorted(set(range(world)) - set(records))
    first_missing: int | None = missing[0] if missing else None
    tail_text = rd.log_tail(first_missing) if first_missing is not None else ""
    if not tail_text:
        for log in rd.iter_logs():
            if log.name.startswith("launcher"):
                from runner.results import tail

                tail_text = tail(log)
    detail = f"rank {first_missing} ended without a completion record" if first_missing is not None else "failed"
    if exit_code not in (None, 0):
        from runner.results import describe_exit

        detail += f" ({describe_exit(exit_code)})"
    return LaunchOutcome(launch, Outcome.ERROR, detail, exit_code=exit_code, failed_rank=first_missing,
                         log_tail=tail_text, duration=duration, attempts=attempts)


_ROOT_RANK = re.compile(r"^\s*rank\s*:\s*(\d+)", re.M)
_ROOT_CODE = re.compile(r"^\s*exitcode\s*:\s*(-?\d+)", re.M)


def torchrun_root_cause(rd: ResultsDir) -> tuple[int, int] | None:
    """(rank, exit code) of torchrun's "Root Cause (first observed failure)" in the launcher logs."""
    from runner.results import tail

    for log in rd.iter_logs():
        if not log.name.startswith("launcher"):
            continue
        text = tail(log, lines=400, max_bytes=256 * 1024)
        idx = text.rfind("Root Cause (first observed failure)")
        if idx < 0:
            continue
        block = text[idx: idx + 2000]
        m_rank, m_code = _ROOT_RANK.search(block), _ROOT_CODE.search(block)
        if m_rank and m_code:
            return int(m_rank.group(1)), int(m_code.group(1))
    return None


_FAILURE = re.compile(r"^\s*rank\s*:\s*(\d+).*?^\s*exitcode\s*:\s*(-?\d+)", re.M | re.S)


def torchrun_failures(rd: ResultsDir) -> list[tuple[int, int]]:
    """Every (rank, exit code) in the "Failures:" blocks of torchrun's report in the launcher logs."""
    from runner.results import tail

    out = []
    for log in rd.iter_logs():
        if log.name.startswith("launcher"):
            text = tail(log, lines=400, max_bytes=256 * 1024)
            for block in text.split("\n[")[1:]:
                m = _FAILURE.search(block)
                if m:
                    out.append((int(m.group(1)), int(m.group(2))))
    return out


def _exit_words(code: int) -> str:
    from runner.results import describe_exit

    words = describe_exit(code)
    return f"exited with code {code}" if words.startswith("exit code") else f"was {words}"


def run_launch(backend: Backend, launch: Launch) -> LaunchOutcome:
    """Run one launch to its end through a backend, outside a session (benchmarks, tests):
    write launch.json, submit, poll until done (cancelling at the time limit), collect."""
    import json
    import time
    from pathlib import Path

    rdir = Path(launch.results_dir)
    rdir.mkdir(parents=True, exist_ok=True)
    (rdir / "launch.json").write_text(json.dumps(launch.to_json()))
    handle = backend.submit(launch)
    started = time.monotonic()
    while not backend.poll([handle])[handle.id].done:
        if handle.cancel_reason is None and time.monotonic() - started > launch.timeout:
            backend.cancel(handle, "timeout")
        time.sleep(backend.poll_interval)
    return backend.collect(handle)
