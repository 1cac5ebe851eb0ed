"""A rank must not outlive the launcher that started it (Linux parent-death signal).

``set_pdeathsig`` asks the kernel to send a signal to this process when its parent exits.
``die_with_parent`` is what ``runner.worker`` calls first: under a launcher that marks its
processes with a launch token (the local backend's ``RUNNER_LAUNCH_TOKEN``), the rank gets
SIGKILL when the launcher dies, and exits at once when the launcher is already gone (its
parent no longer carries the token: it was reparented).
"""
from __future__ import annotations

import ctypes
import os
import signal
from pathlib import Path

PR_SET_PDEATHSIG = 1
TOKEN_VAR = "RUNNER_LAUNCH_TOKEN"


def set_pdeathsig(sig: int = signal.SIGKILL) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def carries_token(pid: int, token: str) -> bool:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"{TOKEN_VAR}={token}".encode() in env.split(b"\0")


def die_with_parent() -> None:
    token = os.environ.get(TOKEN_VAR)
    if not token or not set_pdeathsig(signal.SIGKILL):
        return
    if not carries_token(os.getppid(), token):
        os._exit(1)
