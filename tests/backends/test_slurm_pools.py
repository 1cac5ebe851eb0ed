"""Warm worker pools on a real Slurm cluster (munge, slurmctld, two slurmd nodes on this host).

Poolable cases are ``equivalence`` cases over a small all-reduce step (user code written
into the test's folder): on ``--backend slurm`` the cases of one shape run in ONE allocation
(one pool job, the same rank processes), with the verdicts ``--no-reuse`` gives; a rank
that raises, and one that hangs past its timeout, cost only their own case and the next case
runs on a fresh pool; a pool allocation cancelled from outside is INFRA for the case it ran,
retried per ``retries``; Ctrl-C leaves nothing behind. After every run no job of its results
root is left in the queue. Run under ``flock /tmp/slurm-tests.lock`` (one cluster at a time).
"""
from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from backends.slurm.script import format_time_limit
from runner.run.lock import root_tag
from test_slurm_e2e import ROOT, runner_env, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

# setup/reference/candidate of the equivalence kind; params.action plants a failure in the
# candidate of rank 1 (raise, hang) or makes every rank wait for a marker file first
USER_CODE = '''
import os, time
import torch, torch.distributed as dist


def setup(ctx, params):
    return {"x": torch.arange(4, dtype=torch.float32) + ctx.rank, "params": params, "ctx": ctx}


def _step(state):
    t = state["x"].clone()
    dist.all_reduce(t)
    return {"sum": t, "pid": torch.tensor([os.getpid()])}


def reference(ctx, state):
    return {"sum": _step(state)["sum"]}


def candidate(ctx, state):
    params = state["params"]
    action = params.get("action", "ok")
    out = str(ctx.results_dir)
    with open(os.path.join(out, f"rank{ctx.rank}.job"), "w") as fh:
        fh.write(f"{os.environ.get('SLURM_JOB_ID', '?')} {os.getpid()}")
    if action == "wait":
        open(os.path.join(out, f"started-rank{ctx.rank}"), "w").close()
        while not os.path.exists(params["marker"]):
            time.sleep(0.2)
    if ctx.rank == 1 and action == "raise":
        raise RuntimeError("planted failure in rank 1")
    if ctx.rank == 1 and action == "hang":
        while True:
            time.sleep(1)
    return {"sum": _step(state)["sum"]}
'''


def write_suite(tmp_path: Path, cases: list[dict[str, Any]], timeout: int = 120) -> Path:
    (tmp_path / "user_code.py").write_text(USER_CODE)
    spec = tmp_path / "pools.yaml"
    body = {
        "defaults": {"kind": "equivalence", "timeout": timeout, "resources": {"nodes": 1, "nproc_per_node": 2},
                     "args": {"setup": "user_code.py:setup", "reference": "user_code.py:reference",
                              "candidate": "user_code.py:candidate"}},
        "cases": [{"name": c["name"], **({"timeout": c["timeout"]} if "timeout" in c else {}),
                   **({"retries": c["retries"]} if "retries" in c else {}),
                   "args": {"params": c.get("params", {})}} for c in cases],
    }
    spec.write_text(json.dumps(body))
    return spec


def argv(spec: Path, tmp_path: Path, name: str, *extra: str) -> list[str]:
    return ["python", "-m", "runner", "run", str(spec), "--backend", "slurm", "--platform", "cpu",
            "--results-dir", str(tmp_path / name), "--json", str(tmp_path / f"{name}.json"), *extra]


def run(cluster: Any, spec: Path, tmp_path: Path, name: str, *extra: str,
        timeout: float = 900) -> tuple[subprocess.CompletedProcess[str], dict[str, dict[str, Any]]]:
    proc = subprocess.run(argv(spec, tmp_path, name, *extra), env=runner_env(cluster), cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    report = tmp_path / f"{name}.json"
    assert report.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, {c["name"]: c for c in json.loads(report.read_text())["cases"]}


def jobs_of_root(cluster: Any, results: Path) -> dict[str, tuple[str, str]]:
    """Every Slurm job this results root submitted (the runner tags each with the root's tag in
    its comment; finished jobs stay listed for MinJobAge): job id -> (name, state)."""
    proc = cluster.run("squeue", "--noheader", "--states=all", "--format=%i|%j|%T|%k")
    assert proc.returncode == 0, proc.stderr
    tag = f"dist-spec-runner:{root_tag(results)}:"
    out = {}
    for row in proc.stdout.splitlines():
        job_id, name, state, comment = (row.strip().split("|") + ["", "", ""])[:4]
        if comment.startswith(tag):
            out[job_id] = (name, state)
    return out


def assert_queue_empty(cluster: Any, results: Path, wait: float = 30.0) -> dict[str, tuple[str, str]]:
    deadline = time.monotonic() + wait
    while True:
        jobs = jobs_of_root(cluster, results)
        active = {j: s for j, s in jobs.items() if s[1] in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING")}
        if not active:
            return jobs
        if time.monotonic() > deadline:
            pytest.fail(f"left in the queue after the runner exited: {active}")
        time.sleep(0.5)


def ranks_of(case: dict[str, Any]) -> set[tuple[str, str]]:
    """(Slurm job id, pid) of the ranks that ran the case's candidate."""
    rd = Path(case["launches"][0]["results_dir"])
    return {tuple(f.read_text().split()) for f in rd.glob("rank*.job")}  # type: ignore[misc]


def test_pooled_suite_runs_in_one_allocation_with_the_no_reuse_verdicts(slurm_cluster: Any, tmp_path: Path) -> None:
    spec = write_suite(tmp_path, [{"name": f"allreduce_{i}"} for i in range(3)])
    pooled, cases = run(slurm_cluster, spec, tmp_path, "pooled")
    assert pooled.returncode == 0, pooled.stdout[-3000:] + pooled.stderr[-3000:]
    assert {n: c["verdict"] for n, c in cases.items()} == {f"allreduce_{i}": "PASSED" for i in range(3)}
    assert {c["backend"] for c in cases.values()} == {"slurm"}
    # ONE allocation: one job of this results root, a pool, and every case ran in its ranks
    jobs = assert_queue_empty(slurm_cluster, tmp_path / "pooled")
    assert [name for name, _ in jobs.values()] == ["runner-pool-1"], jobs
    (job_id,) = jobs
    ranks = [ranks_of(c) for c in cases.values()]
    assert ranks[0] == ranks[1] == ranks[2] and {j for j, _ in ranks[0]} == {job_id}, ranks
    # the pool asked for the sum of its cases' timeouts (plus the backend's margin of 60 s)
    script = (tmp_path / "pooled" / ".pools" / "pool-1" / "run" / "slurm-job.sh").read_text()
    assert f"#SBATCH --time={format_time_limit(3 * 120 + 60)}" in script, script

    fresh, fresh_cases = run(slurm_cluster, spec, tmp_path, "fresh", "--no-reuse")
    assert fresh.returncode == 0, fresh.stdout[-3000:] + fresh.stderr[-3000:]
    assert {n: c["verdict"] for n, c in fresh_cases.items()} == {n: c["verdict"] for n, c in cases.items()}
    fresh_jobs = assert_queue_empty(slurm_cluster, tmp_path / "fresh")
    assert len(fresh_jobs) == 3 and not any(name.startswith("runner-pool") for name, _ in fresh_jobs.values())
    assert len({j for c in fresh_cases.values() for j, _ in ranks_of(c)}) == 3


def test_a_raising_and_a_hanging_rank_cost_only_their_case(slurm_cluster: Any, tmp_path: Path) -> None:
    spec = write_suite(tmp_path, [
        {"name": "a_first"},
        {"name": "b_raises", "params": {"action": "raise"}},
        {"name": "c_after_raise"},
        {"name": "d_hangs", "params": {"action": "hang"}, "timeout": 30},
        {"name": "e_after_hang"},
    ])
    proc, cases = run(slurm_cluster, spec, tmp_path, "faults")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert {n: c["verdict"] for n, c in cases.items()} == {
        "a_first": "PASSED", "b_raises": "ERROR", "c_after_raise": "PASSED", "d_hangs": "TIMEOUT",
        "e_after_hang": "PASSED"}, proc.stdout[-3000:]
    assert "planted failure in rank 1" in cases["b_raises"]["detail"], cases["b_raises"]["detail"]
    raised = json.loads((Path(cases["b_raises"]["launches"][0]["results_dir"]) / "done" / "rank1.json").read_text())
    assert raised["status"] == "error" and "planted failure in rank 1" in raised["exception"], raised
    assert "time limit of 30s reached" in cases["d_hangs"]["detail"]
    # the failing cases shared their pool with the case before them; the next ran on a fresh one
    jobs = {n: {j for j, _ in ranks_of(c)} for n, c in cases.items()}
    assert jobs["a_first"] == jobs["b_raises"], jobs
    assert jobs["c_after_raise"] == jobs["d_hangs"] and jobs["c_after_raise"] != jobs["a_first"], jobs
    assert jobs["e_after_hang"] not in (jobs["a_first"], jobs["c_after_raise"]), jobs
    all_jobs = assert_queue_empty(slurm_cluster, tmp_path / "faults")
    assert sorted(name for name, _ in all_jobs.values()) == ["runner-pool-1", "runner-pool-2", "runner-pool-3"]


def test_a_pool_allocation_cancelled_outside_is_infra_for_its_case_and_retried(slurm_cluster: Any,
                                                                                tmp_path: Path) -> None:
    marker = tmp_path / "go"
    spec = write_suite(tmp_path, [{"name": "waits", "retries": 1, "params": {"action": "wait", "marker": str(marker)}},
                                  {"name": "after"}])
    proc = subprocess.Popen(argv(spec, tmp_path, "infra"), env=runner_env(slurm_cluster), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        results = tmp_path / "infra"
        wait_for(lambda: len(list(results.glob("*/main/started-rank*"))) == 2, 300, "the case to run", proc)
        (pool_job,) = jobs_of_root(slurm_cluster, results)
        marker.touch()            # the retried attempt goes straight through
        assert slurm_cluster.run("scancel", pool_job).returncode == 0
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    cases = {c["name"]: c for c in json.loads((tmp_path / "infra.json").read_text())["cases"]}
    assert cases["waits"]["verdict"] == "PASSED" and cases["after"]["verdict"] == "PASSED", out
    attempts = [la.get("attempts") for la in cases["waits"]["launches"]]
    assert attempts == [2], cases["waits"]
    first_try = Path(cases["waits"]["launches"][0]["results_dir"] + ".attempt1")
    assert first_try.is_dir(), "the INFRA attempt's results are kept"
    assert pool_job not in {j for j, _ in ranks_of(cases["waits"])}
    assert_queue_empty(slurm_cluster, results)


def test_ctrl_c_leaves_no_pool_in_the_queue(slurm_cluster: Any, tmp_path: Path) -> None:
    spec = write_suite(tmp_path, [{"name": "waits", "params": {"action": "wait", "marker": str(tmp_path / "never")}},
                                  {"name": "queued_behind"}])
    proc = subprocess.Popen(argv(spec, tmp_path, "ctrlc"), env=runner_env(slurm_cluster), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        results = tmp_path / "ctrlc"
        wait_for(lambda: len(list(results.glob("*/main/started-rank*"))) == 2, 300, "the case to run", proc)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 2, out[-3000:] + err[-3000:]
    cases = {c["name"]: c for c in json.loads((tmp_path / "ctrlc.json").read_text())["cases"]}
    assert {n: c["verdict"] for n, c in cases.items()} == {"waits": "INTERRUPTED", "queued_behind": "INTERRUPTED"}
    jobs = assert_queue_empty(slurm_cluster, results)
    assert [name for name, _ in jobs.values()] == ["runner-pool-1"], jobs


def test_pools_off_by_option_runs_every_launch_fresh(slurm_cluster: Any, tmp_path: Path) -> None:
    spec = write_suite(tmp_path, [{"name": "one"}, {"name": "two"}])
    proc, cases = run(slurm_cluster, spec, tmp_path, "off", "--backend-opt", "pools=0")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = assert_queue_empty(slurm_cluster, tmp_path / "off")
    assert len(jobs) == 2 and not (tmp_path / "off" / ".pools").exists(), jobs
