"""Warm worker pools on the Kubernetes backend, against the stand-in API server of
``tests/fakes/k8s/`` (NOT a Kubernetes cluster: it validates the objects against the real
schemas and runs each pod as a local process; see its docstring).

The launches go through ``KubernetesBackend.pooled`` the way the scheduler drives a backend:
every launch submitted at once, one batched poll per interval, cancel at the case's time
limit (counted from its dispatch to the pool), collect. Three cases of one shape run in ONE
Indexed Job (the same rank processes) whose ``activeDeadlineSeconds`` is the sum of their
timeouts; an evicted pool pod is INFRA for the case it ran, and the next case gets a fresh
pool; nothing is left once the pools are closed.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

import pytest

from runner.records import Launch, LaunchOutcome, Outcome
from runner.results import ResultsDir

pytest.importorskip("kubernetes")
from test_kubernetes_standin import cluster, make_backend  # noqa: E402,F401 - the fixture

pytestmark = pytest.mark.slow


def pid_payload(ctx: Any) -> None:
    """One all-reduce; records the rank's pid. ``args.wait_for``: wait for that file first."""
    import torch
    import torch.distributed as dist

    ctx.init_distributed()
    open(ctx.results_dir / f"started-rank{ctx.rank}", "w").close()
    while ctx.args.get("wait_for") and not os.path.exists(ctx.args["wait_for"]):
        time.sleep(0.2)
    t = torch.tensor([float(ctx.rank + 1)])
    dist.all_reduce(t)
    ctx.record("pid", os.getpid())
    ctx.record("sum", t.item())


def launches(tmp_path: Path, n: int, *, timeout: float = 60, args: dict[str, Any] | None = None) -> list[Launch]:
    root = tmp_path / "results"
    out = []
    for i in range(n):
        rdir = root / f"case{i}" / "main"
        rdir.mkdir(parents=True)
        launch = Launch(case_id=f"specs/k8s.yaml::case{i}", name="main", kind="test",
                        entry="test_kubernetes_pools:pid_payload", args=dict(args or {}) if i == 0 else {},
                        nodes=2, nproc_per_node=1, gpus_per_node=0, env={"OMP_NUM_THREADS": "1"},
                        timeout=timeout, results_dir=str(rdir), job_name=f"c-case{i}-main",
                        results_root=str(root))
        (rdir / "launch.json").write_text(json.dumps(launch.to_json()))
        out.append(launch)
    return out


def drive_all(backend: Any, todo: Sequence[Launch], *, limit: float = 240,
              on_running: Any = None) -> list[LaunchOutcome]:
    """The scheduler's loop for launches submitted at once."""
    handles = [backend.submit(la) for la in todo]
    started = time.monotonic()
    outcomes: dict[str, LaunchOutcome] = {}
    while len(outcomes) < len(handles):
        assert time.monotonic() - started < limit, f"not done within {limit}s"
        time.sleep(backend.poll_interval)
        live = [h for h in handles if h.id not in outcomes]
        states = backend.poll(live)
        if on_running is not None and on_running(handles):
            on_running = None
        for h in live:
            if states[h.id].done:
                outcomes[h.id] = backend.collect(h)
            elif h.cancel_reason is None and time.monotonic() - started > h.launch.timeout:
                backend.cancel(h, "timeout")
    return [outcomes[h.id] for h in handles]


def jobs_created(cluster: Any) -> list[dict[str, Any]]:
    return [o for o in cluster.validated if o["kind"] == "Job"]


def pids(launch: Launch) -> set[int]:
    return {rec["pid"] for rec in ResultsDir(launch.results_dir).info().values()}


def assert_nothing_left(cluster: Any) -> None:
    deadline = time.monotonic() + 30
    while cluster.live_processes() or cluster.objects["jobs"]:
        assert time.monotonic() < deadline, (cluster.live_processes(), list(cluster.objects["jobs"]))
        time.sleep(0.2)


def test_cases_of_one_shape_run_in_one_indexed_job(cluster: Any, tmp_path: Path) -> None:
    backend = make_backend(cluster, tmp_path).pooled(lambda launch: True)
    todo = launches(tmp_path, 3)
    try:
        outcomes = drive_all(backend, todo)
    finally:
        backend.close()
    assert [o.outcome for o in outcomes] == [Outcome.COMPLETED] * 3, [o.detail for o in outcomes]
    assert pids(todo[0]) == pids(todo[1]) == pids(todo[2]) and len(pids(todo[0])) == 2
    (job,) = jobs_created(cluster)
    assert job["metadata"]["name"].startswith("runner-pool-1")
    assert job["spec"]["activeDeadlineSeconds"] == 3 * 60    # the sum of its cases' timeouts
    assert_nothing_left(cluster)


def test_an_evicted_pool_pod_is_infra_for_its_case_and_the_next_gets_a_fresh_pool(cluster: Any,
                                                                                  tmp_path: Path) -> None:
    backend = make_backend(cluster, tmp_path).pooled(lambda launch: True)
    todo = launches(tmp_path, 2, args={"wait_for": str(tmp_path / "never")})
    first = Path(todo[0].results_dir)

    def evict_when_running(handles: Any) -> bool:
        if len(list(first.glob("started-rank*"))) < 2:
            return False
        cluster.evict(backend.pools[0].handle.id, 1)
        return True

    try:
        outcomes = drive_all(backend, todo, on_running=evict_when_running)
    finally:
        backend.close()
    assert outcomes[0].outcome is Outcome.INFRA, outcomes[0].detail
    assert "pool 1" in outcomes[0].detail
    assert outcomes[1].outcome is Outcome.COMPLETED, outcomes[1].detail
    assert len(jobs_created(cluster)) == 2
    assert_nothing_left(cluster)
