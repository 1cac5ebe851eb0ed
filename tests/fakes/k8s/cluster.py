"""The stand-in cluster: its object store, the API operations, the test controls, and the
control loop that drives the kubelet and the Job controller (see ``fakes.k8s``)."""
from __future__ import annotations

import copy
import json
import os
import re
import secrets
import signal
import sys
import threading
import uuid
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import kubernetes_validate

from fakes.k8s.common import INDEX_KEY, NODE_NAME, ApiError, now_iso, parse_selector, selector_matches
from fakes.k8s.controller import JobController
from fakes.k8s.hosts import HostsFile
from fakes.k8s.http import make_handler
from fakes.k8s.kubelet import Kubelet, PodRuntime, can_unshare_uts, marked_pids, signal_all
from fakes.k8s.validation import semantic_errors


class StandInUnavailable(RuntimeError):
    """The stand-in cannot run here (not root: /etc/hosts cannot be edited)."""


@dataclass
class StandInCluster:
    """Run with ``with StandInCluster(workdir=...) as cluster:`` or start()/stop()."""

    workdir: Path
    k8s_version: str = field(default_factory=kubernetes_validate.latest_version)
    image_env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    unpullable_images: frozenset[str] = frozenset()
    node_labels: dict[str, str] = field(default_factory=lambda: {
        "kubernetes.io/hostname": NODE_NAME, "kubernetes.io/os": "linux"})
    node_gpus: int = 0
    max_grace: float = 5.0
    hosts_path: Path = Path("/etc/hosts")
    isolate_hostname: bool | None = None

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.lock = threading.RLock()
        self.objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {"jobs": {}, "services": {}, "pods": {}}
        self.runtimes: dict[str, PodRuntime] = {}
        self.job_state: dict[str, dict[str, Any]] = {}     # Job uid -> controller bookkeeping
        self.requests: list[tuple[str, str, str]] = []
        self.validated: list[dict[str, Any]] = []
        self._rv = 0
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self.hosts: HostsFile | None = None
        self.tag = secrets.token_hex(4)
        self.kubelet = Kubelet(self)
        self.jobs = JobController(self)

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> "StandInCluster":
        if os.geteuid() != 0 or not os.access(self.hosts_path, os.W_OK):
            raise StandInUnavailable(f"the stand-in edits {self.hosts_path} so pod names resolve: run as root")
        if self.isolate_hostname is None:
            self.isolate_hostname = can_unshare_uts()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.hosts = HostsFile(self.hosts_path, self.tag)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(self))
        self._server.daemon_threads = True
        for target in (self._server.serve_forever, self._control_loop):
            t = threading.Thread(target=target, daemon=True, name=f"k8s-standin-{target.__name__}")
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for t in self._threads:
            t.join(timeout=10)
        with self.lock:
            for rt in self.runtimes.values():
                signal_all(rt.uid, signal.SIGKILL)
                if rt.proc is not None:
                    try:
                        rt.proc.kill()
                    except ProcessLookupError:
                        pass
                    rt.proc.wait(timeout=10)
        if self.hosts is not None:
            self.hosts.restore()
            self.hosts = None

    def __enter__(self) -> "StandInCluster":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        """A kubeconfig pointing the real client at this server (no credentials)."""
        cfg = {
            "apiVersion": "v1", "kind": "Config", "current-context": "standin",
            "clusters": [{"name": "standin", "cluster": {"server": self.url}}],
            "users": [{"name": "standin", "user": {}}],
            "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "standin",
                                                           "namespace": namespace}}],
        }
        path.write_text(json.dumps(cfg, indent=2))   # JSON is YAML
        return path

    # -- test controls --------------------------------------------------------------------------
    def pods_of(self, job: str, namespace: str = "default") -> list[dict[str, Any]]:
        with self.lock:
            return [copy.deepcopy(p) for (ns, _), p in self.objects["pods"].items()
                    if ns == namespace and p["metadata"]["labels"].get("job-name") == job]

    def _running_pod(self, job: str, index: int, namespace: str) -> dict[str, Any]:
        for (ns, _), pod in self.objects["pods"].items():
            labels = pod["metadata"]["labels"]
            if (ns == namespace and labels.get("job-name") == job and labels.get(INDEX_KEY) == str(index)
                    and pod["status"]["phase"] in ("Pending", "Running")):
                return pod
        raise KeyError(f"no live pod of job {job} index {index}")

    def evict(self, job: str, index: int, namespace: str = "default",
              message: str = "The node was low on resource: memory.") -> str:
        """What the kubelet's eviction manager does: kill the pod, phase Failed, reason
        Evicted, condition DisruptionTarget=True (reason TerminationByKubelet)."""
        with self.lock:
            pod = self._running_pod(job, index, namespace)
            rt = self.runtimes[pod["metadata"]["uid"]]
            rt.kill_reason = "Evicted"
            pod["status"]["reason"] = "Evicted"
            pod["status"]["message"] = message
            pod["status"]["conditions"].append({"type": "DisruptionTarget", "status": "True",
                                                "reason": "TerminationByKubelet", "message": message,
                                                "lastTransitionTime": now_iso()})
            self.kubelet.terminate(rt, 0.0)
            return pod["metadata"]["name"]

    def oom_kill(self, job: str, index: int, namespace: str = "default") -> str:
        with self.lock:
            pod = self._running_pod(job, index, namespace)
            rt = self.runtimes[pod["metadata"]["uid"]]
            rt.kill_reason = "OOMKilled"
            self.kubelet.terminate(rt, 0.0)
            return pod["metadata"]["name"]

    def live_processes(self) -> list[int]:
        with self.lock:
            uids = list(self.runtimes)
        return [pid for uid in uids for pid in marked_pids(uid)]

    def count(self, method: str, path_regex: str) -> int:
        rx = re.compile(path_regex)
        return sum(1 for m, p, _ in list(self.requests) if m == method and rx.search(p))

    # -- API ------------------------------------------------------------------------------------
    def next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _validate(self, obj: dict[str, Any], kind: str, ns: str) -> None:
        try:
            kubernetes_validate.validate(obj, self.k8s_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            raise ApiError(422, "Invalid", f"{kind} is invalid: {path}: {exc.message}") from None
        errors = semantic_errors(obj, kind)
        meta = obj.get("metadata", {})
        if meta.get("namespace", ns) != ns:
            errors.append("metadata.namespace: does not match the request's namespace")
        if errors:
            raise ApiError(422, "Invalid", f"{kind} {meta.get('name')!r} is invalid: " + "; ".join(errors))
        self.validated.append(copy.deepcopy(obj))

    def create(self, plural: str, ns: str, body: dict[str, Any]) -> dict[str, Any]:
        kind = {"jobs": "Job", "services": "Service"}[plural]
        if body.get("kind") != kind:
            raise ApiError(400, "BadRequest", f"expected kind {kind}, got {body.get('kind')!r}")
        self._validate(body, kind, ns)
        with self.lock:
            name = body["metadata"]["name"]
            if (ns, name) in self.objects[plural]:
                raise ApiError(409, "AlreadyExists", f'{plural}.{"batch" if plural == "jobs" else ""} "{name}" already exists')
            obj = copy.deepcopy(body)
            meta = obj["metadata"]
            meta.update(namespace=ns, uid=str(uuid.uuid4()), creationTimestamp=now_iso(),
                        resourceVersion=self.next_rv(), generation=1)
            if plural == "jobs":
                spec = obj["spec"]
                spec.setdefault("parallelism", 1)
                spec.setdefault("completions", spec["parallelism"])
                spec.setdefault("backoffLimit", 6)
                spec.setdefault("completionMode", "NonIndexed")
                uid = meta["uid"]
                sel = {"batch.kubernetes.io/controller-uid": uid}
                spec["selector"] = {"matchLabels": sel}
                tmeta = spec["template"].setdefault("metadata", {})
                tmeta.setdefault("labels", {}).update({**sel, "controller-uid": uid, "job-name": name,
                                                       "batch.kubernetes.io/job-name": name})
                obj["status"] = {}
            elif plural == "services":
                obj["spec"].setdefault("type", "ClusterIP")
                obj["status"] = {"loadBalancer": {}}
            self.objects[plural][(ns, name)] = obj
            return copy.deepcopy(obj)

    def get(self, plural: str, ns: str, name: str) -> dict[str, Any]:
        with self.lock:
            obj = self.objects[plural].get((ns, name))
            if obj is None:
                raise ApiError(404, "NotFound", f'{plural} "{name}" not found')
            return copy.deepcopy(obj)

    def list(self, plural: str, ns: str, selector: str) -> dict[str, Any]:
        reqs = parse_selector(selector)
        kind, version = {"jobs": ("JobList", "batch/v1"), "services": ("ServiceList", "v1"),
                         "pods": ("PodList", "v1")}[plural]
        with self.lock:
            items = [copy.deepcopy(o) for (ons, _), o in sorted(self.objects[plural].items())
                     if ons == ns and selector_matches(reqs, o["metadata"].get("labels") or {})]
            return {"kind": kind, "apiVersion": version, "metadata": {"resourceVersion": str(self._rv)},
                    "items": items}

    def delete(self, plural: str, ns: str, name: str, propagation: str | None) -> dict[str, Any]:
        with self.lock:
            obj = self.objects[plural].get((ns, name))
            if obj is None:
                raise ApiError(404, "NotFound", f'{plural} "{name}" not found')
            if plural == "jobs":
                policy = propagation or "Orphan"      # the API's default for batch/v1 Jobs
                pods = [p for p in self.objects["pods"].values()
                        if p["metadata"]["labels"].get("controller-uid") == obj["metadata"]["uid"]]
                if policy == "Orphan":
                    for p in pods:
                        p["metadata"].pop("ownerReferences", None)
                    del self.objects["jobs"][(ns, name)]
                else:
                    for p in pods:
                        self.kubelet.delete_pod(p)
                    if policy == "Foreground" and pods:
                        obj["metadata"]["deletionTimestamp"] = now_iso()
                        obj["metadata"]["finalizers"] = ["foregroundDeletion"]
                    else:
                        del self.objects["jobs"][(ns, name)]
            elif plural == "pods":
                self.kubelet.delete_pod(obj)
            else:
                del self.objects[plural][(ns, name)]
            return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                    "details": {"name": name, "kind": plural, "uid": obj["metadata"]["uid"]}}

    def pod_log(self, ns: str, name: str, container: str | None, previous: bool, tail: int | None) -> bytes:
        with self.lock:
            pod = self.objects["pods"].get((ns, name))
            if pod is None:
                raise ApiError(404, "NotFound", f'pods "{name}" not found')
            cname = pod["spec"]["containers"][0]["name"]
            if container not in (None, cname):
                raise ApiError(400, "BadRequest", f"container {container} is not valid for pod {name}")
            statuses = pod["status"].get("containerStatuses") or []
            if previous:
                if not statuses or not statuses[0].get("restartCount"):
                    raise ApiError(400, "BadRequest",
                                   f'previous terminated container "{cname}" in pod "{name}" not found')
            rt = self.runtimes.get(pod["metadata"]["uid"])
            if rt is None or rt.proc is None:
                waiting = (statuses[0]["state"].get("waiting") or {}) if statuses else {}
                raise ApiError(400, "BadRequest", f'container "{cname}" in pod "{name}" is waiting to start: '
                                                  f'{waiting.get("reason", "ContainerCreating")}')
            data = rt.log_path.read_bytes() if rt.log_path.exists() else b""
        if tail is not None:
            data = b"".join(data.splitlines(keepends=True)[-tail:]) if tail > 0 else b""
        return data

    # -- controllers ----------------------------------------------------------------------------
    def _control_loop(self) -> None:
        while not self._stop.is_set():
            try:
                with self.lock:
                    self._reconcile()
            except Exception as exc:  # noqa: BLE001 - keep the control loop alive, report
                print(f"k8s-standin: control loop error: {type(exc).__name__}: {exc}", file=sys.stderr)
            self._stop.wait(0.1)

    def _reconcile(self) -> None:
        for pod in list(self.objects["pods"].values()):
            self.kubelet.sync(pod)
        for job in list(self.objects["jobs"].values()):
            self.jobs.sync(job)
        self._sync_hosts()

    def _sync_hosts(self) -> None:
        names: set[str] = set()
        services = self.objects["services"]
        for (ns, _), pod in self.objects["pods"].items():
            spec = pod["spec"]
            host = spec.get("hostname")
            if not host or pod["status"].get("phase") not in ("Pending", "Running"):
                continue
            names.add(host)
            sub = spec.get("subdomain")
            svc = services.get((ns, sub)) if sub else None
            if svc and svc["spec"].get("clusterIP") == "None" and svc["spec"].get("selector") and \
                    selector_matches([("=", k, v) for k, v in svc["spec"]["selector"].items()],
                                     pod["metadata"]["labels"]):
                names.update({f"{host}.{sub}", f"{host}.{sub}.{ns}.svc", f"{host}.{sub}.{ns}.svc.cluster.local"})
        if self.hosts is not None:
            self.hosts.set(names)
