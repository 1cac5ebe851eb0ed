"""The Kubernetes backend: one Indexed Job + one headless Service per launch.

The package, by concern: ``options``, ``manifests`` (pure rendering), ``status`` (reading
Job and Pod objects), ``classify`` (outcomes), ``logs`` (pod logs), and this module, which
talks to the API server. What it does:

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

Classification: ``backends.kubernetes.classify`` (the completion records in the results dir
decide pass/fail).

Disruptions: the podFailurePolicy *ignores* ``DisruptionTarget``, so Kubernetes would
replace the pod; but a torchrun gang with one replaced member cannot continue, so the
backend ends the launch as INFRA as soon as it sees the disruption and the runner
resubmits it (``backoffLimit`` is 0 for the same reason: the Launch has no retry count and
the runner owns retries).

Results: the ranks write the results dir themselves. On a real cluster that needs the ``pvc``
option (a volume the runner's machine also sees, mounted in the pods at ``results_mount``);
without it the pods cannot read ``launch.json`` nor write completion records, and every
launch ends as ERROR. The test stand-in runs pods on this machine, so it needs no PVC.
"""
from __future__ import annotations

import secrets
import string
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping, Sequence

from backends.kubernetes import manifests as km
from backends.kubernetes.classify import classify
from backends.kubernetes.logs import save_logs
from backends.kubernetes.options import OPTION_HELP, KubernetesOptions
from backends.kubernetes.status import api_message, get, infra_reason
from runner.errors import UsageError
from runner.hookspecs import hookimpl
from runner.records import Launch, LaunchOutcome
from runner.run.backend import Backend, Handle, JobState, OptionSpec, Rendered

if TYPE_CHECKING:
    from runner.plugins import BackendRegistry

#: how long the Job may be missing from the list right after creation (list caches lag)
_GRACE_UNSEEN_S = 15.0
#: how long the API may fail before every in-flight launch counts as INFRA
_API_FAILURE_LIMIT_S = 120.0
#: how long collect waits for the pods of a deleted Job to go away
_CLEANUP_WAIT_S = 60.0


def _token(n: int = 5) -> str:
    alphabet = string.ascii_lowercase + string.digits
    return secrets.choice(string.ascii_lowercase) + "".join(secrets.choice(alphabet) for _ in range(n - 1))


@dataclass
class KubernetesJob:
    """What the backend keeps about one submitted launch (``Handle.state``)."""

    namespace: str
    name: str
    submit_failed: bool = False          # nothing exists in the cluster
    infra: str | None = None             # why the infrastructure ended it
    pods: list[Any] | None = None        # the last pod list seen
    seen: bool = False                   # the Job was listed at least once
    deleted: bool = False                # the runner deleted it
    failed_reason: str | None = None     # the Job's Failed condition
    failed_message: str | None = None
    logs_saved: bool = False

    @staticmethod
    def of(handle: Handle) -> "KubernetesJob":
        if not isinstance(handle.state, KubernetesJob):
            raise TypeError(f"handle {handle.id} was not submitted by the kubernetes backend")
        return handle.state


class KubernetesBackend(Backend):
    """Runs each launch as an Indexed Job + headless Service through the official client."""

    id: ClassVar[str] = "kubernetes"
    description: ClassVar[str] = "Kubernetes: an Indexed Job + headless Service per launch (torchrun, static rendezvous)"
    options: ClassVar[Mapping[str, OptionSpec]] = OPTION_HELP

    def __init__(self, options: Mapping[str, str] | None = None) -> None:
        super().__init__(options)
        self._parsed: KubernetesOptions | None = None
        self.session = _token()
        self._submissions: dict[str, int] = {}
        self._batch: Any = None
        self._core: Any = None
        self._api_failing_since: float | None = None
        if "poll_interval" in self.opts:
            self.poll_interval = self.parsed.poll_interval  # type: ignore[misc]

    # -- options / config --------------------------------------------------------------------
    @property
    def parsed(self) -> KubernetesOptions:
        if self._parsed is None:
            self._parsed = KubernetesOptions.parse(self.opts)
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

        state = KubernetesJob(namespace=opts.namespace, name=name)
        handle = Handle(id=name, launch=launch, submitted_at=time.time(), state=state)
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
                                 f"{exc.status} {exc.reason}: {api_message(exc)}") from None
            state.submit_failed = True
            state.infra = f"API server error on submit: {exc.status} {exc.reason}: {api_message(exc)}"
        except Exception as exc:  # noqa: BLE001 - connection errors: the cluster failed, not the user
            state.submit_failed = True
            state.infra = f"cannot reach the API server on submit: {type(exc).__name__}: {exc}"
        return handle

    # -- poll ----------------------------------------------------------------------------------
    def poll(self, handles: Sequence[Handle]) -> Mapping[str, JobState]:
        states: dict[str, JobState] = {}
        for h in handles:
            st = KubernetesJob.of(h)
            if st.submit_failed:   # nothing exists in the cluster
                states[h.id] = JobState(True, "INFRA", st.infra or "")
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
                    st = KubernetesJob.of(h)
                    st.infra = f"API server failing for {failing:.0f}s: {type(exc).__name__}: {exc}"
                    states[h.id] = JobState(True, "INFRA", st.infra)
                else:
                    states[h.id] = JobState(False, "UNKNOWN", f"list failed: {type(exc).__name__}")
            return states
        by_name = {get(j, "metadata", "name"): j for j in jobs}
        pods_by_job: dict[str, list[Any]] = {}
        for pod in pods:
            pods_by_job.setdefault((get(pod, "metadata", "labels") or {}).get(km.JOB_LABEL, ""), []).append(pod)
        for h in live:
            states[h.id] = self._state(h, by_name.get(h.id), pods_by_job.get(h.id, []))
        return states

    def _state(self, h: Handle, job: Any, pods: list[Any]) -> JobState:
        st = KubernetesJob.of(h)
        st.pods = pods
        if job is None:
            if h.cancel_reason or st.deleted:
                return JobState(True, "DELETED", "job deleted")
            if st.seen or time.time() - h.submitted_at > _GRACE_UNSEEN_S:
                if st.infra is None:
                    st.infra = "the Job was deleted outside the runner"
                return JobState(True, "DELETED", st.infra)
            return JobState(False, "PENDING", "not listed yet")
        st.seen = True
        if get(job, "metadata", "deletion_timestamp") is not None:
            return JobState(False, "TERMINATING", "job is being deleted")
        for cond in get(job, "status", "conditions") or []:
            if get(cond, "status") != "True":
                continue
            ctype = get(cond, "type")
            if ctype == "Complete":
                return JobState(True, "COMPLETED", "")
            if ctype == "Failed":
                st.failed_reason = get(cond, "reason") or ""
                st.failed_message = get(cond, "message") or ""
                return JobState(True, "FAILED", f"{st.failed_reason}: {st.failed_message}")
        if h.cancel_reason is None:
            infra = infra_reason(pods, self.parsed.pending_timeout)
            if infra:
                st.infra = infra
                return JobState(True, "INFRA", infra)
        phases = sorted({get(p, "status", "phase") or "Pending" for p in pods})
        return JobState(False, "RUNNING" if "Running" in phases else "PENDING", ",".join(phases))

    # -- logs ----------------------------------------------------------------------------------
    def _pods_of(self, h: Handle) -> list[Any]:
        _, core = self._clients()
        st = KubernetesJob.of(h)
        try:
            return core.list_namespaced_pod(st.namespace, label_selector=f"{km.JOB_LABEL}={h.id}").items or []
        except Exception:  # noqa: BLE001 - logs are best effort
            return list(st.pods or [])

    def save_logs(self, h: Handle, pods: list[Any] | None = None) -> None:
        """Write each pod's log into ``logs/launcher-pod{index}.log`` (``backends.kubernetes.logs``)."""
        _, core = self._clients()
        st = KubernetesJob.of(h)
        save_logs(core, st.namespace, h.launch.results_dir, self._pods_of(h) if pods is None else pods)
        st.logs_saved = True

    # -- cancel / cleanup ----------------------------------------------------------------------
    def cancel(self, handle: Handle, reason: str) -> None:
        handle.cancel_reason = handle.cancel_reason or reason
        if KubernetesJob.of(handle).submit_failed:
            return  # nothing was created
        try:
            self.save_logs(handle)
        except Exception:  # noqa: BLE001
            pass
        self._delete(handle)

    def pooled(self, poolable: Callable[[Launch], bool]) -> Backend:
        """Warm worker pools (``runner.run.pooling``): one Indexed Job serves the poolable cases of a
        shape in turn, ``activeDeadlineSeconds`` their timeouts up to ``pool_time``; pools=0: none."""
        from runner.run.pooling import PoolingBackend

        return self if self.parsed.pools is None else PoolingBackend(self, poolable, self.parsed.pools)

    def sweep(self, results_root: Any) -> list[str]:
        """Delete Jobs and Services of this results root left by another (dead) session.

        Found by the results-root label; this session holds the root's lock, so any other
        session's objects with that label belong to a runner that is gone.
        """
        from runner.run.lock import root_tag

        try:
            batch, core = self._clients()
        except UsageError:
            return []
        from kubernetes import client

        namespace = self.parsed.namespace
        selector = f"{km.ROOT_LABEL}={root_tag(results_root)},{km.SESSION_LABEL}!={self.session}"
        lines = []
        try:
            jobs = batch.list_namespaced_job(namespace, label_selector=selector).items or []
            services = core.list_namespaced_service(namespace, label_selector=selector).items or []
        except Exception:  # noqa: BLE001 - no cluster answer: nothing to sweep now
            return []
        body = client.V1DeleteOptions(propagation_policy="Foreground")
        for job in jobs:
            name = job.metadata.name
            self._delete_quietly(batch.delete_namespaced_job, name, namespace, body=body)
            lines.append(f"deleted Kubernetes Job {namespace}/{name} left by an earlier run of this results root")
        for svc in services:
            self._delete_quietly(core.delete_namespaced_service, svc.metadata.name, namespace)
        return lines

    def _delete(self, h: Handle) -> None:
        batch, core = self._clients()
        from kubernetes import client

        st = KubernetesJob.of(h)
        body = client.V1DeleteOptions(propagation_policy="Foreground")
        self._delete_quietly(batch.delete_namespaced_job, h.id, st.namespace, body=body)
        self._delete_quietly(core.delete_namespaced_service, h.id, st.namespace)
        st.deleted = True

    @staticmethod
    def _delete_quietly(fn: Any, name: str, namespace: str, **kw: Any) -> None:
        try:
            fn(name, namespace, **kw)
        except Exception as exc:  # noqa: BLE001 - 404: already gone
            if getattr(exc, "status", None) not in (404, None):
                raise

    def _wait_gone(self, h: Handle, limit: float = _CLEANUP_WAIT_S) -> bool:
        _, core = self._clients()
        namespace = KubernetesJob.of(h).namespace
        deadline = time.time() + limit
        while time.time() < deadline:
            try:
                left = core.list_namespaced_pod(namespace, label_selector=f"{km.JOB_LABEL}={h.id}").items
            except Exception:  # noqa: BLE001
                return False
            if not left:
                return True
            time.sleep(0.5)
        return False

    # -- collect -------------------------------------------------------------------------------
    def collect(self, handle: Handle) -> LaunchOutcome:
        h = handle
        st = KubernetesJob.of(h)
        duration = time.time() - h.submitted_at
        infra = st.infra
        pods: list[Any] = []
        if not st.submit_failed:
            pods = self._pods_of(h)
            if pods or not st.logs_saved:
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
        pods = pods or list(st.pods or [])
        return classify(h.launch, pods, duration=duration, cancel_reason=h.cancel_reason, infra=infra,
                        failed_reason=st.failed_reason, has_pvc=bool(self.parsed.pvc))


def _in_cluster() -> bool:
    import os

    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and not os.environ.get("KUBECONFIG") \
        and not Path("~/.kube/config").expanduser().exists()


@hookimpl
def runner_register_backends(registry: "BackendRegistry") -> None:
    registry.add(KubernetesBackend)
