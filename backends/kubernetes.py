"""The Kubernetes backend: one Indexed Job + one headless Service per launch.

What it does (manifests: ``backends.k8s_manifests``):

* ``render`` -- pure: the YAML of the Service and the Job (what ``--dry-run`` prints). The
  object name is ``launch.job_name`` shortened, plus this session's token (and ``-<n>`` for
  the n-th resubmission of the same launch), so retries and concurrent sessions never clash.
* ``submit`` -- creates the Service, then the Job, with the official ``kubernetes`` client
  (imported here lazily: the module imports without it). Config: ``kubeconfig``/``context``
  options, else ``$KUBECONFIG``/``~/.kube/config``, else the in-cluster service account.
  4xx answers are usage errors (bad namespace, forbidden, invalid); 5xx and connection
  errors make the launch INFRA (retried by the case's ``retries``).
* ``poll`` -- ONE Job list and ONE Pod list per interval, both by the label shared by every
  object of this session, whatever the number of jobs in flight.
* ``cancel`` -- saves the pod logs, then deletes the Job with ``propagationPolicy:
  Foreground`` (the Job stays visible until its pods are gone, so "the job is gone" means
  nothing runs) and the Service.
* ``collect`` -- saves each pod's log (and the previous container's, after a restart) into
  ``<results_dir>/logs/launcher-pod{index}.log``, deletes the Job and Service, waits until
  no pod of the Job is left, and classifies with ``runner.run.backend.outcome_from_records``.

Classification (the completion records in the results dir decide pass/fail):

* INFRA: a pod evicted / disrupted (``DisruptionTarget``, reason ``Evicted``, preemption),
  image pull failures (``ErrImagePull``, ``ImagePullBackOff``, ``InvalidImageName``,
  ``ErrImageNeverPull``, ``CreateContainerConfigError``), a pod unschedulable for longer
  than ``pending_timeout``, a pod in phase ``Unknown`` (node lost), the Job deleted by
  someone else, the API server failing.
* TIMEOUT: the runner cancelled for the time limit, or the Job hit
  ``activeDeadlineSeconds`` (``DeadlineExceeded``) before the runner got there.
* ERROR: a non-zero exit (the Job fails through its podFailurePolicy); ``OOMKilled`` is the
  workload's problem and is named in the detail.

Disruptions: the podFailurePolicy *ignores* ``DisruptionTarget``, so Kubernetes would
replace the pod; but a torchrun gang with one replaced member cannot continue, so the
backend ends the launch as INFRA as soon as it sees the disruption and the runner
resubmits it (``backoffLimit`` is 0 for the same reason: the Launch has no retry count and
the runner owns retries).

Results: the ranks write the results dir themselves. On a real cluster that needs the
``pvc`` option (a volume the runner's machine also sees, mounted in the pods at
``results_mount``); without it the pods cannot read ``launch.json`` nor write completion
records, and every launch ends as ERROR. The test stand-in runs pods on this machine, so
it needs no PVC.
"""
from __future__ import annotations

import dataclasses
import secrets
import string
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

from runner.run.backend import Backend, Handle, JobState, Rendered, outcome_from_records
from runner.errors import UsageError
from runner.hookspecs import hookimpl
from runner.records import Launch, LaunchOutcome, Outcome

from backends import k8s_manifests as km

IMAGE_PULL_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName",
                                "ErrImageNeverPull", "CreateContainerConfigError",
                                "CreateContainerError"})
#: how long the Job may be missing from the list right after creation (list caches lag)
_GRACE_UNSEEN_S = 15.0
#: how long the API may fail before every in-flight launch counts as INFRA
_API_FAILURE_LIMIT_S = 120.0
#: how long collect waits for the pods of a deleted Job to go away
_CLEANUP_WAIT_S = 60.0


def _token(n: int = 5) -> str:
    alphabet = string.ascii_lowercase + string.digits
    return secrets.choice(string.ascii_lowercase) + "".join(secrets.choice(alphabet) for _ in range(n - 1))


def _get(obj: Any, *path: str) -> Any:
    """Walk a client model (snake_case attributes) or a dict; None when absent."""
    for key in path:
        if obj is None:
            return None
        obj = obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)
    return obj


def _pod_index(pod: Any) -> int:
    for source in (_get(pod, "metadata", "annotations"), _get(pod, "metadata", "labels")):
        if source and km.INDEX_ANNOTATION in source:
            try:
                return int(source[km.INDEX_ANNOTATION])
            except ValueError:
                pass
    return -1


def _age(ts: Any) -> float:
    if isinstance(ts, datetime):
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=timezone.utc)
        return (datetime.now(timezone.utc) - ts).total_seconds()
    return 0.0


class KubernetesBackend(Backend):
    """Runs each launch as an Indexed Job + headless Service through the official client."""

    id: ClassVar[str] = "kubernetes"
    description: ClassVar[str] = "Kubernetes: an Indexed Job + headless Service per launch (torchrun, static rendezvous)"
    options: ClassVar[Mapping[str, str]] = km.OPTION_HELP

    def __init__(self, options: Mapping[str, str] | None = None) -> None:
        super().__init__(options)
        self._parsed: km.KubernetesOptions | None = None
        self.session = _token()
        self._submissions: dict[str, int] = {}
        self._batch: Any = None
        self._core: Any = None
        self._api_failing_since: float | None = None
        if "poll_interval" in self.opts:
            self.poll_interval = self.parsed.poll_interval  # type: ignore[misc]

    # -- options / config --------------------------------------------------------------------
    @property
    def parsed(self) -> km.KubernetesOptions:
        if self._parsed is None:
            self._parsed = km.KubernetesOptions.parse(self.opts)
        return self._parsed

    def check(self) -> None:
        _ = self.parsed

    def _clients(self) -> tuple[Any, Any]:
        if self._batch is None:
            try:
                from kubernetes import client, config
                from kubernetes.config.config_exception import ConfigException
            except ImportError:
                raise UsageError("backend 'kubernetes' needs the 'kubernetes' Python package "
                                 "(pip install 'dist-spec-runner[kubernetes]')") from None
            opts = self.parsed
            cfg = client.Configuration()
            try:
                if opts.kubeconfig or opts.context or not _in_cluster():
                    config.load_kube_config(config_file=opts.kubeconfig, context=opts.context,
                                            client_configuration=cfg)
                else:
                    config.load_incluster_config(client_configuration=cfg)
            except (ConfigException, OSError, TypeError, ValueError) as exc:
                which = "kubeconfig" if opts.kubeconfig else ("context" if opts.context else "kubeconfig")
                raise UsageError(f"backend option '{which}': cannot load the Kubernetes "
                                 f"configuration: {exc}") from None
            api = client.ApiClient(cfg)
            self._batch, self._core = client.BatchV1Api(api), client.CoreV1Api(api)
        return self._batch, self._core

    # -- render --------------------------------------------------------------------------------
    def _name(self, launch: Launch, attempt: int) -> str:
        suffix = self.session if attempt <= 1 else f"{self.session}-{attempt}"
        return km.object_name(launch, suffix)

    def render(self, launch: Launch) -> Rendered:
        attempt = self._submissions.get(launch.results_dir, 0) + 1
        return self._render(launch, self._name(launch, attempt))

    def _render(self, launch: Launch, name: str) -> Rendered:
        objects = km.manifests(launch, self.parsed, name, self.session)
        service, job = objects
        return Rendered(
            launch=launch,
            text=km.to_yaml(objects),
            files={"service.yaml": km.to_yaml([service]), "job.yaml": km.to_yaml([job])},
            command=tuple(job["spec"]["template"]["spec"]["containers"][0]["command"]),
            env=dict(launch.env),
        )

    # -- submit --------------------------------------------------------------------------------
    def submit(self, launch: Launch) -> Handle:
        opts = self.parsed
        if not opts.image:
            raise UsageError("backend 'kubernetes' needs a container image: --backend-opt image=REF")
        attempt = self._submissions.get(launch.results_dir, 0) + 1
        self._submissions[launch.results_dir] = attempt
        name = self._name(launch, attempt)
        service, job = km.manifests(launch, opts, name, self.session)
        batch, core = self._clients()
        from kubernetes.client.exceptions import ApiException

        handle = Handle(id=name, launch=launch, submitted_at=time.time(),
                        data={"namespace": opts.namespace, "name": name})
        Path(launch.results_dir, "logs").mkdir(parents=True, exist_ok=True)
        try:
            core.create_namespaced_service(opts.namespace, service)
            try:
                batch.create_namespaced_job(opts.namespace, job)
            except BaseException:
                self._delete_quietly(core.delete_namespaced_service, name, opts.namespace)
                raise
        except ApiException as exc:
            if exc.status is not None and 400 <= exc.status < 500:
                raise UsageError(f"kubernetes rejected launch {launch.job_name}: "
                                 f"{exc.status} {exc.reason}: {_api_message(exc)}") from None
            handle.data["submit_failed"] = True
            handle.data["infra"] = f"API server error on submit: {exc.status} {exc.reason}: {_api_message(exc)}"
        except Exception as exc:  # noqa: BLE001 - connection errors: the cluster failed, not the user
            handle.data["submit_failed"] = True
            handle.data["infra"] = f"cannot reach the API server on submit: {type(exc).__name__}: {exc}"
        return handle

    # -- poll ----------------------------------------------------------------------------------
    def poll(self, handles: Sequence[Handle]) -> Mapping[str, JobState]:
        states: dict[str, JobState] = {}
        for h in handles:
            if h.data.get("submit_failed"):   # nothing exists in the cluster
                states[h.id] = JobState(True, "INFRA", h.data["infra"])
        live = [h for h in handles if h.id not in states]
        if not live:
            return states
        batch, core = self._clients()
        selector = f"{km.SESSION_LABEL}={self.session}"
        namespace = self.parsed.namespace
        try:
            jobs = batch.list_namespaced_job(namespace, label_selector=selector).items or []
            pods = core.list_namespaced_pod(namespace, label_selector=selector).items or []
            self._api_failing_since = None
        except Exception as exc:  # noqa: BLE001 - API outage: keep polling, then INFRA
            now = time.time()
            self._api_failing_since = self._api_failing_since or now
            failing = now - self._api_failing_since
            for h in live:
                if failing > _API_FAILURE_LIMIT_S:
                    h.data["infra"] = f"API server failing for {failing:.0f}s: {type(exc).__name__}: {exc}"
                    states[h.id] = JobState(True, "INFRA", h.data["infra"])
                else:
                    states[h.id] = JobState(False, "UNKNOWN", f"list failed: {type(exc).__name__}")
            return states
        by_name = {_get(j, "metadata", "name"): j for j in jobs}
        pods_by_job: dict[str, list[Any]] = {}
        for pod in pods:
            pods_by_job.setdefault((_get(pod, "metadata", "labels") or {}).get(km.JOB_LABEL, ""), []).append(pod)
        for h in live:
            states[h.id] = self._state(h, by_name.get(h.id), pods_by_job.get(h.id, []))
        return states

    def _state(self, h: Handle, job: Any, pods: list[Any]) -> JobState:
        h.data["pods"] = pods
        if job is None:
            if h.cancel_reason or h.data.get("deleted"):
                return JobState(True, "DELETED", "job deleted")
            if h.data.get("seen") or time.time() - h.submitted_at > _GRACE_UNSEEN_S:
                h.data.setdefault("infra", "the Job was deleted outside the runner")
                return JobState(True, "DELETED", h.data["infra"])
            return JobState(False, "PENDING", "not listed yet")
        h.data["seen"] = True
        h.data["job_status"] = _get(job, "status")
        if _get(job, "metadata", "deletion_timestamp") is not None:
            return JobState(False, "TERMINATING", "job is being deleted")
        for cond in _get(job, "status", "conditions") or []:
            if _get(cond, "status") != "True":
                continue
            ctype = _get(cond, "type")
            if ctype == "Complete":
                return JobState(True, "COMPLETED", "")
            if ctype == "Failed":
                h.data["failed_reason"] = _get(cond, "reason") or ""
                h.data["failed_message"] = _get(cond, "message") or ""
                return JobState(True, "FAILED", f"{h.data['failed_reason']}: {h.data['failed_message']}")
        if h.cancel_reason is None:
            infra = self._infra_reason(pods)
            if infra:
                h.data["infra"] = infra
                return JobState(True, "INFRA", infra)
        phases = sorted({_get(p, "status", "phase") or "Pending" for p in pods})
        return JobState(False, "RUNNING" if "Running" in phases else "PENDING", ",".join(phases))

    def _infra_reason(self, pods: list[Any]) -> str | None:
        for pod in sorted(pods, key=_pod_index):
            name, index = _get(pod, "metadata", "name"), _pod_index(pod)
            status = _get(pod, "status")
            phase = _get(status, "phase")
            reason, message = _get(status, "reason") or "", _get(status, "message") or ""
            where = f"pod {name} (index {index})"
            for cond in _get(status, "conditions") or []:
                if _get(cond, "type") == "DisruptionTarget" and _get(cond, "status") == "True":
                    why = _get(cond, "reason") or "disrupted"
                    return f"{where} disrupted ({why}{': ' + reason if reason else ''}): {_get(cond, 'message') or message}".rstrip(": ")
            if reason in ("Evicted", "Preempting", "NodeLost", "Terminated", "UnexpectedAdmissionError"):
                return f"{where} {reason}: {message}".rstrip(": ")
            if phase == "Unknown":
                return f"{where} in phase Unknown (node lost?): {message}".rstrip(": ")
            for cs in (_get(status, "init_container_statuses") or []) + (_get(status, "container_statuses") or []):
                waiting = _get(cs, "state", "waiting")
                if waiting is not None and _get(waiting, "reason") in IMAGE_PULL_REASONS:
                    return (f"{where}: {_get(waiting, 'reason')} for image "
                            f"{_get(cs, 'image')}: {_get(waiting, 'message') or ''}").rstrip(": ")
            if phase == "Pending":
                for cond in _get(status, "conditions") or []:
                    if (_get(cond, "type") == "PodScheduled" and _get(cond, "status") == "False"
                            and _get(cond, "reason") == "Unschedulable"):
                        age = _age(_get(cond, "last_transition_time") or _get(pod, "metadata", "creation_timestamp"))
                        if age > self.parsed.pending_timeout:
                            return (f"{where} unschedulable for {age:.0f}s "
                                    f"(pending_timeout {self.parsed.pending_timeout:g}s): {_get(cond, 'message') or ''}")
        return None

    # -- logs ----------------------------------------------------------------------------------
    def _pods_of(self, h: Handle) -> list[Any]:
        _, core = self._clients()
        try:
            return core.list_namespaced_pod(h.data["namespace"], label_selector=f"{km.JOB_LABEL}={h.id}").items or []
        except Exception:  # noqa: BLE001 - logs are best effort
            return list(h.data.get("pods") or [])

    def save_logs(self, h: Handle, pods: list[Any] | None = None) -> None:
        """Write each pod's log (previous container first, after a restart) into
        ``logs/launcher-pod{index}.log``; several pods of one index (a replaced pod) are
        written one after another, oldest first."""
        _, core = self._clients()
        pods = self._pods_of(h) if pods is None else pods
        by_index: dict[int, list[Any]] = {}
        for pod in pods:
            by_index.setdefault(_pod_index(pod), []).append(pod)
        logs_dir = Path(h.launch.results_dir, "logs")
        logs_dir.mkdir(parents=True, exist_ok=True)
        for index, group in sorted(by_index.items()):
            group.sort(key=lambda p: (str(_get(p, "metadata", "creation_timestamp")), _get(p, "metadata", "name")))
            parts: list[str] = []
            for pod in group:
                name = _get(pod, "metadata", "name")
                restarts = max([_get(cs, "restart_count") or 0 for cs in _get(pod, "status", "container_statuses") or []] or [0])
                if restarts:
                    parts.append(f"==== pod {name}: previous container ====\n")
                    parts.append(self._read_log(core, h, name, previous=True))
                if len(group) > 1 or restarts:
                    parts.append(f"==== pod {name} ====\n")
                parts.append(self._read_log(core, h, name, previous=False))
            label = index if index >= 0 else "unknown"
            (logs_dir / f"launcher-pod{label}.log").write_text("".join(parts), errors="replace")
        h.data["logs_saved"] = True

    @staticmethod
    def _read_log(core: Any, h: Handle, pod: str, *, previous: bool) -> str:
        try:
            # raw bytes: the client's str deserialisation mangles logs that look like JSON
            resp = core.read_namespaced_pod_log(pod, h.data["namespace"], container=km.CONTAINER,
                                                previous=previous, _preload_content=False)
            text = resp.data.decode("utf-8", "replace")
            return text if text.endswith("\n") or not text else text + "\n"
        except Exception as exc:  # noqa: BLE001 - a pod that never started has no log
            msg = _api_message(exc) if hasattr(exc, "status") else str(exc)
            return f"[no log for pod {pod}{' (previous)' if previous else ''}: {msg}]\n"

    # -- cancel / cleanup ----------------------------------------------------------------------
    def cancel(self, handle: Handle, reason: str) -> None:
        handle.cancel_reason = handle.cancel_reason or reason
        if handle.data.get("submit_failed"):
            return  # nothing was created
        try:
            self.save_logs(handle)
        except Exception:  # noqa: BLE001
            pass
        self._delete(handle)

    def _delete(self, h: Handle) -> None:
        batch, core = self._clients()
        from kubernetes import client

        body = client.V1DeleteOptions(propagation_policy="Foreground")
        self._delete_quietly(batch.delete_namespaced_job, h.id, h.data["namespace"], body=body)
        self._delete_quietly(core.delete_namespaced_service, h.id, h.data["namespace"])
        h.data["deleted"] = True

    @staticmethod
    def _delete_quietly(fn: Any, name: str, namespace: str, **kw: Any) -> None:
        try:
            fn(name, namespace, **kw)
        except Exception as exc:  # noqa: BLE001 - 404: already gone
            if getattr(exc, "status", None) not in (404, None):
                raise

    def _wait_gone(self, h: Handle, limit: float = _CLEANUP_WAIT_S) -> bool:
        _, core = self._clients()
        deadline = time.time() + limit
        while time.time() < deadline:
            try:
                left = core.list_namespaced_pod(h.data["namespace"], label_selector=f"{km.JOB_LABEL}={h.id}").items
            except Exception:  # noqa: BLE001
                return False
            if not left:
                return True
            time.sleep(0.5)
        return False

    # -- collect -------------------------------------------------------------------------------
    def collect(self, handle: Handle) -> LaunchOutcome:
        h = handle
        duration = time.time() - h.submitted_at
        infra = h.data.get("infra")
        cancel_reason = h.cancel_reason
        pods: list[Any] = []
        if not h.data.get("submit_failed"):
            pods = self._pods_of(h)
            if pods or not h.data.get("logs_saved"):
                try:
                    self.save_logs(h, pods)
                except Exception:  # noqa: BLE001
                    pass
            try:
                self._delete(h)
                if not self._wait_gone(h):
                    infra = infra or "pods of the Job were still present after deletion"
            except Exception as exc:  # noqa: BLE001
                infra = infra or f"cleanup failed: {type(exc).__name__}: {exc}"
        pods = pods or list(h.data.get("pods") or [])
        exit_code, oom = _exit_code(pods)
        if cancel_reason is None and h.data.get("failed_reason") == "DeadlineExceeded":
            cancel_reason = "timeout"   # Kubernetes enforced the same limit a moment earlier
        outcome = outcome_from_records(h.launch, exit_code=exit_code, duration=duration,
                                       cancel_reason=cancel_reason, infra_reason=infra)
        if outcome.outcome is Outcome.ERROR:
            detail = outcome.detail
            if oom is not None:
                detail = f"OOMKilled (pod index {oom}); {detail}"
            elif h.data.get("failed_reason") and h.data["failed_reason"] not in detail:
                detail = f"{detail}; Job failed: {h.data['failed_reason']}"
            rd = Path(h.launch.results_dir)
            if not self.parsed.pvc and not (rd / "done").is_dir() and not list(rd.glob("logs/rank*.log")):
                detail += ("; no completion record nor rank log: without the 'pvc' option the pods "
                           "cannot see the results dir")
            outcome = dataclasses.replace(outcome, detail=detail)
        return outcome


def _exit_code(pods: list[Any]) -> tuple[int | None, int | None]:
    """(first non-zero exit code by pod index, or 0 when every pod succeeded; index of an OOMKilled pod)."""
    codes: list[tuple[int, int]] = []
    oom: int | None = None
    for pod in pods:
        for cs in _get(pod, "status", "container_statuses") or []:
            term = _get(cs, "state", "terminated") or _get(cs, "last_state", "terminated")
            if term is None:
                continue
            if _get(term, "reason") == "OOMKilled" and oom is None:
                oom = _pod_index(pod)
            code = _get(term, "exit_code")
            if code is not None:
                codes.append((_pod_index(pod), int(code)))
    if not codes:
        return None, oom
    nonzero = sorted(c for c in codes if c[1] != 0)
    return (nonzero[0][1] if nonzero else 0), oom


def _in_cluster() -> bool:
    import os

    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and not os.environ.get("KUBECONFIG") \
        and not Path("~/.kube/config").expanduser().exists()


def _api_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if body:
        try:
            import json

            return str(json.loads(body).get("message") or body)[:500]
        except (ValueError, AttributeError):
            return str(body)[:500]
    return str(getattr(exc, "reason", "") or exc)


@hookimpl
def runner_register_backends(registry: Any) -> None:
    registry.add(KubernetesBackend)
