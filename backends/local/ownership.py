"""Processes of a local launch die with the runner, and leftovers of a dead run are found.

Three layers, each covering what the one before cannot:

1. **Parent-death signal.** Every torchrun agent is started with ``PR_SET_PDEATHSIG=SIGKILL``
   (set between fork and exec, while the runner is certainly alive), and every worker sets the
   same on itself first thing (``runner.worker.lifetime.die_with_parent``), then checks
   that its parent still carries the launch token — if the agent died in between, the worker
   exits at once. A ``kill -9`` of the runner therefore takes the agents, and the agents the
   workers, with it. The kernel ties the signal to the *thread* that started the child:
   launches must be submitted from a thread that lives as long as they do (the scheduler's
   loop thread does).
2. **Launch records.** Each launch writes ``<results root>/.runner/local/<token>.json`` with the
   owner's PID and process start time; the record is marked ended once no process carries the
   token any more.
3. **Startup sweep.** :func:`sweep` reads the records of one results root and, for every record
   whose owner is no longer alive (PID gone, or reused by another process: the start time
   differs), SIGKILLs every process carrying that launch's token. Tokens are random UUIDs, so
   nothing outside that results root's own launches is ever signalled.
"""
from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from backends.local import proctree
from runner.worker.lifetime import set_pdeathsig

RECORDS = Path(".runner") / "local"


def preexec_die_with_runner() -> None:
    """``preexec_fn`` for torchrun agents: they get SIGKILL when the runner goes away."""
    set_pdeathsig(signal.SIGKILL)


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def owner_alive(pid: int, started: int | None) -> bool:
    now = start_time(pid)
    return now is not None and (started is None or now == started) and proctree.is_alive(pid)


@dataclass(frozen=True)
class LaunchRecord:
    token: str
    owner_pid: int
    owner_start: int | None
    case_id: str
    results_dir: str
    ended: bool = False

    def to_json(self) -> dict[str, object]:
        return dict(self.__dict__)


def record_dir(results_root: str | os.PathLike[str]) -> Path:
    return Path(results_root) / RECORDS


def write_record(results_root: str | os.PathLike[str], record: LaunchRecord) -> Path:
    from runner.results import write_json_atomic

    path = record_dir(results_root) / f"{record.token}.json"
    write_json_atomic(path, record.to_json(), durable=False)   # meaningless after a reboot: no fsync
    return path


def mark_ended(path: Path) -> None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    data["ended"] = True
    from runner.results import write_json_atomic

    try:
        write_json_atomic(path, data, durable=False)
    except OSError:
        pass


def read_records(results_root: str | os.PathLike[str]) -> list[LaunchRecord]:
    out = []
    for f in sorted(record_dir(results_root).glob("*.json")):
        try:
            d = json.loads(f.read_text())
            out.append(LaunchRecord(str(d["token"]), int(d["owner_pid"]), d.get("owner_start"),
                                    str(d.get("case_id", "")), str(d.get("results_dir", "")), bool(d.get("ended"))))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out


def sweep(results_root: str | os.PathLike[str], *, wait: float = 5.0) -> list[str]:
    """End the leftovers of dead earlier runs of this results root; one line per launch swept."""
    lines = []
    for rec in read_records(results_root):
        if rec.ended or rec.owner_pid == os.getpid() or owner_alive(rec.owner_pid, rec.owner_start):
            continue
        pids = proctree.processes_with_token(rec.token)
        if pids:
            proctree.signal_all(pids, signal.SIGKILL)
            deadline = time.monotonic() + wait
            while proctree.processes_with_token(rec.token) and time.monotonic() < deadline:
                time.sleep(0.05)
            lines.append(f"ended {len(pids)} leftover process{'es' if len(pids) != 1 else ''} of {rec.case_id} "
                         f"(runner PID {rec.owner_pid} is gone)")
        mark_ended(record_dir(results_root) / f"{rec.token}.json")
    return lines
