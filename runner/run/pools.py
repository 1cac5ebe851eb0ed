"""Warm worker pools, the parts: a launch's shape, the settings a backend gives its pools,
and one pool as the launcher sees it. The wrapper that uses them is ``runner.run.pooling``.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from runner.records import Launch
from runner.results import ResultsDir
from runner.run.backend import Handle
from runner.worker.pool import MAX_IDLE_SLEEP, ready_file

#: the per-launch names that differ between cases of one pool (set by the rank per task)
PER_LAUNCH_ENV = ("RUNNER_CASE_ID", "RUNNER_LAUNCH")
#: a pool launch's time limit when its backend sets none (the runner times each case, not the pool)
POOL_LIFETIME_S = 10 * 86400.0

ShapeKey = tuple[Any, ...]


def shape_key(launch: Launch) -> ShapeKey:
    env = tuple(sorted((k, v) for k, v in launch.env.items() if k not in PER_LAUNCH_ENV))
    return (launch.nodes, launch.nproc_per_node, launch.gpus_per_node, launch.platform, env)


@dataclass(frozen=True)
class PoolSettings:
    """How a backend's pools behave; the defaults are the local backend's.

    ``per_shape``: most pools of one shape at once; cases beyond them wait for one of them
    (None: a new pool whenever none of the shape is idle, the backend's capacity bounds how
    many cases run at once). With a limit, pools start at the next poll after the
    submissions, so a pool's time limit can cover every case of its shape submitted with it,
    and a case's ``timeout`` counts from its dispatch to a pool, not from its submission.
    ``time_cap``: longest time limit of one pool launch in seconds (None: ``POOL_LIFETIME_S``);
    a pool asks for the sum of its waiting cases' timeouts up to this cap, and a case whose
    timeout no longer fits in an idle pool's remaining time gets a fresh pool.
    ``idle_poll_s``: longest sleep of a rank between looks at the spool while idle.
    ``shared_fs``: the spool is on a shared filesystem: a rank lists the spool folder before
    it reads a task file and the launcher lists it to find ready files (a directory read
    revalidates NFS attribute caches).
    """

    per_shape: int | None = None
    time_cap: float | None = None
    idle_poll_s: float = MAX_IDLE_SLEEP
    shared_fs: bool = False

    @property
    def queued(self) -> bool:
        return self.per_shape is not None

    def time_limit(self, launches: Sequence[Launch]) -> float:
        """The time limit of a pool started for ``launches`` (the first is the one it runs first)."""
        if self.time_cap is None or not launches:
            return POOL_LIFETIME_S
        first = float(launches[0].timeout)
        return max(first, min(sum(float(la.timeout) for la in launches), self.time_cap))


@dataclass
class Pool:
    number: int
    key: ShapeKey
    spool: Path
    launch: Launch
    handle: Handle
    world: int
    shared_fs: bool = False
    seq: int = 0                      # the next task number
    busy: Handle | None = None        # the case handle it runs now
    dead: bool = False
    started: float = field(default_factory=time.monotonic)
    last_used: float = field(default_factory=time.monotonic)

    def ready_for(self, seq: int) -> bool:
        if self.shared_fs:
            try:
                names = set(os.listdir(self.spool))
            except OSError:
                return False
            return all(ready_file(self.spool, seq, r).name in names for r in range(self.world))
        return all(ready_file(self.spool, seq, r).exists() for r in range(self.world))

    def time_left(self) -> float:
        """Seconds left of the pool launch's time limit, counted from its submission (so a
        queue wait counts against it: never more than the backend grants)."""
        return float(self.launch.timeout) - (time.monotonic() - self.started)

    def log_sizes(self) -> dict[str, int]:
        out = {}
        for log in ResultsDir(self.launch.results_dir).iter_logs():
            try:
                out[log.name] = log.stat().st_size
            except OSError:
                continue
        return out

    def log_text_since(self, sizes: Mapping[str, int]) -> str:
        """What the pool's logs (the launcher's first) gained since ``sizes`` were taken."""
        logs = sorted(ResultsDir(self.launch.results_dir).iter_logs(),
                      key=lambda p: (not p.name.startswith("launcher"), p.name))
        parts = []
        for log in logs:
            try:
                with open(log, "rb") as fh:
                    fh.seek(sizes.get(log.name, 0))
                    text = fh.read().decode("utf-8", "replace")
            except OSError:
                continue
            if text.strip():
                parts.append(text if log.name.startswith("launcher") else f"==> pool {log.name} <==\n{text}")
        return "\n".join(parts)
