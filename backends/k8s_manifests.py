"""Pure rendering of a Launch into Kubernetes manifests (no client, no cluster).

One launch becomes two objects, submitted in this order:

* a headless ``v1/Service`` (``clusterIP: None``, ``publishNotReadyAddresses: true``) whose
  name is the pods' ``subdomain``, so ``<job>-<index>.<service>`` resolves to each pod even
  before it is Ready (the rendezvous must work while every pod is still starting);
* a ``batch/v1`` Indexed ``Job``: ``completions = parallelism = nodes``, ``backoffLimit: 0``
  (the runner retries INFRA failures by resubmitting the whole launch, a torchrun gang cannot
  be patched by replacing one pod), ``activeDeadlineSeconds`` = the launch's time limit, a
  ``podFailurePolicy`` that ignores disruptions (``DisruptionTarget``: eviction, preemption,
  node drain -- the backend reports those as INFRA) and fails the Job on the first non-zero
  exit of the worker container, ``restartPolicy: Never``.

Every pod runs torchrun with the *static* rendezvous::

    python -m torch.distributed.run --nnodes N --nproc-per-node P
        --node-rank $(JOB_COMPLETION_INDEX) --rdzv-backend static
        --master-addr <job>-0.<service> --master-port <rdzv_port> --max-restarts 0
        -m runner.worker <results_dir>/launch.json

Static, not c10d, because torchrun ignores ``--node-rank`` with c10d (ranks go by arrival)
and because c10d decides which pod hosts the store by matching the endpoint's DNS name
against the pod's own addresses -- fragile while the headless Service's records propagate.
With static, the pod with completion index 0 always hosts the store and the others retry
connecting until the name resolves; the Job has a fixed size, so nothing elastic is lost.

Strings from specs (case ids, env values, paths) reach the manifest only as YAML scalars
(``yaml.safe_dump`` quotes them) and as list elements of ``command`` (no shell). Kubernetes
expands ``$(VAR)`` inside ``command``/``args``/``env`` values, so every literal ``$`` is
escaped as ``$$``; the only reference left is ``$(JOB_COMPLETION_INDEX)``. Names are
DNS-1123 labels derived from ``launch.job_name`` (already sanitised).
"""
from __future__ import annotations

import math
import posixpath
import re
from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Sequence

import yaml

from runner.errors import UsageError, did_you_mean
from runner.records import Launch

#: label/annotation prefix of everything this backend creates
LABEL_PREFIX = "dist-spec-runner"
SESSION_LABEL = f"{LABEL_PREFIX}/session"
JOB_LABEL = f"{LABEL_PREFIX}/job"
LAUNCH_LABEL = f"{LABEL_PREFIX}/launch"
CASE_ANNOTATION = f"{LABEL_PREFIX}/case-id"
RESULTS_ANNOTATION = f"{LABEL_PREFIX}/results-dir"
MANAGED_BY = ("app.kubernetes.io/managed-by", "dist-spec-runner")
CONTAINER = "worker"
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"

OPTION_HELP: dict[str, str] = {
    "namespace": "namespace of the Jobs and Services (default: 'default')",
    "image": "container image with python, torch and this runner installed (required to submit)",
    "pvc": "PersistentVolumeClaim holding the results dirs; needed on a real cluster for pass/fail",
    "results_mount": "absolute path where the runner sees the PVC's root; mounted at the same path "
                     "in the pods (default: the parent of the case's results folder)",
    "service_account": "serviceAccountName of the pods",
    "node_selector": "node labels the pods need: k=v,k2=v2",
    "tolerations": "taints the pods tolerate: key[=value][:Effect],... (Effect: NoSchedule, "
                   "PreferNoSchedule, NoExecute)",
    "kubeconfig": "kubeconfig file (default: $KUBECONFIG / ~/.kube/config, else in-cluster config)",
    "context": "kubeconfig context to use",
    "python": "python interpreter inside the image (default: 'python')",
    "rdzv_port": "TCP port of the torchrun store on the index-0 pod (default: 29500)",
    "image_pull_policy": "Always, IfNotPresent or Never",
    "priority_class": "priorityClassName of the pods",
    "pending_timeout": "seconds a pod may stay unschedulable before the launch counts as INFRA "
                       "(default: 300)",
    "poll_interval": "seconds between batched status calls (default: 2)",
}

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
_PULL_POLICIES = ("Always", "IfNotPresent", "Never")


def _bad(option: str, value: str, why: str) -> UsageError:
    return UsageError(f"backend option '{option}'={value!r}: {why}")


def is_dns_label(value: str) -> bool:
    return len(value) <= 63 and bool(_DNS_LABEL.match(value))


def is_dns_subdomain(value: str) -> bool:
    return len(value) <= 253 and bool(_DNS_SUBDOMAIN.match(value))


def is_label_key(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    if prefix and not is_dns_subdomain(prefix):
        return False
    return len(name) <= 63 and bool(_LABEL_NAME.match(name))


def is_label_value(value: str) -> bool:
    return value == "" or (len(value) <= 63 and bool(_LABEL_NAME.match(value)))


def label_value(text: str) -> str:
    """Any text as a valid label value (lossy; the raw text goes into an annotation)."""
    value = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:63]
    value = re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", value)
    return value


def k8s_literal(text: str) -> str:
    """Escape a literal for command/args/env values: Kubernetes expands ``$(VAR)`` there and
    turns ``$$`` into ``$``, so doubling every ``$`` keeps the text exactly as written."""
    return text.replace("$", "$$")


def _parse_pairs(option: str, raw: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in raw.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise _bad(option, raw, f"'{item}' is not key=value")
        key, value = key.strip(), value.strip()
        if not is_label_key(key):
            raise _bad(option, raw, f"'{key}' is not a valid label key")
        if not is_label_value(value):
            raise _bad(option, raw, f"'{value}' is not a valid label value")
        out[key] = value
    return out


def _parse_tolerations(raw: str) -> tuple[dict[str, str], ...]:
    out: list[dict[str, str]] = []
    for item in filter(None, (p.strip() for p in raw.split(","))):
        head, sep, effect = item.partition(":")
        tol: dict[str, str] = {}
        if sep:
            if effect not in _EFFECTS:
                raise _bad("tolerations", raw, f"effect '{effect}' is not one of {', '.join(_EFFECTS)}")
            tol["effect"] = effect
        key, eq, value = head.partition("=")
        if not is_label_key(key):
            raise _bad("tolerations", raw, f"'{key}' is not a valid taint key")
        tol["key"] = key
        if eq:
            if not is_label_value(value):
                raise _bad("tolerations", raw, f"'{value}' is not a valid taint value")
            tol["operator"] = "Equal"
            tol["value"] = value
        else:
            tol["operator"] = "Exists"
        out.append(tol)
    return tuple(out)


def _positive(option: str, raw: str, *, integer: bool = False, hi: float = math.inf) -> float:
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        raise _bad(option, raw, "not a number") from None
    if not (0 < value <= hi) or (not integer and not math.isfinite(value)):
        raise _bad(option, raw, f"must be > 0{'' if hi == math.inf else f' and <= {hi:g}'}")
    return value


@dataclass(frozen=True)
class KubernetesOptions:
    """The backend's options, parsed and checked (strings from --backend-opt / the config)."""

    namespace: str = "default"
    image: str | None = None
    pvc: str | None = None
    results_mount: str | None = None
    service_account: str | None = None
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, str], ...] = ()
    kubeconfig: str | None = None
    context: str | None = None
    python: str = "python"
    rdzv_port: int = 29500
    image_pull_policy: str | None = None
    priority_class: str | None = None
    pending_timeout: float = 300.0
    poll_interval: float = 2.0

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> "KubernetesOptions":
        known = {f.name for f in fields(cls)}
        kw: dict[str, Any] = {}
        for key, value in raw.items():
            if key not in known:
                raise UsageError(f"unknown backend option '{key}' for backend 'kubernetes'"
                                 f"{did_you_mean(key, known)}; known: {', '.join(sorted(known))}")
            value = str(value).strip()
            if key in ("namespace",):
                if not is_dns_label(value):
                    raise _bad(key, value, "not a DNS-1123 label (lower-case a-z, 0-9, '-', <= 63)")
            elif key in ("pvc", "service_account", "priority_class"):
                if not is_dns_subdomain(value):
                    raise _bad(key, value, "not a DNS-1123 subdomain name")
            elif key == "image":
                if not value or any(c.isspace() or ord(c) < 32 for c in value):
                    raise _bad(key, value, "not an image reference")
            elif key == "results_mount":
                if not value.startswith("/") or "\x00" in value or ".." in value.split("/"):
                    raise _bad(key, value, "must be an absolute path without '..'")
                value = posixpath.normpath(value)
            elif key == "node_selector":
                value = _parse_pairs(key, value)
            elif key == "tolerations":
                value = _parse_tolerations(value)
            elif key == "python":
                if not value or any(c.isspace() for c in value):
                    raise _bad(key, value, "must be an interpreter name or path without spaces")
            elif key == "rdzv_port":
                value = int(_positive(key, value, integer=True, hi=65535))
            elif key == "image_pull_policy":
                if value not in _PULL_POLICIES:
                    raise _bad(key, value, f"must be one of {', '.join(_PULL_POLICIES)}")
            elif key in ("pending_timeout", "poll_interval"):
                value = _positive(key, value)
            elif key in ("kubeconfig", "context"):
                if not value:
                    raise _bad(key, value, "must not be empty")
            kw[key] = value
        return cls(**kw)


# -- names --------------------------------------------------------------------------------------
def object_name(launch: Launch, suffix: str) -> str:
    """The Job (and Service) name: launch.job_name shortened so that the pod hostnames
    ``<name>-<index>`` stay DNS-1123 labels (<= 63), plus a per-submission suffix."""
    index_len = len(str(max(0, launch.nodes - 1))) + 1
    room = 63 - index_len - (len(suffix) + 1 if suffix else 0)
    base = re.sub(r"[^a-z0-9-]+", "-", launch.job_name.lower())[:room].strip("-") or "job"
    if not base[0].isalpha():
        base = ("j" + base)[:room].rstrip("-")
    name = f"{base}-{suffix}" if suffix else base
    assert is_dns_label(name) and len(name) + index_len <= 63, name
    return name


def rendezvous_host(name: str) -> str:
    """The index-0 pod's name in the headless Service (resolved through the namespace's search path)."""
    return f"{name}-0.{name}"


def results_mount_path(launch: Launch, opts: KubernetesOptions) -> str:
    if opts.results_mount:
        return opts.results_mount
    if launch.results_root:
        return posixpath.normpath(launch.results_root)
    return posixpath.dirname(posixpath.dirname(posixpath.normpath(launch.results_dir))) or "/"


# -- manifests ----------------------------------------------------------------------------------
def worker_command(launch: Launch, opts: KubernetesOptions, name: str) -> list[str]:
    """The container command (no shell). All literals are ``$``-escaped for Kubernetes."""
    launch_json = posixpath.join(launch.results_dir, "launch.json")
    timeout = max(60, int(math.ceil(launch.timeout)))
    return [
        k8s_literal(opts.python), "-m", "torch.distributed.run",
        "--nnodes", str(launch.nodes),
        "--nproc-per-node", str(launch.nproc_per_node),
        "--node-rank", "$(JOB_COMPLETION_INDEX)",
        "--rdzv-backend", "static",
        "--master-addr", rendezvous_host(name),
        "--master-port", str(opts.rdzv_port),
        "--rdzv-conf", f"timeout={timeout}",
        "--max-restarts", "0",
        "-m", "runner.worker", k8s_literal(launch_json),
    ]


def container_env(launch: Launch) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [{
        "name": "JOB_COMPLETION_INDEX",
        "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{INDEX_ANNOTATION}']"}},
    }]
    for key, value in launch.env.items():
        if not _ENV_NAME.match(key) or key == "JOB_COMPLETION_INDEX":
            raise UsageError(f"case {launch.case_id}: env name {key!r} cannot be a container "
                             "environment variable name")
        env.append({"name": key, "value": k8s_literal(str(value))})
    if "PYTHONUNBUFFERED" not in launch.env:
        env.append({"name": "PYTHONUNBUFFERED", "value": "1"})
    return env


def labels(name: str, launch: Launch, session: str) -> dict[str, str]:
    out = {MANAGED_BY[0]: MANAGED_BY[1], SESSION_LABEL: session, JOB_LABEL: name}
    launch_label = label_value(launch.name)
    if launch_label:
        out[LAUNCH_LABEL] = launch_label
    return out


def annotations(launch: Launch) -> dict[str, str]:
    return {CASE_ANNOTATION: launch.case_id, RESULTS_ANNOTATION: launch.results_dir}


def service_manifest(launch: Launch, opts: KubernetesOptions, name: str, session: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": opts.namespace,
                     "labels": labels(name, launch, session), "annotations": annotations(launch)},
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {JOB_LABEL: name},
            "ports": [{"name": "rdzv", "port": opts.rdzv_port, "targetPort": opts.rdzv_port,
                       "protocol": "TCP"}],
        },
    }


def job_manifest(launch: Launch, opts: KubernetesOptions, name: str, session: str) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": opts.image or "IMAGE-NOT-SET",
        "command": worker_command(launch, opts, name),
        "env": container_env(launch),
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
    }
    if opts.image_pull_policy:
        container["imagePullPolicy"] = opts.image_pull_policy
    if launch.gpus_per_node > 0:
        container["resources"] = {"limits": {"nvidia.com/gpu": launch.gpus_per_node}}
    volumes: list[dict[str, Any]] = [{"name": "dshm", "emptyDir": {"medium": "Memory"}}]
    if opts.pvc:
        mount = results_mount_path(launch, opts)
        container["volumeMounts"].append({"name": "results", "mountPath": mount})
        volumes.append({"name": "results", "persistentVolumeClaim": {"claimName": opts.pvc}})
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "subdomain": name,
        "enableServiceLinks": False,
        "containers": [container],
        "volumes": volumes,
    }
    if opts.service_account:
        pod_spec["serviceAccountName"] = opts.service_account
    if opts.node_selector:
        pod_spec["nodeSelector"] = dict(opts.node_selector)
    if opts.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in opts.tolerations]
    if opts.priority_class:
        pod_spec["priorityClassName"] = opts.priority_class
    meta_labels = labels(name, launch, session)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": opts.namespace, "labels": meta_labels,
                     "annotations": annotations(launch)},
        "spec": {
            "completionMode": "Indexed",
            "completions": launch.nodes,
            "parallelism": launch.nodes,
            "backoffLimit": 0,
            "activeDeadlineSeconds": max(1, int(math.ceil(launch.timeout))),
            "podFailurePolicy": {"rules": [
                {"action": "Ignore",
                 "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                {"action": "FailJob",
                 "onExitCodes": {"containerName": CONTAINER, "operator": "NotIn", "values": [0]}},
            ]},
            "template": {
                "metadata": {"labels": dict(meta_labels), "annotations": annotations(launch)},
                "spec": pod_spec,
            },
        },
    }


def manifests(launch: Launch, opts: KubernetesOptions, name: str, session: str) -> list[dict[str, Any]]:
    """[Service, Job], in submission order."""
    if opts.pvc:
        mount = results_mount_path(launch, opts)
        rel = posixpath.relpath(posixpath.normpath(launch.results_dir), mount)
        if rel == ".." or rel.startswith("../"):
            raise UsageError(f"backend option 'results_mount'={mount!r}: the results dir "
                             f"{launch.results_dir} is not under it")
    return [service_manifest(launch, opts, name, session), job_manifest(launch, opts, name, session)]


def to_yaml(objects: Sequence[Mapping[str, Any]]) -> str:
    return yaml.safe_dump_all([dict(o) for o in objects], sort_keys=False, default_flow_style=False,
                              explicit_start=True, width=1000)
