"""Warm worker pools, launcher side: cases of one shape run in one started torchrun world.

``PoolingBackend`` wraps a backend (the local one) for one scheduler run. A launch whose case
kind is ``poolable`` goes to a pool of its shape — nodes x processes per node x GPUs per node,
platform, and the same environment (everything but the per-launch ``RUNNER_*`` names) — and
every other launch straight to the wrapped backend. A pool is itself a launch of the wrapped
backend (entry ``runner.worker.pool:serve``, results under ``<results root>/.pools/``), so it
gets that backend's process ownership, GPU slices and logs.

Per case the dispatcher writes ``task-{N}.json`` into the pool's spool folder; the case is
done when every rank wrote its completion record in the case's own results dir, exactly as a
fresh launch's ranks do, and ``collect`` classifies it with the same ``outcome_from_records``.
A pool whose rank failed or hung is torn down (the case is ERROR or TIMEOUT, its pool log
copied into the case's ``logs/launcher.log`` for the root cause); the next case of that shape
starts a fresh pool. A pool that dies before its ranks were ready for a case (start-up
failure, or the previous case left the state unclean) costs that case nothing: the case runs
again on a fresh pool, or, when a fresh pool cannot start either, as an ordinary launch with
pooling off for that shape.
"""
from __future__ import annotations

import itertools
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from runner.records import Launch, LaunchOutcome
from runner.results import ResultsDir, write_json_atomic
from runner.run.backend import Backend, Capacity, Handle, JobState, Rendered, outcome_from_records
from runner.worker.pool import ready_file, task_file

#: idle pools kept warm at once (the least recently used beyond that is stopped)
MAX_IDLE_POOLS = 2
#: how long a pool may take to stop after its stop task before it is cancelled (seconds)
STOP_WAIT_S = 10.0
#: how long a pool may live on after a rank's error record before it is cancelled (seconds)
ERROR_GRACE_S = 15.0
#: the pool launch's own time limit (never reached: the runner times each case, not the pool)
POOL_LIFETIME_S = 10 * 86400.0
#: the per-launch names that differ between cases of one pool (set by the rank per task)
PER_LAUNCH_ENV = ("RUNNER_CASE_ID", "RUNNER_LAUNCH")

ShapeKey = tuple[Any, ...]


def shape_key(launch: Launch) -> ShapeKey:
    env = tuple(sorted((k, v) for k, v in launch.env.items() if k not in PER_LAUNCH_ENV))
    return (launch.nodes, launch.nproc_per_node, launch.gpus_per_node, launch.platform, env)


@dataclass
class Pool:
    number: int
    key: ShapeKey
    spool: Path
    launch: Launch
    handle: Handle
    world: int
    seq: int = 0                      # the next task number
    busy: Handle | None = None        # the case handle it runs now
    dead: bool = False
    last_used: float = field(default_factory=time.monotonic)

    def ready_for(self, seq: int) -> bool:
        return all(ready_file(self.spool, seq, r).exists() for r in range(self.world))

    def log_sizes(self) -> dict[str, int]:
        out = {}
        for log in ResultsDir(self.launch.results_dir).iter_logs():
            try:
                out[log.name] = log.stat().st_size
            except OSError:
                continue
        return out

    def log_text_since(self, sizes: Mapping[str, int]) -> str:
        """What the pool's logs (torchrun agent first) gained since ``sizes`` were taken."""
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


class PoolingBackend(Backend):
    """A backend wrapper that runs poolable launches in warm pools (see the module doc)."""

    id = "pooled"

    def __new__(cls, inner: Backend, poolable: Callable[[Launch], bool]) -> "PoolingBackend":
        # ``id`` and ``poll_interval`` are class attributes of a Backend: each wrapper is an
        # instance of its own subclass that carries the wrapped backend's id (reports name the
        # real backend) and a poll interval of at most 50 ms
        own = type(cls.__name__, (cls,), {"id": inner.id, "poll_interval": min(0.05, inner.poll_interval),
                                          "__module__": cls.__module__, "__qualname__": cls.__qualname__})
        return super().__new__(own)

    def __init__(self, inner: Backend, poolable: Callable[[Launch], bool]) -> None:
        super().__init__({})
        self.inner = inner
        self.poolable = poolable
        self.pools: list[Pool] = []
        self.broken: set[ShapeKey] = set()   # shapes whose pool could not start: run unpooled
        self._numbers = itertools.count(1)
        self.started = 0                     # pools started in this run

    # -- delegated parts of the contract -------------------------------------------------------
    def check(self) -> None:
        self.inner.check()

    def capacity(self) -> Capacity:
        return self.inner.capacity()

    def render(self, launch: Launch) -> Rendered:
        return self.inner.render(launch)

    def sweep(self, results_root: Any) -> list[str]:
        return self.inner.sweep(results_root)

    # -- pools ---------------------------------------------------------------------------------
    def _start_pool(self, first: Launch) -> Pool:
        if self.started == 0:
            _import_torch_in_background()
        number = next(self._numbers)
        self.started += 1
        root = Path(first.results_root or Path(first.results_dir).parent.parent) / ".pools" / f"pool-{number}"
        if root.exists():
            shutil.rmtree(root)
        spool = root / "spool"
        spool.mkdir(parents=True)
        env = {k: v for k, v in first.env.items() if k not in PER_LAUNCH_ENV}
        env.update({"RUNNER_CASE_ID": f"pool-{number}", "RUNNER_LAUNCH": "pool"})
        launch = Launch(case_id=f"pool-{number}", name="pool", kind="pool", entry="runner.worker.pool:serve",
                        args={"spool": str(spool), "group_timeout_s": max(3600.0, first.timeout)},
                        nodes=first.nodes, nproc_per_node=first.nproc_per_node, gpus_per_node=first.gpus_per_node,
                        env=env, timeout=POOL_LIFETIME_S, results_dir=str(root / "run"),
                        job_name=f"runner-pool-{number}", platform=first.platform, results_root=first.results_root)
        Path(launch.results_dir).mkdir(parents=True)
        write_json_atomic(Path(launch.results_dir) / "launch.json", launch.to_json())
        handle = self.inner.submit(launch)
        pool = Pool(number, shape_key(first), spool, launch, handle, world=first.world_size)
        self.pools.append(pool)
        self._trim_idle()
        return pool

    def _trim_idle(self) -> None:
        idle = sorted((p for p in self.pools if p.busy is None and not p.dead), key=lambda p: p.last_used)
        for pool in idle[:max(0, len(idle) - MAX_IDLE_POOLS)]:
            self._stop_pool(pool)

    def _stop_pool(self, pool: Pool) -> None:
        if not pool.dead:
            write_json_atomic(task_file(pool.spool, pool.seq), {"stop": True})
            pool.dead = True
            self._stopping.append((pool, time.monotonic()))

    @property
    def _stopping(self) -> list[tuple[Pool, float]]:
        return self.__dict__.setdefault("_stopping_list", [])

    def _reap_stopping(self, *, wait: bool = False) -> None:
        """Pools told to stop: drop the finished, cancel the late (wait: until all are gone)."""
        deadline = time.monotonic() + STOP_WAIT_S + 30
        while self._stopping:
            states = self.inner.poll([p.handle for p, _ in self._stopping])
            now = time.monotonic()
            for item in list(self._stopping):
                pool, since = item
                if states.get(pool.handle.id, JobState(True)).done:
                    self._stopping.remove(item)
                    if pool in self.pools:
                        self.pools.remove(pool)
                    self.inner.collect(pool.handle)
                elif now - since > STOP_WAIT_S and pool.handle.cancel_reason is None:
                    self.inner.cancel(pool.handle, "interrupt")
            if not wait or now > deadline:
                return
            time.sleep(self.inner.poll_interval)

    def _pool_for(self, launch: Launch) -> Pool:
        key = shape_key(launch)
        for pool in self.pools:
            if pool.key == key and pool.busy is None and not pool.dead:
                return pool
        return self._start_pool(launch)

    def _dispatch(self, pool: Pool, handle: Handle) -> None:
        pool.busy = handle
        handle.data.update(pool=pool, seq=pool.seq, delegate=None,
                           log_from=pool.log_sizes(), dispatched=time.monotonic())
        write_json_atomic(task_file(pool.spool, pool.seq),
                          {"launch": str(Path(handle.launch.results_dir) / "launch.json")})
        pool.seq += 1

    # -- the contract --------------------------------------------------------------------------
    def submit(self, launch: Launch) -> Handle:
        if not self.poolable(launch) or shape_key(launch) in self.broken:
            return self.inner.submit(launch)
        handle = Handle(id=f"pooled-{launch.job_name}-{time.monotonic_ns()}", launch=launch,
                        submitted_at=time.monotonic(), data={"pooled": True, "restarts": 0})
        self._dispatch(self._pool_for(launch), handle)
        return handle

    def poll(self, handles: Sequence[Handle]) -> Mapping[str, JobState]:
        self._reap_stopping()
        direct = [h for h in handles if not h.data.get("pooled")]
        delegated = [h.data["delegate"] for h in handles if h.data.get("pooled") and h.data["delegate"]]
        pooled = [h for h in handles if h.data.get("pooled") and not h.data["delegate"]]
        pool_handles = [h.data["pool"].handle for h in pooled]
        states = dict(self.inner.poll(direct + delegated + pool_handles)) if (direct or delegated or pool_handles) else {}
        out: dict[str, JobState] = {h.id: states[h.id] for h in direct if h.id in states}
        for h in handles:
            if h.data.get("pooled") and h.data["delegate"] is not None:
                out[h.id] = states.get(h.data["delegate"].id, JobState(False, "SUBMITTED"))
        for h in pooled:
            out[h.id] = self._poll_pooled(h, states.get(h.data["pool"].handle.id, JobState(False)))
        return out

    def _poll_pooled(self, h: Handle, pool_state: JobState) -> JobState:
        pool: Pool = h.data["pool"]
        records = ResultsDir(h.launch.results_dir).completion_records()
        if len(records) >= pool.world and all(r.get("status") == "ok" for r in records.values()):
            return JobState(True, "COMPLETED")
        if not pool_state.done:
            if any(r.get("status") != "ok" for r in records.values()):
                # the failing rank exits and torchrun stops its peers; make sure it does
                first = h.data.setdefault("error_seen", time.monotonic())
                if time.monotonic() - first > ERROR_GRACE_S and pool.handle.cancel_reason is None:
                    self.inner.cancel(pool.handle, "interrupt")
            return JobState(False, "RUNNING")
        # the pool is gone
        pool.dead = True
        if pool in self.pools:
            self.pools.remove(pool)
        if h.cancel_reason is None and not records and not pool.ready_for(h.data["seq"]):
            # it died before it was ready for this case: not the case's doing; run it again
            self.inner.collect(pool.handle)
            self._retry(h)
            return JobState(False, "RESTARTED")
        return JobState(True, "EXITED", pool_state.detail)

    def _retry(self, h: Handle) -> None:
        h.data["restarts"] += 1
        for item in Path(h.launch.results_dir).iterdir():   # what the gone pool's ranks began
            if item.name != "launch.json":
                shutil.rmtree(item, ignore_errors=True) if item.is_dir() else item.unlink(missing_ok=True)
        if h.data["restarts"] == 1:
            self._dispatch(self._start_pool(h.launch), h)
            return
        # a fresh pool did not start either: this shape runs unpooled from now on
        self.broken.add(shape_key(h.launch))
        h.data["delegate"] = self.inner.submit(h.launch)

    def cancel(self, handle: Handle, reason: str) -> None:
        handle.cancel_reason = handle.cancel_reason or reason
        if not handle.data.get("pooled"):
            self.inner.cancel(handle, reason)
        elif handle.data["delegate"] is not None:
            self.inner.cancel(handle.data["delegate"], reason)
        else:
            self.inner.cancel(handle.data["pool"].handle, reason)

    def collect(self, handle: Handle) -> LaunchOutcome:
        if not handle.data.get("pooled"):
            return self.inner.collect(handle)
        if handle.data["delegate"] is not None:
            return self.inner.collect(handle.data["delegate"])
        pool: Pool = handle.data["pool"]
        pool.busy = None
        pool.last_used = time.monotonic()
        exit_code: int | None = 0
        if pool.dead:
            pool_outcome = self.inner.collect(pool.handle)
            exit_code = pool_outcome.exit_code
            # the pool's launcher and rank logs of this case's time: torchrun's root cause
            text = pool.log_text_since(handle.data["log_from"])
            logs = Path(handle.launch.results_dir) / "logs"
            logs.mkdir(parents=True, exist_ok=True)
            (logs / "launcher.log").write_text(text)
        return outcome_from_records(handle.launch, exit_code=exit_code,
                                    duration=time.monotonic() - handle.submitted_at,
                                    cancel_reason=handle.cancel_reason)

    def close(self) -> None:
        """Stop every pool (their stop task first, then cancel) and wait until all are gone."""
        for pool in list(self.pools):
            if pool.busy is not None and not pool.dead:
                self.inner.cancel(pool.handle, "interrupt")
                pool.dead = True
                self._stopping.append((pool, time.monotonic() - STOP_WAIT_S))
            else:
                self._stop_pool(pool)
        self._reap_stopping(wait=True)


def pooled(inner: Backend, poolable: Callable[[Launch], bool]) -> PoolingBackend:
    return PoolingBackend(inner, poolable)


def _import_torch_in_background() -> None:
    """Poolable kinds compare tensor captures, which imports torch in the runner process (1-2 s
    idle, far more under load) when the first case ends; importing it while the pool starts
    keeps that off the path between cases."""
    import threading

    def target() -> None:
        try:
            import torch  # noqa: F401
        except Exception:  # noqa: BLE001 - the comparison will say what is wrong
            pass

    threading.Thread(target=target, name="runner-import-torch", daemon=True).start()
