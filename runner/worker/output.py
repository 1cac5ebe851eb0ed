"""Pointing a rank's stdout/stderr (file descriptors 1 and 2) at a log file.

A fresh rank (``runner.worker.main``) and a warm pool rank (``runner.worker.pool``) both send
everything the case prints, by Python or by native code, into the launch's
``logs/rank{R}.log``; this is the one place that does it.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path


def point_fds_at(path: Path) -> None:
    """Flush Python's streams, then make fds 1 and 2 append to ``path`` (created with its folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
