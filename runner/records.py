"""The data that flows through the runner: cases, launches, outcomes, verdicts.

spec files -> Case -> Launch (per case kind) -> backend -> LaunchOutcome -> CheckResult -> Verdict

Everything here is frozen and JSON-friendly, so it can be written to results dirs and
reports and read back by workers on other machines.
"""
from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping


@dataclass(frozen=True)
class Resources:
    nodes: int = 1
    nproc_per_node: int = 1
    #: GPUs per node. ``None`` means "auto": one per process on a GPU platform, none on CPU.
    gpus: int | None = None

    @property
    def world_size(self) -> int:
        return self.nodes * self.nproc_per_node

    def gpus_per_node(self, platform: str) -> int:
        if self.gpus is not None:
            return self.gpus
        return 0 if platform == "cpu" else self.nproc_per_node


@dataclass(frozen=True)
class Location:
    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True)
class Case:
    """One named test after matrix expansion, defaults and the platform profile."""

    id: str                      # "<spec path>::<name>", unique in a session
    name: str
    kind: str
    args: Mapping[str, Any]
    resources: Resources
    spec_file: str
    location: Location | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    timeout: float = 600.0       # seconds, per launch
    retries: int = 0             # retries of INFRA failures
    tags: tuple[str, ...] = ()
    xfail: str | None = None     # reason, when the case is expected to fail
    skip: str | None = None      # reason, when the case must not run here
    golden: Mapping[str, Any] = field(default_factory=dict)
    compare: Mapping[str, Any] = field(default_factory=dict)
    matrix: Mapping[str, Any] = field(default_factory=dict)   # this case's axis values
    platform: str = "cpu"
    #: where each key of the case was written: dotted key path -> Location
    key_locations: Mapping[str, Location] = field(default_factory=dict, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("key_locations", None)
        d["location"] = str(self.location) if self.location else None
        return d

    def where(self, key: str) -> str:
        """'file:line:col' of a key (or the closest enclosing key), for messages."""
        parts = key.split(".")
        while parts:
            loc = self.key_locations.get(".".join(parts))
            if loc:
                return str(loc)
            parts.pop()
        return str(self.location) if self.location else self.spec_file


@dataclass(frozen=True)
class Launch:
    """One distributed job, backend-neutral.

    Every rank runs ``python -m runner.worker <results_dir>/launch.json``; the worker reads
    this record back and calls ``entry`` (``"module:function"``) with a WorkerContext.
    """

    case_id: str
    name: str                    # e.g. "main", "run1", "run2"
    kind: str
    entry: str                   # "package.module:function" run in every rank
    args: Mapping[str, Any]
    nodes: int
    nproc_per_node: int
    gpus_per_node: int
    env: Mapping[str, str]
    timeout: float
    results_dir: str             # absolute path, one per launch
    job_name: str                # sanitised, for schedulers: [a-z0-9-], <= 63 chars
    platform: str = "cpu"
    results_root: str = ""       # the session's results root (the shared folder backends mount)

    @property
    def world_size(self) -> int:
        return self.nodes * self.nproc_per_node

    @property
    def worker_argv(self) -> tuple[str, ...]:
        """What torchrun runs in each rank, after the python executable."""
        return ("-m", "runner.worker", str(Path(self.results_dir) / "launch.json"))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Launch":
        return cls(**dict(data))


class Outcome(str, enum.Enum):
    """How a launch ended, as the backend (and the results dir) saw it."""

    COMPLETED = "completed"      # every rank wrote an ok completion record
    ERROR = "error"              # the workload failed (a rank raised or exited non-zero)
    TIMEOUT = "timeout"          # the time limit was reached and the job was cancelled
    INFRA = "infra"              # the backend/infrastructure failed; retried by policy
    INTERRUPTED = "interrupted"  # cancelled because the user pressed Ctrl-C


@dataclass(frozen=True)
class LaunchOutcome:
    launch: Launch
    outcome: Outcome
    detail: str = ""             # one line: why (exit code and rank, infra reason)
    exit_code: int | None = None
    failed_rank: int | None = None
    log_tail: str = ""           # last lines of the failing rank's log
    duration: float = 0.0
    attempts: int = 1


class Verdict(str, enum.Enum):
    PASSED = "PASSED"
    FAILED = "FAILED"
    ERROR = "ERROR"
    TIMEOUT = "TIMEOUT"
    INFRA = "INFRA"
    SKIPPED = "SKIPPED"
    XFAIL = "XFAIL"
    XPASS = "XPASS"
    INTERRUPTED = "INTERRUPTED"

    @property
    def is_failure(self) -> bool:
        return self in (Verdict.FAILED, Verdict.ERROR, Verdict.TIMEOUT, Verdict.INFRA, Verdict.XPASS)


@dataclass(frozen=True)
class CheckResult:
    """One comparison a case kind asked for (a metric vs golden, a capture vs reference)."""

    name: str                    # e.g. "golden:lm loss:deterministic", "captures:outputs"
    passed: bool
    detail: str = ""             # one line on failure: what, where, expected vs actual
    skipped: bool = False
    data: Mapping[str, Any] = field(default_factory=dict)   # structured detail for JSON


@dataclass(frozen=True)
class CaseResult:
    case: Case
    verdict: Verdict
    detail: str = ""             # the key detail: first failing check, error, reason
    duration: float = 0.0
    backend: str = ""
    launches: tuple[LaunchOutcome, ...] = ()
    checks: tuple[CheckResult, ...] = ()
    info: Mapping[str, Any] = field(default_factory=dict)   # e.g. timing ratios

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.case.id,
            "name": self.case.name,
            "kind": self.case.kind,
            "backend": self.backend,
            "verdict": self.verdict.value,
            "detail": self.detail,
            "duration": round(self.duration, 3),
            "platform": self.case.platform,
            "tags": list(self.case.tags),
            "launches": [
                {"name": o.launch.name, "outcome": o.outcome.value, "detail": o.detail,
                 "exit_code": o.exit_code, "failed_rank": o.failed_rank,
                 "duration": round(o.duration, 3), "attempts": o.attempts,
                 "results_dir": o.launch.results_dir}
                for o in self.launches
            ],
            "checks": [
                {"name": c.name, "passed": c.passed, "skipped": c.skipped, "detail": c.detail,
                 "data": dict(c.data)}
                for c in self.checks
            ],
            "info": dict(self.info),
        }
