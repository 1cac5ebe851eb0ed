"""A stand-in Kubernetes API server for the tests. It is NOT Kubernetes.

Why: no Kubernetes control plane can run on the CI machines, yet the backend's whole
client flow (the official ``kubernetes`` client over HTTP, create / list / logs / delete,
failure classification) and a real multi-node torchrun rendezvous through the rendered
manifests must be exercised. This module serves, on ``http://127.0.0.1:<random port>``
(``ThreadingHTTPServer``, no auth, no TLS), the subset of the API the backend calls:

* ``batch/v1`` Jobs: create, get, list (label selector), delete (``propagationPolicy``
  Orphan -- the API's default for Jobs --, Background, Foreground);
* ``v1`` Services: create, get, list, delete;
* ``v1`` Pods: get, list (label selector), ``/log`` (``container``, ``previous``, ``tailLines``).

What it emulates honestly:

* Every object it receives is validated with ``kubernetes_validate`` (strict: unknown
  fields rejected) against the real OpenAPI schemas of ``k8s_version``, plus a few of the
  API server's semantic checks (DNS-1123 names, label syntax, env names, Indexed Jobs'
  hostnames <= 63, podFailurePolicy needing ``restartPolicy: Never``); failures are 422s
  with the validator's message, so the client sees what a real server would refuse.
* A Job controller: pods ``<job>-<index>-<random>`` for an Indexed Job with the Job's
  labels/annotations, the completion-index annotation and label, ``hostname <job>-<index>``
  and ``subdomain``; ``parallelism``/``completions``; ``backoffLimit``;
  ``activeDeadlineSeconds`` (-> Failed/DeadlineExceeded, pods killed); ``podFailurePolicy``
  rules ``onExitCodes``/``onPodConditions`` with actions FailJob / Ignore (pod replaced) /
  Count; conditions FailureTarget -> Failed once the pods are gone, SuccessCriteriaMet ->
  Complete; ``status.active/ready/succeeded/failed/completedIndexes``.
* A one-node "kubelet": each pod is scheduled onto one node with ``node_labels`` and
  ``node_gpus`` (a nodeSelector that does not match or more ``nvidia.com/gpu`` than the node
  has -> Pending/Unschedulable, like the real scheduler's message); images listed in
  ``unpullable_images`` -> waiting ``ErrImagePull`` then ``ImagePullBackOff``; otherwise the
  container's ``command``+``args`` run as ONE LOCAL PROCESS per pod, with Kubernetes'
  ``$(VAR)`` expansion, the declared ``env`` (``value``, ``fieldRef`` on metadata, annotations,
  labels, ``status.podIP``, ``spec.nodeName``), ``JOB_COMPLETION_INDEX`` and ``HOSTNAME``.
  Exit status -> ``terminated`` (exitCode, reason Completed/Error/OOMKilled; a signal N ->
  128+N) and pod phase Succeeded/Failed. Deleting a pod sends SIGTERM, then SIGKILL after
  ``min(terminationGracePeriodSeconds, max_grace)``. A "container" is every process that
  carries the pod's marker variable (found through ``/proc/*/environ``), because torchrun
  starts its workers in new sessions: all of them are killed with the pod, and when the
  main process exits, like a container's PID namespace going away.
* Hostnames and DNS: when running as root with ``unshare`` available, each pod process runs
  in its own UTS namespace with ``hostname <job>-<index>`` (what a pod sees). Names resolve
  through ``/etc/hosts``: the stand-in adds, for the test's duration, lines mapping each
  pod's hostname and -- only while a Service named like the pod's ``subdomain`` exists and
  selects the pod, as cluster DNS would -- ``<hostname>.<subdomain>[.<ns>.svc[.cluster.local]]``
  to 127.0.0.1. Every line it adds carries a marker; ``stop()`` removes them and writes the
  file's original bytes back when nobody else changed it meanwhile (else it only removes
  its own lines). Without root the stand-in refuses to start (``StandInUnavailable``).
* Test controls: ``evict(job, index)`` (pod killed, phase Failed, reason Evicted,
  condition DisruptionTarget -- what the kubelet's eviction manager does), ``oom_kill``
  (SIGKILL, reason OOMKilled, exitCode 137), ``live_processes()``, ``requests`` (every
  request seen, to check the backend batches its polling).

What it does NOT emulate: images (every pod runs this machine's Python with ``image_env``
as the image's environment; the image name is only checked against ``unpullable_images``),
volumes (every pod sees this machine's filesystem: PVCs, emptyDir and ``/dev/shm`` are not
created; a ``persistentVolumeClaim`` volume is accepted but not mounted), network isolation
(all pods share 127.0.0.1, so two pods cannot listen on the same port), resource limits
(CPU, memory, GPUs are not enforced), multiple nodes, restarts in place
(``restartPolicy: OnFailure``), watches, ``resourceVersion`` semantics, RBAC, admission,
events, finalizers other than foreground deletion, and most of the API.
"""
from __future__ import annotations

import copy
import fcntl
import json
import os
import re
import secrets
import shutil
import signal
import string
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

import kubernetes_validate

NODE_NAME = "standin-node"
INDEX_KEY = "batch.kubernetes.io/job-completion-index"
_MARKER_ENV = "K8S_STANDIN_POD_UID"
_SETHOSTNAME = ("import os, socket, sys; socket.sethostname(sys.argv[1]); "
                "os.execvp(sys.argv[2], sys.argv[2:])")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


class StandInUnavailable(RuntimeError):
    """The stand-in cannot run here (not root: /etc/hosts cannot be edited)."""


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def expand_k8s_vars(text: str, env: dict[str, str]) -> str:
    """Kubernetes' expansion of command/args/env values: ``$$`` -> ``$``, ``$(NAME)`` -> the
    variable when defined (else left as written), any other ``$`` kept."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "$" and i + 1 < n:
            nxt = text[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
                continue
            if nxt == "(":
                end = text.find(")", i + 2)
                if end != -1:
                    name = text[i + 2:end]
                    if name in env:
                        out.append(env[name])
                    else:
                        out.append(text[i:end + 1])
                    i = end + 1
                    continue
        out.append(c)
        i += 1
    return "".join(out)


def parse_selector(selector: str) -> list[tuple[str, str, str | None]]:
    """Equality-based label selectors: ``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``."""
    reqs: list[tuple[str, str, str | None]] = []
    for part in filter(None, (p.strip() for p in selector.split(","))):
        if " in " in part or " notin " in part:
            raise ApiError(400, "BadRequest", f"stand-in: set-based selector {part!r} not emulated")
        if "!=" in part:
            k, v = part.split("!=", 1)
            reqs.append(("!=", k.strip(), v.strip()))
        elif "==" in part:
            k, v = part.split("==", 1)
            reqs.append(("=", k.strip(), v.strip()))
        elif "=" in part:
            k, v = part.split("=", 1)
            reqs.append(("=", k.strip(), v.strip()))
        elif part.startswith("!"):
            reqs.append(("!", part[1:].strip(), None))
        else:
            reqs.append(("exists", part, None))
    return reqs


def selector_matches(reqs: list[tuple[str, str, str | None]], labels: dict[str, str]) -> bool:
    for op, key, value in reqs:
        if op == "=" and labels.get(key) != value:
            return False
        if op == "!=" and labels.get(key) == value:
            return False
        if op == "exists" and key not in labels:
            return False
        if op == "!" and key in labels:
            return False
    return True


# -- /etc/hosts ---------------------------------------------------------------------------------
class HostsFile:
    """Adds marked ``127.0.0.1 name`` lines to a hosts file and takes them out again.

    Edits happen in place (the file may be a bind mount) under an flock. ``restore`` writes
    the original bytes back when the only difference is our lines."""

    def __init__(self, path: Path, tag: str) -> None:
        self.path = path
        self.marker = f"# k8s-standin {tag}"
        self.original = path.read_bytes()
        self.current: tuple[str, ...] = ()

    def _edit(self, names: tuple[str, ...]) -> None:
        with open(self.path, "r+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                text = fh.read().decode()
                kept = [ln for ln in text.splitlines(keepends=True) if not ln.rstrip("\n").endswith(self.marker)]
                body = "".join(kept)
                if names:
                    if body and not body.endswith("\n"):
                        body += "\n"
                    body += "".join(f"127.0.0.1 {n} {self.marker}\n" for n in names)
                elif body.rstrip("\n") == self.original.decode().rstrip("\n"):
                    body = self.original.decode()
                fh.seek(0)
                fh.write(body.encode())
                fh.truncate()
                fh.flush()
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        self.current = names

    def set(self, names: set[str]) -> None:
        wanted = tuple(sorted(names))
        if wanted != self.current:
            self._edit(wanted)

    def restore(self) -> None:
        self._edit(())


# -- processes ----------------------------------------------------------------------------------
def marked_pids(uid: str) -> list[int]:
    """Every process carrying the pod's marker variable (the pod's "container")."""
    needle = f"{_MARKER_ENV}={uid}".encode() + b"\0"
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                if needle in fh.read():
                    out.append(int(entry))
        except OSError:
            continue
    return out


def _signal_all(uid: str, sig: int) -> None:
    for pid in marked_pids(uid):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


@dataclass
class PodRuntime:
    uid: str
    proc: subprocess.Popen[bytes] | None
    log_path: Path
    kill_reason: str | None = None       # "OOMKilled", "Evicted", ...
    kill_deadline: float | None = None   # SIGKILL after this
    exited: bool = False


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

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> "StandInCluster":
        if os.geteuid() != 0 or not os.access(self.hosts_path, os.W_OK):
            raise StandInUnavailable(f"the stand-in edits {self.hosts_path} so pod names resolve: run as root")
        if self.isolate_hostname is None:
            self.isolate_hostname = _can_unshare_uts()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.hosts = HostsFile(self.hosts_path, self.tag)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
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
                _signal_all(rt.uid, signal.SIGKILL)
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
            self._terminate(rt, 0.0)
            return pod["metadata"]["name"]

    def oom_kill(self, job: str, index: int, namespace: str = "default") -> str:
        with self.lock:
            pod = self._running_pod(job, index, namespace)
            rt = self.runtimes[pod["metadata"]["uid"]]
            rt.kill_reason = "OOMKilled"
            self._terminate(rt, 0.0)
            return pod["metadata"]["name"]

    def live_processes(self) -> list[int]:
        with self.lock:
            uids = list(self.runtimes)
        return [pid for uid in uids for pid in marked_pids(uid)]

    def count(self, method: str, path_regex: str) -> int:
        rx = re.compile(path_regex)
        return sum(1 for m, p, _ in list(self.requests) if m == method and rx.search(p))

    # -- API ------------------------------------------------------------------------------------
    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _validate(self, obj: dict[str, Any], kind: str, ns: str) -> None:
        try:
            kubernetes_validate.validate(obj, self.k8s_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            raise ApiError(422, "Invalid", f"{kind} is invalid: {path}: {exc.message}") from None
        errors = _semantic_errors(obj, kind)
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
                        resourceVersion=self._next_rv(), generation=1)
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
                        self._delete_pod(p)
                    if policy == "Foreground" and pods:
                        obj["metadata"]["deletionTimestamp"] = now_iso()
                        obj["metadata"]["finalizers"] = ["foregroundDeletion"]
                    else:
                        del self.objects["jobs"][(ns, name)]
            elif plural == "pods":
                self._delete_pod(obj)
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
            self._kubelet(pod)
        for job in list(self.objects["jobs"].values()):
            self._job_controller(job)
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

    # kubelet: one node, pods run as local processes
    def _kubelet(self, pod: dict[str, Any]) -> None:
        meta, spec, status = pod["metadata"], pod["spec"], pod["status"]
        uid = meta["uid"]
        rt = self.runtimes.get(uid)
        if meta.get("deletionTimestamp"):
            if rt is None or rt.exited or rt.proc is None or rt.proc.poll() is not None:
                if rt is not None and rt.proc is not None:
                    _signal_all(uid, signal.SIGKILL)
                del self.objects["pods"][(meta["namespace"], meta["name"])]
                return
        if rt is None:
            self._start_pod(pod)
            return
        if rt.proc is None:
            if status["phase"] == "Pending":
                cs = status["containerStatuses"][0]
                waiting = cs["state"].get("waiting") or {}
                if waiting.get("reason") == "ErrImagePull" and _age_s(status.get("startTime")) >= 1:
                    cs["state"]["waiting"] = {"reason": "ImagePullBackOff",
                                              "message": f'Back-off pulling image "{cs["image"]}"'}
            return
        if rt.kill_deadline is not None and time.time() >= rt.kill_deadline:
            _signal_all(uid, signal.SIGKILL)
            rt.kill_deadline = None
        if rt.exited:
            return
        rc = rt.proc.poll()
        if rc is None:
            return
        rt.exited = True
        _signal_all(uid, signal.SIGKILL)    # the container's other processes go with it
        code = rc if rc >= 0 else 128 - rc
        reason = "Completed" if code == 0 else "Error"
        if rt.kill_reason == "OOMKilled":
            reason, code = "OOMKilled", 137
        cs = status["containerStatuses"][0]
        cs.update(ready=False, started=False, state={"terminated": {
            "exitCode": code, "reason": reason, "startedAt": cs["state"].get("running", {}).get("startedAt", now_iso()),
            "finishedAt": now_iso(), "containerID": cs.get("containerID", "")}})
        status["phase"] = "Succeeded" if code == 0 and rt.kill_reason is None else "Failed"
        for cond in status["conditions"]:
            if cond["type"] in ("Ready", "ContainersReady"):
                cond.update(status="False", reason="PodCompleted" if code == 0 else "PodFailed",
                            lastTransitionTime=now_iso())
        meta["resourceVersion"] = self._next_rv()

    def _schedule_problem(self, spec: dict[str, Any]) -> str | None:
        sel = spec.get("nodeSelector") or {}
        if any(self.node_labels.get(k) != v for k, v in sel.items()):
            return "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
        want = 0
        for c in spec["containers"]:
            limits = (c.get("resources") or {}).get("limits") or {}
            want += int(limits.get("nvidia.com/gpu", 0))
        if want > self.node_gpus:
            return "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."
        return None

    def _start_pod(self, pod: dict[str, Any]) -> None:
        meta, spec, status = pod["metadata"], pod["spec"], pod["status"]
        container = spec["containers"][0]
        problem = self._schedule_problem(spec)
        if problem:
            if not status["conditions"]:
                status["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                         "message": problem, "lastTransitionTime": now_iso()}]
            return
        spec["nodeName"] = NODE_NAME
        status.update(hostIP="127.0.0.1", podIP="127.0.0.1", podIPs=[{"ip": "127.0.0.1"}], startTime=now_iso(),
                      conditions=[{"type": "PodScheduled", "status": "True", "lastTransitionTime": now_iso()}])
        cstatus: dict[str, Any] = {"name": container["name"], "image": container["image"], "imageID": "",
                                   "ready": False, "restartCount": 0, "started": False}
        status["containerStatuses"] = [cstatus]
        log_path = self.workdir / f"{meta['namespace']}_{meta['name']}.log"
        if container["image"] in self.unpullable_images:
            cstatus["state"] = {"waiting": {"reason": "ErrImagePull", "message":
                                f'failed to pull image "{container["image"]}": not found (stand-in: listed as unpullable)'}}
            self.runtimes[meta["uid"]] = PodRuntime(meta["uid"], None, log_path)
            return
        try:
            argv, env = self._container_process(pod, container)
        except ApiError as exc:
            cstatus["state"] = {"waiting": {"reason": "CreateContainerConfigError", "message": exc.message}}
            self.runtimes[meta["uid"]] = PodRuntime(meta["uid"], None, log_path)
            return
        exe = shutil.which(argv[0], path=env.get("PATH", os.defpath)) if "/" not in argv[0] else argv[0]
        if not exe:
            cstatus["state"] = {"terminated": {"exitCode": 128, "reason": "StartError", "message":
                                f'exec: "{argv[0]}": executable file not found in $PATH', "finishedAt": now_iso()}}
            status["phase"] = "Failed"
            self.runtimes[meta["uid"]] = PodRuntime(meta["uid"], None, log_path, exited=True)
            return
        if self.isolate_hostname:
            argv = ["unshare", "--uts", "--", sys.executable, "-c", _SETHOSTNAME, spec.get("hostname") or meta["name"], *argv]
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(argv, env=env, cwd=container.get("workingDir") or str(self.workdir),
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.runtimes[meta["uid"]] = PodRuntime(meta["uid"], proc, log_path)
        started = now_iso()
        cstatus.update(ready=True, started=True, containerID=f"standin://{proc.pid}",
                       state={"running": {"startedAt": started}})
        status["phase"] = "Running"
        status["conditions"] += [{"type": t, "status": "True", "lastTransitionTime": started}
                                 for t in ("Initialized", "ContainersReady", "Ready")]
        meta["resourceVersion"] = self._next_rv()

    def _container_process(self, pod: dict[str, Any], container: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
        meta, spec = pod["metadata"], pod["spec"]
        env = dict(self.image_env)
        env["HOSTNAME"] = spec.get("hostname") or meta["name"]
        declared: dict[str, str] = {}
        for item in container.get("env") or []:
            if "value" in item or "valueFrom" not in item:
                value = expand_k8s_vars(item.get("value", ""), declared)
            else:
                ref = item["valueFrom"].get("fieldRef")
                if ref is None:
                    raise ApiError(400, "BadRequest", f"stand-in: env {item['name']}: only fieldRef is emulated")
                value = self._field(pod, ref["fieldPath"])
            declared[item["name"]] = value
        if container.get("envFrom"):
            raise ApiError(400, "BadRequest", "stand-in: envFrom is not emulated")
        index = meta.get("annotations", {}).get(INDEX_KEY)
        if index is not None and "JOB_COMPLETION_INDEX" not in declared:
            declared = {"JOB_COMPLETION_INDEX": index, **declared}   # the Job controller injects it
        env.update(declared)
        env[_MARKER_ENV] = meta["uid"]
        argv = [expand_k8s_vars(a, declared) for a in (container.get("command") or []) + (container.get("args") or [])]
        if not argv:
            raise ApiError(400, "BadRequest", "stand-in: a container without command runs the image's "
                                              "entrypoint, which is not emulated")
        return argv, env

    @staticmethod
    def _field(pod: dict[str, Any], path: str) -> str:
        meta = pod["metadata"]
        m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
        if m:
            return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
        simple = {"metadata.name": meta["name"], "metadata.namespace": meta["namespace"],
                  "metadata.uid": meta["uid"], "spec.nodeName": pod["spec"].get("nodeName", ""),
                  "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default"),
                  "status.podIP": "127.0.0.1", "status.hostIP": "127.0.0.1"}
        if path not in simple:
            raise ApiError(400, "BadRequest", f"stand-in: fieldRef {path} is not emulated")
        return simple[path]

    def _terminate(self, rt: PodRuntime, grace: float) -> None:
        if rt.proc is None or rt.exited or rt.proc.poll() is not None:
            return
        _signal_all(rt.uid, signal.SIGTERM if grace > 0 else signal.SIGKILL)
        rt.kill_deadline = time.time() + grace if grace > 0 else None

    def _delete_pod(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        if meta.get("deletionTimestamp"):
            return
        meta["deletionTimestamp"] = now_iso()
        grace = min(float(pod["spec"].get("terminationGracePeriodSeconds", 30)), self.max_grace)
        rt = self.runtimes.get(meta["uid"])
        if rt is not None:
            self._terminate(rt, grace)

    # Job controller
    def _job_controller(self, job: dict[str, Any]) -> None:
        meta, spec, status = job["metadata"], job["spec"], job["status"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        pods = [p for p in self.objects["pods"].values() if p["metadata"]["labels"].get("controller-uid") == uid]
        if meta.get("deletionTimestamp"):
            if not pods:
                del self.objects["jobs"][(ns, name)]
            return
        conds = status.setdefault("conditions", [])
        ctypes = {c["type"] for c in conds if c["status"] == "True"}
        if "Complete" in ctypes or "Failed" in ctypes:
            return
        if "FailureTarget" in ctypes:
            if not any(p["metadata"].get("deletionTimestamp") or p["status"]["phase"] in ("Pending", "Running")
                       for p in pods):
                target = next(c for c in conds if c["type"] == "FailureTarget")
                conds.append({**target, "type": "Failed", "lastTransitionTime": now_iso()})
                status["active"] = 0
                meta["resourceVersion"] = self._next_rv()
            return
        if "startTime" not in status:
            status["startTime"] = now_iso()
            status.update(active=0, succeeded=0, failed=0, ready=0)
            self.job_state[uid] = {"t0": time.time(), "counted": set(), "done": set()}
        js = self.job_state[uid]
        deadline = spec.get("activeDeadlineSeconds")
        if deadline is not None and time.time() - js["t0"] > deadline:
            self._fail_job(job, pods, "DeadlineExceeded", "Job was active longer than specified deadline")
            return
        for pod in pods:
            pmeta, phase = pod["metadata"], pod["status"]["phase"]
            if pmeta["uid"] in js["counted"] or phase not in ("Succeeded", "Failed"):
                continue
            js["counted"].add(pmeta["uid"])
            index = int(pmeta["labels"].get(INDEX_KEY, "0"))
            if phase == "Succeeded":
                js["done"].add(index)
                status["succeeded"] += 1
                continue
            action, why = _pod_failure_action(spec.get("podFailurePolicy"), pod)
            if action == "FailJob":
                status["failed"] += 1
                self._fail_job(job, pods, "PodFailurePolicy", why)
                return
            if action == "Ignore":
                continue
            status["failed"] += 1
            if status["failed"] > spec["backoffLimit"]:
                self._fail_job(job, pods, "BackoffLimitExceeded", "Job has reached the specified backoff limit")
                return
        # keep `parallelism` pods alive over the indexes not done yet
        live = [p for p in pods if p["status"]["phase"] in ("Pending", "Running") and not p["metadata"].get("deletionTimestamp")]
        live_indexes = {int(p["metadata"]["labels"].get(INDEX_KEY, "0")) for p in live}
        todo = [i for i in range(spec["completions"]) if i not in js["done"] and i not in live_indexes]
        for index in todo[: max(0, spec["parallelism"] - len(live))]:
            self._create_pod(job, index)
        done = js["done"]
        status["active"] = len(live)
        status["ready"] = sum(1 for p in live if p["status"]["phase"] == "Running")
        if done:
            status["completedIndexes"] = _ranges(sorted(done))
        if len(done) >= spec["completions"]:
            t = now_iso()
            conds.append({"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached",
                          "message": "Reached expected number of succeeded pods", "lastProbeTime": t, "lastTransitionTime": t})
            conds.append({"type": "Complete", "status": "True", "reason": "CompletionsReached",
                          "message": "Reached expected number of succeeded pods", "lastProbeTime": t, "lastTransitionTime": t})
            status["completionTime"] = t
            status["active"] = 0
            meta["resourceVersion"] = self._next_rv()

    def _fail_job(self, job: dict[str, Any], pods: list[dict[str, Any]], reason: str, message: str) -> None:
        t = now_iso()
        job["status"]["conditions"].append({"type": "FailureTarget", "status": "True", "reason": reason,
                                            "message": message, "lastProbeTime": t, "lastTransitionTime": t})
        for pod in pods:
            if pod["status"]["phase"] in ("Pending", "Running"):
                self._delete_pod(pod)
        job["metadata"]["resourceVersion"] = self._next_rv()

    def _create_pod(self, job: dict[str, Any], index: int) -> None:
        jmeta, tmpl = job["metadata"], job["spec"]["template"]
        indexed = job["spec"].get("completionMode") == "Indexed"
        rand = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(5))
        name = f"{jmeta['name']}-{index}-{rand}" if indexed else f"{jmeta['name']}-{rand}"
        labels = dict(tmpl.get("metadata", {}).get("labels") or {})
        annotations = dict(tmpl.get("metadata", {}).get("annotations") or {})
        spec = copy.deepcopy(tmpl["spec"])
        if indexed:
            labels[INDEX_KEY] = str(index)
            annotations[INDEX_KEY] = str(index)
            spec["hostname"] = f"{jmeta['name']}-{index}"
        pod = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": jmeta["namespace"], "uid": str(uuid.uuid4()),
                         "labels": labels, "annotations": annotations, "creationTimestamp": now_iso(),
                         "resourceVersion": self._next_rv(),
                         "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": jmeta["name"],
                                              "uid": jmeta["uid"], "controller": True, "blockOwnerDeletion": True}]},
            "spec": spec,
            "status": {"phase": "Pending", "conditions": []},
        }
        self.objects["pods"][(jmeta["namespace"], name)] = pod


def _ranges(values: list[int]) -> str:
    out: list[str] = []
    start = prev = values[0]
    for v in values[1:] + [None]:  # type: ignore[list-item]
        if v is not None and v == prev + 1:
            prev = v
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if v is not None:
            start = prev = v
    return ",".join(out)


def _age_s(ts: str | None) -> float:
    if not ts:
        return 0.0
    t = datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    return (datetime.now(timezone.utc) - t).total_seconds()


def _pod_failure_action(policy: dict[str, Any] | None, pod: dict[str, Any]) -> tuple[str, str]:
    """The first matching podFailurePolicy rule's action ("Count" when none matches)."""
    cs = (pod["status"].get("containerStatuses") or [{}])[0]
    term = (cs.get("state") or {}).get("terminated") or {}
    code = term.get("exitCode")
    conds = {c["type"]: c["status"] for c in pod["status"].get("conditions") or []}
    for i, rule in enumerate((policy or {}).get("rules") or []):
        oec = rule.get("onExitCodes")
        if oec is not None:
            if oec.get("containerName") not in (None, cs.get("name")) or code is None or code == 0:
                continue
            hit = code in oec["values"]
            if (oec["operator"] == "In") == hit:
                return rule["action"], (f"Container {cs.get('name')} for pod {pod['metadata']['namespace']}/"
                                        f"{pod['metadata']['name']} failed with exit code {code} matching "
                                        f"{rule['action']} rule at index {i}")
        for pc in rule.get("onPodConditions") or []:
            if conds.get(pc["type"]) == pc.get("status", "True"):
                return rule["action"], (f"Pod {pod['metadata']['namespace']}/{pod['metadata']['name']} has "
                                        f"condition {pc['type']} matching {rule['action']} rule at index {i}")
    return "Count", ""


def _semantic_errors(obj: dict[str, Any], kind: str) -> list[str]:
    """A few of the API server's validations that the OpenAPI schema does not express."""
    errs: list[str] = []
    meta = obj.get("metadata") or {}
    name = meta.get("name") or ""
    if kind == "Service":
        if not (len(name) <= 63 and _DNS1035.match(name)):
            errs.append(f"metadata.name: Invalid value: {name!r}: a DNS-1035 label must start with a letter, "
                        "consist of lower case alphanumerics or '-', at most 63 characters")
    elif not (len(name) <= 63 and _DNS_LABEL.match(name)):
        errs.append(f"metadata.name: Invalid value: {name!r}: must be a DNS-1123 label of at most 63 characters")
    for where, labels in (("metadata.labels", meta.get("labels") or {}),
                          ("spec.template.metadata.labels",
                           ((obj.get("spec") or {}).get("template") or {}).get("metadata", {}).get("labels") or {})):
        for k, v in labels.items():
            prefix, _, lname = k.rpartition("/")
            if (prefix and not _DNS_SUBDOMAIN.match(prefix)) or not (len(lname) <= 63 and _LABEL_NAME.match(lname)):
                errs.append(f"{where}: Invalid value: {k!r}: not a qualified name")
            if v and not (len(v) <= 63 and _LABEL_NAME.match(v)):
                errs.append(f"{where}: Invalid value: {v!r}: not a valid label value")
    if kind == "Job":
        spec = obj["spec"]
        pspec = spec["template"]["spec"]
        restart = pspec.get("restartPolicy")
        if restart not in ("Never", "OnFailure"):
            errs.append(f"spec.template.spec.restartPolicy: Unsupported value: {restart!r}")
        if spec.get("podFailurePolicy") and restart != "Never":
            errs.append("spec.podFailurePolicy: Invalid value: only allowed with restartPolicy Never")
        if spec.get("completionMode") == "Indexed":
            if spec.get("completions") is None:
                errs.append("spec.completions: Required value: when completionMode is Indexed")
            else:
                host = f"{name}-{max(0, spec['completions'] - 1)}"
                if len(host) > 63:
                    errs.append(f"pod hostname {host!r} would be longer than 63 characters")
        sub = pspec.get("subdomain")
        if sub is not None and not (len(sub) <= 63 and _DNS_LABEL.match(sub)):
            errs.append(f"spec.template.spec.subdomain: Invalid value: {sub!r}")
        for c in pspec.get("containers") or []:
            if not (len(c["name"]) <= 63 and _DNS_LABEL.match(c["name"])):
                errs.append(f"container name {c['name']!r} is not a DNS-1123 label")
            if not c.get("image"):
                errs.append(f"container {c['name']}: image: Required value")
            for e in c.get("env") or []:
                if not _ENV_NAME.match(e["name"]):
                    errs.append(f"env name {e['name']!r} is not a valid environment variable name")
    elif kind == "Service":
        spec = obj["spec"]
        if spec.get("clusterIP") == "None" and spec.get("type", "ClusterIP") != "ClusterIP":
            errs.append("spec.clusterIP: None is only allowed for type ClusterIP")
    return errs


def _can_unshare_uts() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    try:
        probe = subprocess.run(["unshare", "--uts", "--", sys.executable, "-c", _SETHOSTNAME, "standin-probe",
                                "true"], capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


# -- HTTP ---------------------------------------------------------------------------------------
_ROUTES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^/apis/batch/v1/namespaces/(?P<ns>[^/]+)/(?P<plural>jobs)$"), "collection"),
    (re.compile(r"^/apis/batch/v1/namespaces/(?P<ns>[^/]+)/(?P<plural>jobs)/(?P<name>[^/]+)$"), "item"),
    (re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/(?P<plural>services|pods)$"), "collection"),
    (re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/(?P<plural>services|pods)/(?P<name>[^/]+)$"), "item"),
    (re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<name>[^/]+)/log$"), "log"),
]


def _make_handler(cluster: StandInCluster) -> Callable[..., BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt: str, *args: Any) -> None:  # quiet
            return

        def _send(self, code: int, payload: bytes, ctype: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def _json(self, code: int, obj: Any) -> None:
            self._send(code, json.dumps(obj).encode())

        def _body(self) -> dict[str, Any]:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if not raw:
                return {}
            try:
                return json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ApiError(400, "BadRequest", f"body is not JSON: {exc}") from None

        def _handle(self, method: str) -> None:
            parts = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            cluster.requests.append((method, parts.path, parts.query))
            try:
                for rx, what in _ROUTES:
                    m = rx.match(parts.path)
                    if not m:
                        continue
                    g = m.groupdict()
                    ns, name = g["ns"], g.get("name")
                    plural = g.get("plural", "pods")
                    if what == "log" and method == "GET":
                        tail = int(query["tailLines"]) if "tailLines" in query else None
                        data = cluster.pod_log(ns, name, query.get("container"),
                                               query.get("previous", "false") == "true", tail)
                        return self._send(200, data, "text/plain")
                    if query.get("watch") in ("true", "1"):
                        raise ApiError(400, "BadRequest", "stand-in: watch is not emulated")
                    if what == "collection" and method == "GET":
                        return self._json(200, cluster.list(plural, ns, query.get("labelSelector", "")))
                    if what == "collection" and method == "POST" and plural != "pods":
                        return self._json(201, cluster.create(plural, ns, self._body()))
                    if what == "item" and method == "GET":
                        return self._json(200, cluster.get(plural, ns, name))
                    if what == "item" and method == "DELETE":
                        body = self._body()
                        policy = body.get("propagationPolicy") or query.get("propagationPolicy")
                        return self._json(200, cluster.delete(plural, ns, name, policy))
                    raise ApiError(405, "MethodNotAllowed", f"stand-in: {method} {parts.path} not emulated")
                raise ApiError(404, "NotFound", f"stand-in: {parts.path} not emulated")
            except ApiError as exc:
                self._json(exc.code, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                      "message": exc.message, "reason": exc.reason, "code": exc.code})

        def do_GET(self) -> None:
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

        def do_DELETE(self) -> None:
            self._handle("DELETE")

        def do_PUT(self) -> None:
            self._handle("PUT")

        def do_PATCH(self) -> None:
            self._handle("PATCH")

    return Handler
