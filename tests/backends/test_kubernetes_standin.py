"""The Kubernetes backend's whole client flow against the stand-in API server.

Labelled honestly: this is NOT a Kubernetes cluster. ``tests/fakes/k8s/`` serves the
subset of the API the backend uses over HTTP on 127.0.0.1, validates every object against
the real schemas, and runs each pod as a local process (see its docstring for what it does
and does not emulate). The backend talks to it through the real ``kubernetes`` client,
configured by a kubeconfig file, exactly as it would talk to a cluster.

The functions at the top are the in-rank payloads (``entry`` of the launches).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from runner.run.backend import Handle
from runner.records import Launch, LaunchOutcome, Outcome

pytest.importorskip("kubernetes")
from backends.kubernetes.backend import KubernetesBackend  # noqa: E402
from fakes.k8s import StandInCluster, StandInUnavailable  # noqa: E402
from fakes.net import free_port  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


# -- payloads run inside the pods' ranks ----------------------------------------------------------
def allreduce_payload(ctx: Any) -> None:
    """Records where it ran and checks a real all-reduce across the nodes."""
    import torch
    import torch.distributed as dist

    ctx.init_distributed()
    t = torch.tensor([float(ctx.rank + 1)])
    dist.all_reduce(t)
    expected = ctx.world_size * (ctx.world_size + 1) / 2
    assert t.item() == expected, (t.item(), expected)
    ctx.record("hostname", socket.gethostname())
    ctx.record("job_completion_index", os.environ.get("JOB_COMPLETION_INDEX"))
    ctx.record("group_rank", os.environ.get("GROUP_RANK"))
    ctx.record("allreduce", t.item())


def sleep_payload(ctx: Any) -> None:
    time.sleep(float(ctx.args.get("seconds", 3600)))


def exit_payload(ctx: Any) -> None:
    if ctx.rank == int(ctx.args.get("rank", 0)):
        raise SystemExit(int(ctx.args["code"]))
    time.sleep(float(ctx.args.get("others_sleep", 0)))


# -- helpers --------------------------------------------------------------------------------------
@pytest.fixture
def cluster(tmp_path: Path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "tests"), str(Path(__file__).resolve().parent)] +
                                        ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    before = Path("/etc/hosts").read_bytes()
    c = StandInCluster(workdir=tmp_path / "standin", image_env=env,
                       unpullable_images=frozenset({"registry.invalid/missing:1"}))
    try:
        c.start()
    except StandInUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield c
    finally:
        c.stop()
        assert Path("/etc/hosts").read_bytes() == before, "/etc/hosts not restored"


def make_backend(cluster: StandInCluster, tmp_path: Path, **opts: str) -> KubernetesBackend:
    kubeconfig = cluster.write_kubeconfig(tmp_path / "kubeconfig")
    base = {"kubeconfig": str(kubeconfig), "image": "local", "rdzv_port": str(free_port()),
            "poll_interval": "0.3"}
    base.update(opts)
    return KubernetesBackend(base)


def make_launch(tmp_path: Path, entry: str, *, nodes: int = 2, nproc: int = 1, timeout: float = 60,
                args: dict[str, Any] | None = None, case: str = "k8s/case", name: str = "main") -> Launch:
    rdir = tmp_path / "results" / case.replace("/", "_") / name
    rdir.mkdir(parents=True)
    launch = Launch(case_id=f"specs/k8s.yaml::{case}", name=name, kind="test", entry=entry,
                    args=args or {}, nodes=nodes, nproc_per_node=nproc, gpus_per_node=0,
                    env={"OMP_NUM_THREADS": "1"}, timeout=timeout, results_dir=str(rdir),
                    job_name=("c-" + case.replace("/", "-").replace("_", "-") + "-" + name)[:63])
    (rdir / "launch.json").write_text(json.dumps(launch.to_json()))
    return launch


def drive(backend: KubernetesBackend, launch: Launch, *, on_running=None, limit: float = 90,
          runner_timeout: float | None = None) -> tuple[Handle, LaunchOutcome]:
    """What the runner's scheduler does with one launch: submit, batched polls, cancel at
    the time limit, collect."""
    handle = backend.submit(launch)
    started = time.monotonic()
    hard = started + limit
    while time.monotonic() < hard:
        time.sleep(backend.poll_interval)
        state = backend.poll([handle])[handle.id]
        if on_running is not None and state.state == "RUNNING":
            on_running(handle)
            on_running = None
        if state.done:
            return handle, backend.collect(handle)
        limit_s = launch.timeout if runner_timeout is None else runner_timeout
        if handle.cancel_reason is None and time.monotonic() - started > limit_s:
            backend.cancel(handle, "timeout")
    backend.cancel(handle, "interrupt")
    raise AssertionError(f"launch did not finish within {limit}s")


def assert_nothing_left(cluster: StandInCluster, handle: Handle) -> None:
    assert cluster.pods_of(handle.id) == []
    assert cluster.live_processes() == []
    assert ("default", handle.id) not in cluster.objects["jobs"]
    assert ("default", handle.id) not in cluster.objects["services"]


def wait_for(predicate, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached")


# -- tests ----------------------------------------------------------------------------------------
def test_two_node_torchrun_rendezvous_passes(cluster: StandInCluster, tmp_path: Path) -> None:
    backend = make_backend(cluster, tmp_path)
    launch = make_launch(tmp_path, "test_kubernetes_standin:allreduce_payload", nodes=2, nproc=1)
    handle, outcome = drive(backend, launch)
    logs = "".join(p.read_text() for p in Path(launch.results_dir, "logs").glob("*.log"))
    assert outcome.outcome is Outcome.COMPLETED, (outcome.detail, logs)
    assert outcome.exit_code == 0
    from runner.results import ResultsDir

    info = ResultsDir(launch.results_dir).info()
    assert sorted(info) == [0, 1]
    assert {info[r]["group_rank"] for r in info} == {"0", "1"}
    assert {info[r]["job_completion_index"] for r in info} == {"0", "1"}
    assert all(info[r]["allreduce"] == 3.0 for r in info)
    if cluster.isolate_hostname:   # each pod saw its own hostname <job>-<index>
        assert {info[r]["hostname"] for r in info} == {f"{handle.id}-0", f"{handle.id}-1"}
    for index in (0, 1):
        assert Path(launch.results_dir, "logs", f"launcher-pod{index}.log").is_file()
    # both objects were received and validated against the real schemas
    kinds = sorted(o["kind"] for o in cluster.validated)
    assert kinds == ["Job", "Service"]
    assert_nothing_left(cluster, handle)


def test_runner_time_limit_cancels_and_leaves_nothing(cluster: StandInCluster, tmp_path: Path) -> None:
    backend = make_backend(cluster, tmp_path)
    launch = make_launch(tmp_path, "test_kubernetes_standin:sleep_payload", nodes=2, timeout=60)
    handle, outcome = drive(backend, launch, runner_timeout=6)
    assert outcome.outcome is Outcome.TIMEOUT, outcome.detail
    assert handle.cancel_reason == "timeout"
    # the Job was deleted with propagation: no pod, no process of it is left
    assert_nothing_left(cluster, handle)
    deletes = [q for m, p, q in cluster.requests if m == "DELETE" and "/jobs/" in p]
    assert deletes, "the Job was never deleted"


def test_active_deadline_is_a_timeout(cluster: StandInCluster, tmp_path: Path) -> None:
    backend = make_backend(cluster, tmp_path)
    launch = make_launch(tmp_path, "test_kubernetes_standin:sleep_payload", nodes=1, timeout=4)
    handle, outcome = drive(backend, launch, runner_timeout=120)   # Kubernetes enforces it first
    assert handle.state.failed_reason == "DeadlineExceeded"
    assert outcome.outcome is Outcome.TIMEOUT, outcome.detail
    assert_nothing_left(cluster, handle)


def test_pod_failure_is_an_error_with_exit_code(cluster: StandInCluster, tmp_path: Path) -> None:
    backend = make_backend(cluster, tmp_path)
    launch = make_launch(tmp_path, "test_kubernetes_standin:exit_payload", nodes=2,
                         args={"code": 3, "rank": 1, "others_sleep": 60})
    handle, outcome = drive(backend, launch)
    assert outcome.outcome is Outcome.ERROR, outcome.detail
    assert outcome.failed_rank == 1
    assert "SystemExit(3)" in outcome.detail
    assert outcome.exit_code not in (None, 0)        # torchrun's exit status, from the pod
    assert handle.state.failed_reason == "PodFailurePolicy"
    # torchrun's own report of the failed rank, saved from the pod log
    assert "exitcode" in Path(launch.results_dir, "logs", "launcher-pod1.log").read_text()
    assert_nothing_left(cluster, handle)


def test_oom_killed_pod_is_an_error_named_oomkilled(cluster: StandInCluster, tmp_path: Path) -> None:
    backend = make_backend(cluster, tmp_path)
    launch = make_launch(tmp_path, "test_kubernetes_standin:sleep_payload", nodes=1)
    handle, outcome = drive(backend, launch, on_running=lambda h: cluster.oom_kill(h.id, 0))
    assert outcome.outcome is Outcome.ERROR, outcome.detail
    assert outcome.detail.startswith("OOMKilled"), outcome.detail
    assert outcome.exit_code == 137
    assert_nothing_left(cluster, handle)


def test_evicted_pod_is_infra(cluster: StandInCluster, tmp_path: Path) -> None:
    backend = make_backend(cluster, tmp_path)
    launch = make_launch(tmp_path, "test_kubernetes_standin:sleep_payload", nodes=2)
    handle, outcome = drive(backend, launch, on_running=lambda h: cluster.evict(h.id, 1))
    assert outcome.outcome is Outcome.INFRA, outcome.detail
    assert "index 1" in outcome.detail and "Evicted" in outcome.detail
    assert_nothing_left(cluster, handle)


def test_image_pull_failure_is_infra_and_polling_is_batched(cluster: StandInCluster, tmp_path: Path) -> None:
    backend = make_backend(cluster, tmp_path, image="registry.invalid/missing:1")
    launches = [make_launch(tmp_path, "test_kubernetes_standin:sleep_payload", nodes=2, case=f"k8s/pull{i}")
                for i in range(3)]
    handles = [backend.submit(launch) for launch in launches]
    wait_for(lambda: all(len(cluster.pods_of(h.id)) == 2 for h in handles))
    time.sleep(1.2)   # ErrImagePull -> ImagePullBackOff
    jobs_before = cluster.count("GET", r"/jobs$")
    pods_before = cluster.count("GET", r"/pods$")
    states = backend.poll(handles)
    # ONE Job list and ONE Pod list for all three jobs
    assert cluster.count("GET", r"/jobs$") - jobs_before == 1
    assert cluster.count("GET", r"/pods$") - pods_before == 1
    assert all(states[h.id].done and states[h.id].state == "INFRA" for h in handles), states
    for h in handles:
        outcome = backend.collect(h)
        assert outcome.outcome is Outcome.INFRA
        assert "ImagePullBackOff" in outcome.detail or "ErrImagePull" in outcome.detail
        assert "registry.invalid/missing:1" in outcome.detail
        assert "waiting to start" in Path(h.launch.results_dir, "logs", "launcher-pod0.log").read_text()
        assert_nothing_left(cluster, h)
    assert not cluster.objects["jobs"] and not cluster.objects["services"] and not cluster.objects["pods"]


def test_unschedulable_pod_is_infra_after_pending_timeout(cluster: StandInCluster, tmp_path: Path) -> None:
    backend = make_backend(cluster, tmp_path, node_selector="gpu.example/model=h100", pending_timeout="1")
    launch = make_launch(tmp_path, "test_kubernetes_standin:sleep_payload", nodes=1)
    handle, outcome = drive(backend, launch)
    assert outcome.outcome is Outcome.INFRA, outcome.detail
    assert "unschedulable" in outcome.detail and "didn't match" in outcome.detail
    assert_nothing_left(cluster, handle)


def test_job_deleted_from_outside_is_infra(cluster: StandInCluster, tmp_path: Path) -> None:
    backend = make_backend(cluster, tmp_path)
    launch = make_launch(tmp_path, "test_kubernetes_standin:sleep_payload", nodes=1)

    def delete_outside(h: Handle) -> None:   # kubectl delete job --cascade=foreground
        cluster.delete("jobs", "default", h.id, "Foreground")

    handle, outcome = drive(backend, launch, on_running=delete_outside)
    assert outcome.outcome is Outcome.INFRA, outcome.detail
    assert "deleted outside" in outcome.detail
    assert_nothing_left(cluster, handle)


HOSTILE = "two nodes; touch PWNED $(touch PWNED2) `touch PWNED3` ' \" $HOME"


def test_cli_runs_a_two_node_case_through_the_kubernetes_backend(cluster: StandInCluster, tmp_path: Path) -> None:
    """``runner run --backend kubernetes`` end to end: spec -> Indexed Job -> 2 pods -> PASSED.
    The case name is hostile: it must not run anything, anywhere."""
    (tmp_path / "allreduce.py").write_text(
        "import torch, torch.distributed as dist\n"
        "dist.init_process_group('gloo')\n"
        "t = torch.ones(1)\n"
        "dist.all_reduce(t)\n"
        "assert t.item() == dist.get_world_size() == 2, t\n"
        "dist.destroy_process_group()\n")
    spec = tmp_path / "k8s.yaml"
    spec.write_text(json.dumps({"cases": [{
        "name": HOSTILE, "kind": "script", "timeout": 60,
        "resources": {"nodes": 2, "nproc_per_node": 1},
        "env": {"OMP_NUM_THREADS": "1"},
        "args": {"script": "allreduce.py", "metrics": "none"}}]}))
    kubeconfig = cluster.write_kubeconfig(tmp_path / "kubeconfig")
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "runner", "run", str(spec), "--backend", "kubernetes",
           "--backend-opt", f"kubeconfig={kubeconfig}", "--backend-opt", "image=local",
           "--backend-opt", f"rdzv_port={free_port()}", "--backend-opt", "poll_interval=0.3",
           "--results-dir", str(tmp_path / "results"), "--json", str(report)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(report.read_text())
    cases = data["cases"] if isinstance(data, dict) else data
    assert [c["verdict"] for c in cases] == ["PASSED"], cases
    assert not list(tmp_path.rglob("PWNED*")) and not list(cluster.workdir.rglob("PWNED*"))
    assert not list(REPO.glob("PWNED*"))
    kinds = sorted(o["kind"] for o in cluster.validated)
    assert kinds == ["Job", "Service"]
    job = next(o for o in cluster.validated if o["kind"] == "Job")
    assert job["metadata"]["annotations"]["dist-spec-runner/case-id"].endswith(HOSTILE)
    assert cluster.live_processes() == [] and not cluster.objects["pods"]
