"""The Kubernetes backend against a REAL cluster. Skipped unless ``KUBECONFIG`` is set.

Configuration (environment):

* ``KUBECONFIG`` -- the cluster (the current context is used);
* ``RUNNER_K8S_NAMESPACE`` -- namespace to use (default ``default``);
* ``RUNNER_K8S_IMAGE`` -- an image with python, torch and this project installed; without it
  only the server-side dry run runs;
* ``RUNNER_K8S_PVC`` and ``RUNNER_K8S_RESULTS_MOUNT`` -- a ReadWriteMany claim and the path
  where this machine sees its root: needed for the end-to-end run (the pods write the
  results dir there, the runner reads it here).
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import pytest

from runner.run.backend import job_name
from runner.records import Launch, Outcome

pytestmark = [
    pytest.mark.real_cluster,
    pytest.mark.skipif(not os.environ.get("KUBECONFIG"), reason="needs a real cluster: set KUBECONFIG"),
]
pytest.importorskip("kubernetes")

from backends.kubernetes.backend import KubernetesBackend  # noqa: E402

NAMESPACE = os.environ.get("RUNNER_K8S_NAMESPACE", "default")
IMAGE = os.environ.get("RUNNER_K8S_IMAGE")
PVC = os.environ.get("RUNNER_K8S_PVC")
MOUNT = os.environ.get("RUNNER_K8S_RESULTS_MOUNT")


def _launch(results_dir: str, nodes: int = 2) -> Launch:
    case = "specs/real.yaml::k8s_real_allreduce"
    return Launch(case_id=case, name="main", kind="test", entry="test_kubernetes_standin:allreduce_payload",
                  args={}, nodes=nodes, nproc_per_node=1, gpus_per_node=0, env={"OMP_NUM_THREADS": "1"},
                  timeout=300, results_dir=results_dir, job_name=job_name(case, "main"))


def test_server_side_dry_run_accepts_the_manifests() -> None:
    """The real API server validates (and admission webhooks see) both objects; nothing is created."""
    backend = KubernetesBackend({"namespace": NAMESPACE, "image": IMAGE or "busybox"})
    launch = _launch("/results/real/case/main")
    service, job = [d for d in __import__("yaml").safe_load_all(backend.render(launch).text) if d]
    batch, core = backend._clients()
    core.create_namespaced_service(NAMESPACE, service, dry_run="All")
    batch.create_namespaced_job(NAMESPACE, job, dry_run="All")


@pytest.mark.skipif(not (IMAGE and PVC and MOUNT), reason="set RUNNER_K8S_IMAGE, RUNNER_K8S_PVC, RUNNER_K8S_RESULTS_MOUNT")
def test_two_node_case_passes_on_the_cluster() -> None:
    root = Path(tempfile.mkdtemp(prefix="k8s-real-", dir=MOUNT))
    rdir = root / "case" / "main"
    rdir.mkdir(parents=True)
    launch = _launch(str(rdir))
    (rdir / "launch.json").write_text(json.dumps(launch.to_json()))
    backend = KubernetesBackend({"namespace": NAMESPACE, "image": IMAGE, "pvc": PVC, "results_mount": MOUNT})
    handle = backend.submit(launch)
    deadline = time.monotonic() + launch.timeout
    while True:
        time.sleep(backend.poll_interval)
        if backend.poll([handle])[handle.id].done:
            break
        if time.monotonic() > deadline and handle.cancel_reason is None:
            backend.cancel(handle, "timeout")
    outcome = backend.collect(handle)
    assert outcome.outcome is Outcome.COMPLETED, (outcome.detail, outcome.log_tail)
