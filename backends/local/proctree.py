"""Finding and stopping every process of a launch (Linux /proc).

torchrun starts each worker in a session of its own, so signalling the agent's process
group does not reach them, and a killed agent leaves them orphaned. Every process of a local
launch therefore carries ``RUNNER_LAUNCH_TOKEN=<uuid>`` in its environment (inherited by all
descendants); ``processes_with_token`` finds them wherever they were reparented.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

TOKEN_VAR = "RUNNER_LAUNCH_TOKEN"


def processes_with_token(token: str) -> list[int]:
    needle = f"{TOKEN_VAR}={token}".encode()
    me = os.getpid()
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid == me:
            continue
        try:
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in env.split(b"\0"):
            out.append(pid)
    return out


def descendants(pid: int) -> list[int]:
    """All live descendants of pid (children first found through /proc/*/stat ppids)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        try:
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for c in parents.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def is_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state != "Z"


def signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def kill_token(token: str) -> int:
    """SIGKILL every process carrying the token; returns how many were signalled."""
    pids = processes_with_token(token)
    signal_all(pids, signal.SIGKILL)
    return len(pids)
