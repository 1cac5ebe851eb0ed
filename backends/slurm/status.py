"""Parsing what Slurm's client commands say about jobs: squeue --json, scontrol, sacct.

Versions differ in shape, so every parser here accepts the variants seen in the field:

- ``squeue --json`` (22.05: OpenAPI v0.0.38): ``job_state`` is a string, ``exit_code`` is
  the raw wait status (768 = exit 3, 9 = killed by SIGKILL), and every job in the
  controller's memory is listed whatever filter was given. Newer versions: ``job_state``
  is a list (base state plus flags such as ``COMPLETING``), numbers may be
  ``{"set": true, "number": N}`` and ``exit_code`` may be
  ``{"status": [...], "return_code": {...}, "signal": {...}}``.
- ``scontrol -o show job [ID]``: one line per job of ``Key=Value`` pairs;
  ``ExitCode=code:signal``.
- ``sacct -n -P -X -o JobIDRaw,State,ExitCode,NodeList`` (with ``-c`` for the jobcomp
  text file when there is no accounting database): ``State`` may read
  ``CANCELLED by 0``.

``sinfo -h -N -o '%N|%T|%E'``: nodes that are down or not responding.

Nothing here runs a command; ``backends.slurm.backend`` calls the tools and hands the text over.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

#: states in which the job (or its cleanup) is still going on
ACTIVE_STATES = frozenset({
    "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD",
    "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD",
})
#: final states
TERMINAL_STATES = frozenset({
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
    "DEADLINE", "OUT_OF_MEMORY", "REVOKED", "SPECIAL_EXIT",
})
#: final states that mean the infrastructure, not the workload, ended the job
INFRA_STATES = frozenset({"NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "REVOKED", "DEADLINE"})
#: flags that keep a finished job "not done" (processes may still be running)
BUSY_FLAGS = frozenset({"COMPLETING", "SIGNALING", "STAGE_OUT", "CONFIGURING", "REQUEUED", "RESIZING"})


class SlurmParseError(ValueError):
    """A tool printed something that is not what its format promises."""


@dataclass(frozen=True)
class SlurmJobInfo:
    """What one status source said about one job."""

    job_id: str
    state: str                       # base state: RUNNING, COMPLETED, NODE_FAIL, ...
    flags: tuple[str, ...] = ()      # extra state words: COMPLETING, REQUEUED, ...
    reason: str = ""                 # state_reason / Reason (None -> "")
    exit_code: int | None = None     # the batch script's exit code
    signal: int | None = None        # signal that ended the batch script, if any
    nodes: str = ""                  # node list expression, e.g. "n[1-2]"
    source: str = ""                 # "squeue", "scontrol", "sacct"

    @property
    def done(self) -> bool:
        """Finished, and nothing of it is running any more."""
        return self.state in TERMINAL_STATES and not BUSY_FLAGS.intersection(self.flags)

    def describe(self) -> str:
        bits = [self.state]
        if self.flags:
            bits.append("+" + "+".join(self.flags))
        if self.reason:
            bits.append(f"reason={self.reason}")
        if self.exit_code is not None and self.state not in ACTIVE_STATES:
            bits.append(f"exit={self.exit_code}")
        if self.signal:
            bits.append(f"signal={self.signal}")
        return " ".join(bits)


# -- small value helpers ----------------------------------------------------------------------
def _number(value: Any) -> int | None:
    """An int from 22.05's plain numbers or newer ``{"set":..,"infinite":..,"number":N}``."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    if isinstance(value, Mapping):
        if value.get("set") is False or value.get("infinite") is True:
            return None
        return _number(value.get("number"))
    return None


def _reason(value: Any) -> str:
    text = str(value or "").strip()
    return "" if text in ("None", "(null)") else text


def split_state(value: Any) -> tuple[str, tuple[str, ...]]:
    """Base state and flags from a string ("CANCELLED by 0", "COMPLETING") or a list."""
    if isinstance(value, str):
        words = value.replace("+", " ").split()
        if not words:
            return "UNKNOWN", ()
        # "CANCELLED by 1234" (sacct): the rest names who cancelled, not a flag
        if words[0] == "CANCELLED":
            return "CANCELLED", ()
        items = [w.upper() for w in words]
    elif isinstance(value, (list, tuple)):
        items = [str(v).upper() for v in value if str(v).strip()]
    else:
        return "UNKNOWN", ()
    if not items:
        return "UNKNOWN", ()
    base = next((s for s in items if s in TERMINAL_STATES or s in ACTIVE_STATES - BUSY_FLAGS), items[0])
    flags = tuple(s for s in items if s != base)
    return base, flags


def decode_wait_status(status: int) -> tuple[int | None, int | None]:
    """(exit code, signal) from a raw wait(2) status as 22.05's JSON reports it."""
    sig = status & 0x7F
    if sig:
        return None, sig
    return (status >> 8) & 0xFF, None


def _exit_from_json(value: Any) -> tuple[int | None, int | None]:
    if value is None:
        return None, None
    if isinstance(value, Mapping) and ("return_code" in value or "signal" in value or "status" in value):
        code = _number(value.get("return_code"))
        sig_obj = value.get("signal")
        sig = None
        if isinstance(sig_obj, Mapping):
            sig = _number(sig_obj.get("id"))
            if sig == 0:
                sig = None
        status = value.get("status")
        if isinstance(status, (list, tuple)) and "SIGNALED" in status and sig is None:
            sig = code
            code = None
        return code, sig
    raw = _number(value)
    if raw is None:
        return None, None
    return decode_wait_status(raw)


def _exit_from_pair(text: str) -> tuple[int | None, int | None]:
    """'3:0' -> (3, None); '0:9' -> (0, 9)."""
    m = re.match(r"^\s*(\d+):(\d+)", text or "")
    if not m:
        return None, None
    code, sig = int(m.group(1)), int(m.group(2))
    return code, (sig or None)


# -- squeue --json ----------------------------------------------------------------------------
def parse_squeue_json(text: str, wanted: Iterable[str] | None = None) -> dict[str, SlurmJobInfo]:
    """Jobs from ``squeue --json`` output, keyed by job id (only ``wanted`` ones if given)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SlurmParseError(f"squeue --json printed invalid JSON: {exc}") from None
    if not isinstance(data, Mapping) or not isinstance(data.get("jobs", []), list):
        raise SlurmParseError("squeue --json: no 'jobs' list in the output")
    want = None if wanted is None else {str(w) for w in wanted}
    out: dict[str, SlurmJobInfo] = {}
    for job in data.get("jobs", []):
        if not isinstance(job, Mapping):
            continue
        jid = _number(job.get("job_id"))
        if jid is None:
            continue
        key = str(jid)
        if want is not None and key not in want:
            continue
        state, flags = split_state(job.get("job_state"))
        code, sig = _exit_from_json(job.get("exit_code"))
        nodes = job.get("nodes")
        out[key] = SlurmJobInfo(key, state, flags, _reason(job.get("state_reason")), code, sig,
                                str(nodes) if isinstance(nodes, str) else "", "squeue")
    return out


# -- scontrol -o show job ----------------------------------------------------------------------
_SCONTROL_FIELD = re.compile(r"(?:^|\s)(JobId|JobState|Reason|ExitCode|NodeList)=(\S*)")


def parse_scontrol_jobs(text: str, wanted: Iterable[str] | None = None) -> dict[str, SlurmJobInfo]:
    """Jobs from ``scontrol -o show job`` (one job per line)."""
    want = None if wanted is None else {str(w) for w in wanted}
    out: dict[str, SlurmJobInfo] = {}
    for line in text.splitlines():
        fields: dict[str, str] = {}
        for key, value in _SCONTROL_FIELD.findall(line):
            fields.setdefault(key, value)
        jid = fields.get("JobId")
        if not jid or (want is not None and jid not in want):
            continue
        state, flags = split_state(fields.get("JobState", ""))
        code, sig = _exit_from_pair(fields.get("ExitCode", ""))
        nodes = fields.get("NodeList", "")
        out[jid] = SlurmJobInfo(jid, state, flags, _reason(fields.get("Reason")), code, sig,
                                "" if nodes == "(null)" else nodes, "scontrol")
    return out


# -- sacct -n -P -X -o JobIDRaw,State,ExitCode,NodeList ----------------------------------------
SACCT_FORMAT = "JobIDRaw,State,ExitCode,NodeList"


def parse_sacct(text: str, wanted: Iterable[str] | None = None) -> dict[str, SlurmJobInfo]:
    """Jobs from parsable sacct output in :data:`SACCT_FORMAT`; step lines are ignored.

    A job listed several times (requeued, or the jobcomp file appended twice) keeps its
    last line, which is the latest record.
    """
    want = None if wanted is None else {str(w) for w in wanted}
    out: dict[str, SlurmJobInfo] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 3 or not parts[0] or parts[0] == "JobIDRaw":
            continue
        jid = parts[0]
        if "." in jid or "+" in jid or not jid.isdigit():
            continue
        if want is not None and jid not in want:
            continue
        state, flags = split_state(parts[1])
        code, sig = _exit_from_pair(parts[2])
        nodes = parts[3] if len(parts) > 3 else ""
        out[jid] = SlurmJobInfo(jid, state, flags, "", code, sig, nodes, "sacct")
    return out


def accounting_disabled(stderr: str) -> bool:
    """True when sacct failed because the cluster keeps no accounting database."""
    low = stderr.lower()
    return "accounting storage is disabled" in low or ("slurmdbd" in low and "connect" in low)


def parse_sbatch_parsable(text: str) -> str:
    """The job id from ``sbatch --parsable`` ("123" or "123;cluster")."""
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        jid = line.split(";", 1)[0].strip()
        if jid.isdigit():
            return jid
    raise SlurmParseError(f"sbatch --parsable printed no job id: {text.strip()[:200]!r}")


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
