"""Warm worker pools, launcher side: cases of one shape run in one started world of ranks.

``PoolingBackend`` wraps any backend for one scheduler run (the local one, Slurm,
Kubernetes: each offers ``pooled(poolable)``). A launch whose case kind is ``poolable`` goes
to a pool of its shape — nodes x processes per node x GPUs per node, platform, and the same
environment (everything but the per-launch ``RUNNER_*`` names) — and every other launch
straight to the wrapped backend. A pool is itself a launch of the wrapped backend (entry
``runner.worker.pool:serve``, results under ``<results root>/.pools/``), so it gets that
backend's process ownership or job tagging, GPU slices, logs and time limit.

Per case the dispatcher writes ``task-{N}.json`` into the pool's spool folder; the case is
done when every rank wrote its completion record in the case's own results dir, exactly as a
fresh launch's ranks do, and ``collect`` classifies it with the same ``outcome_from_records``.
A pool whose rank failed or hung is torn down (the case is ERROR or TIMEOUT, its pool log
copied into the case's ``logs/launcher.log`` for the root cause); the next case of that shape
starts a fresh pool. A pool that dies before its ranks were ready for a case (start-up
failure, or the previous case left the state unclean) costs that case nothing: the case runs
again on a fresh pool, or, when a fresh pool cannot start either, as an ordinary launch with
pooling off for that shape. A pool whose backend reports an infrastructure failure (a node
failure, a lost job, its own time limit) while it runs a case makes that case INFRA, which
the scheduler retries per ``retries``.

``PoolSettings`` (``runner.run.pools``) says how many pools of a shape may run at once (a
cluster backend: one allocation serves the cases of its shape in turn), how long a pool may
live, and how the ranks watch the spool.
"""
from __future__ import annotations

import itertools
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from runner.errors import UsageError
from runner.records import Launch, LaunchOutcome, Outcome
from runner.results import ResultsDir, write_json_atomic
from runner.run.backend import Backend, Capacity, Handle, JobState, Rendered, outcome_from_records
from runner.run.pools import PER_LAUNCH_ENV, POOL_LIFETIME_S, Pool, PoolSettings, ShapeKey, shape_key
from runner.worker.pool import task_file

#: idle pools kept warm at once (the least recently used beyond that is stopped)
MAX_IDLE_POOLS = 2
#: how long a pool may take to stop after its stop task before it is cancelled (seconds)
STOP_WAIT_S = 10.0
#: how long a pool may live on after a rank's error record before it is cancelled (seconds)
ERROR_GRACE_S = 15.0

__all__ = ["ERROR_GRACE_S", "MAX_IDLE_POOLS", "PER_LAUNCH_ENV", "POOL_LIFETIME_S", "STOP_WAIT_S", "Pool",
           "PoolSettings", "PoolingBackend", "pooled", "shape_key"]


class PoolingBackend(Backend):
    """A backend wrapper that runs poolable launches in warm pools (see the module doc)."""

    id = "pooled"

    def __new__(cls, inner: Backend, poolable: Callable[[Launch], bool],
                settings: PoolSettings | None = None) -> "PoolingBackend":
        # ``id`` and ``poll_interval`` are class attributes of a Backend: each wrapper is an
        # instance of its own subclass that carries the wrapped backend's id (reports name the
        # real backend) and a poll interval of at most 50 ms
        own = type(cls.__name__, (cls,), {"id": inner.id, "poll_interval": min(0.05, inner.poll_interval),
                                          "__module__": cls.__module__, "__qualname__": cls.__qualname__})
        return super().__new__(own)

    def __init__(self, inner: Backend, poolable: Callable[[Launch], bool],
                 settings: PoolSettings | None = None) -> None:
        super().__init__({})
        self.inner = inner
        self.poolable = poolable
        self.settings = settings or PoolSettings()
        self.pools: list[Pool] = []
        self.waiting: list[Handle] = []      # pooled cases not dispatched yet (settings.per_shape)
        self.broken: set[ShapeKey] = set()   # shapes whose pool could not start: run unpooled
        self._numbers = itertools.count(1)
        self._stopping: list[tuple[Pool, float]] = []
        self._states: dict[str, JobState] = {}
        self._polled_at = float("-inf")
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
    def _start_pool(self, first: Launch, serves: Sequence[Launch] = ()) -> Pool:
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
        s = self.settings
        args: dict[str, Any] = {"spool": str(spool), "group_timeout_s": max(3600.0, first.timeout)}
        if s.idle_poll_s != PoolSettings.idle_poll_s or s.shared_fs:
            args.update(idle_poll_s=s.idle_poll_s, shared_fs=s.shared_fs)
        launch = Launch(case_id=f"pool-{number}", name="pool", kind="pool", entry="runner.worker.pool:serve",
                        args=args, nodes=first.nodes, nproc_per_node=first.nproc_per_node,
                        gpus_per_node=first.gpus_per_node, env=env,
                        timeout=s.time_limit(list(serves) or [first]), results_dir=str(root / "run"),
                        job_name=f"runner-pool-{number}", platform=first.platform, results_root=first.results_root)
        Path(launch.results_dir).mkdir(parents=True)
        write_json_atomic(Path(launch.results_dir) / "launch.json", launch.to_json())
        handle = self.inner.submit(launch)
        pool = Pool(number, shape_key(first), spool, launch, handle, world=first.world_size, shared_fs=s.shared_fs)
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

    def _inner_poll(self, handles: Sequence[Handle]) -> dict[str, JobState]:
        """One batched poll of the wrapped backend; with per-shape limits (a cluster backend)
        at most one per its own poll interval, the states in between from the last answer."""
        if not handles:
            return {}
        if not self.settings.queued:
            return dict(self.inner.poll(handles))
        now = time.monotonic()
        if now - self._polled_at < self.inner.poll_interval and all(h.id in self._states for h in handles):
            return {h.id: self._states[h.id] for h in handles}
        self._states = dict(self.inner.poll(handles))
        self._polled_at = now
        return dict(self._states)

    def _reap_stopping(self, states: Mapping[str, JobState] | None = None, *, wait: bool = False) -> None:
        """Pools told to stop: drop the finished, cancel the late (wait: until all are gone)."""
        deadline = time.monotonic() + STOP_WAIT_S + 30
        while self._stopping:
            if states is None:
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
            states = None
            time.sleep(self.inner.poll_interval)

    def _pool_for(self, launch: Launch) -> Pool:
        key = shape_key(launch)
        for pool in self.pools:
            if pool.key == key and pool.busy is None and not pool.dead:
                return pool
        return self._start_pool(launch)

    def _idle_pool(self, launch: Launch) -> Pool | None:
        key = shape_key(launch)
        for pool in self.pools:
            if pool.key != key or pool.busy is not None or pool.dead:
                continue
            if self.settings.time_cap is not None and pool.time_left() < float(launch.timeout):
                self._stop_pool(pool)   # its allocation ends before this case could: a fresh one
                continue
            return pool
        return None

    def _pump(self) -> None:
        """Dispatch waiting cases to idle pools of their shape, or start pools within the limit."""
        for h in list(self.waiting):
            key = shape_key(h.launch)
            if key in self.broken:           # no pool of this shape could start: run it fresh
                self.waiting.remove(h)
                try:
                    h.data["delegate"] = self.inner.submit(h.launch)
                except (UsageError, OSError) as exc:
                    h.data["failed"] = f"cannot submit the case: {exc}"
                continue
            pool = self._idle_pool(h.launch)
            if pool is None:
                live = sum(1 for p in self.pools if p.key == key and not p.dead)
                if self.settings.per_shape is not None and live >= self.settings.per_shape:
                    continue
                serves = [w.launch for w in self.waiting if shape_key(w.launch) == key]
                try:
                    pool = self._start_pool(h.launch, serves)
                except (UsageError, OSError) as exc:
                    self.waiting.remove(h)
                    h.data["failed"] = f"cannot start a pool for this case: {exc}"
                    continue
            self.waiting.remove(h)
            self._dispatch(pool, h)

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
                        submitted_at=time.monotonic(), data={"pooled": True, "restarts": 0, "delegate": None})
        if self.settings.queued:
            self.waiting.append(handle)   # dispatched at the next poll, with the rest of its shape
        else:
            self._dispatch(self._pool_for(launch), handle)
        return handle

    def poll(self, handles: Sequence[Handle]) -> Mapping[str, JobState]:
        if self.settings.queued:
            self._pump()
        direct = [h for h in handles if not h.data.get("pooled")]
        delegated = [h.data["delegate"] for h in handles if h.data.get("pooled") and h.data["delegate"]]
        pooled = [h for h in handles if h.data.get("pooled") and not h.data["delegate"] and "pool" in h.data
                  and h not in self.waiting]
        pool_handles = [h.data["pool"].handle for h in pooled]
        stopping = [p.handle for p, _ in self._stopping]
        states = self._inner_poll(direct + delegated + pool_handles + stopping)
        self._reap_stopping(states)
        out: dict[str, JobState] = {h.id: states[h.id] for h in direct if h.id in states}
        for h in handles:
            if not h.data.get("pooled"):
                continue
            if h.data["delegate"] is not None:
                out[h.id] = states.get(h.data["delegate"].id, JobState(False, "SUBMITTED"))
            elif "failed" in h.data or "gone" in h.data:
                out[h.id] = JobState(True, "FAILED" if "failed" in h.data else "CANCELLED")
            elif h in self.waiting:
                out[h.id] = JobState(False, "PENDING", "waiting for a pool of its shape")
        for h in pooled:
            out[h.id] = self._poll_pooled(h, states.get(h.data["pool"].handle.id, JobState(False)))
        return out

    def _poll_pooled(self, h: Handle, pool_state: JobState) -> JobState:
        pool: Pool = h.data["pool"]
        records = _records(h)
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
            self._dispatch(self._start_pool(h.launch, [h.launch]), h)
            return
        # a fresh pool did not start either: this shape runs unpooled from now on
        self.broken.add(shape_key(h.launch))
        h.data["delegate"] = self.inner.submit(h.launch)

    def cancel(self, handle: Handle, reason: str) -> None:
        if handle.data.get("pooled") and self.settings.queued and handle.data["delegate"] is None:
            if handle in self.waiting:
                if reason != "timeout":      # its time counts from its dispatch
                    self.waiting.remove(handle)
                    handle.cancel_reason = reason
                    handle.data["gone"] = True
                return
            if ("dispatched" in handle.data and reason == "timeout"
                    and time.monotonic() - handle.data["dispatched"] < float(handle.launch.timeout)):
                return                       # waited for its pool first; the scheduler asks again
        handle.cancel_reason = handle.cancel_reason or reason
        if not handle.data.get("pooled"):
            self.inner.cancel(handle, reason)
        elif handle.data["delegate"] is not None:
            self.inner.cancel(handle.data["delegate"], reason)
        elif "pool" in handle.data:
            self.inner.cancel(handle.data["pool"].handle, reason)

    def collect(self, handle: Handle) -> LaunchOutcome:
        if not handle.data.get("pooled"):
            return self.inner.collect(handle)
        if handle.data["delegate"] is not None:
            return self.inner.collect(handle.data["delegate"])
        duration = time.monotonic() - handle.submitted_at
        if "failed" in handle.data:
            return LaunchOutcome(handle.launch, Outcome.INFRA, handle.data["failed"], duration=duration)
        if "pool" not in handle.data:        # cancelled while it waited for a pool
            return outcome_from_records(handle.launch, exit_code=None, duration=duration,
                                        cancel_reason=handle.cancel_reason)
        pool: Pool = handle.data["pool"]
        pool.busy = None
        pool.last_used = time.monotonic()
        exit_code: int | None = 0
        infra: str | None = None
        if pool.dead:
            pool_outcome = self.inner.collect(pool.handle)
            exit_code = pool_outcome.exit_code
            if handle.cancel_reason is None and (pool_outcome.outcome is Outcome.INFRA or (
                    pool_outcome.outcome is Outcome.TIMEOUT and pool.handle.cancel_reason is None)):
                infra = f"pool {pool.number} ({pool.handle.id}): {pool_outcome.detail}"
            # the pool's launcher and rank logs of this case's time: torchrun's root cause
            text = pool.log_text_since(handle.data["log_from"])
            logs = Path(handle.launch.results_dir) / "logs"
            logs.mkdir(parents=True, exist_ok=True)
            (logs / "launcher.log").write_text(text)
        outcome = outcome_from_records(handle.launch, exit_code=exit_code, duration=duration,
                                       cancel_reason=handle.cancel_reason, infra_reason=infra)
        if infra is not None and outcome.outcome is Outcome.ERROR:
            # ranks that lost the pool's allocation fail too; the infrastructure is the cause
            return LaunchOutcome(handle.launch, Outcome.INFRA, f"{infra}; {outcome.detail}",
                                 exit_code=exit_code, failed_rank=outcome.failed_rank,
                                 log_tail=outcome.log_tail, duration=duration)
        return outcome

    def close(self) -> None:
        """Stop every pool (their stop task first, then cancel) and wait until all are gone."""
        for h in list(self.waiting):
            self.waiting.remove(h)
            h.data["gone"] = True
        for pool in list(self.pools):
            if pool.busy is not None and not pool.dead:
                self.inner.cancel(pool.handle, "interrupt")
                pool.dead = True
                self._stopping.append((pool, time.monotonic() - STOP_WAIT_S))
            else:
                self._stop_pool(pool)
        self._reap_stopping(wait=True)


def pooled(inner: Backend, poolable: Callable[[Launch], bool], settings: PoolSettings | None = None) -> PoolingBackend:
    return PoolingBackend(inner, poolable, settings)


def _records(h: Handle) -> dict[int, dict[str, Any]]:
    return ResultsDir(h.launch.results_dir).completion_records()


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
