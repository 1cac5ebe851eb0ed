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
from typing import Any, Mapping, Sequence

import yaml

from backends.kubernetes.options import KubernetesOptions, is_dns_label
from runner.errors import UsageError
from runner.records import Launch

#: label/annotation prefix of everything this backend creates
LABEL_PREFIX = "dist-spec-runner"
SESSION_LABEL = f"{LABEL_PREFIX}/session"
JOB_LABEL = f"{LABEL_PREFIX}/job"
LAUNCH_LABEL = f"{LABEL_PREFIX}/launch"
#: the results root's tag: a later run of the same root finds (and deletes) what a dead run left
ROOT_LABEL = f"{LABEL_PREFIX}/results-root"
CASE_ANNOTATION = f"{LABEL_PREFIX}/case-id"
RESULTS_ANNOTATION = f"{LABEL_PREFIX}/results-dir"
MANAGED_BY = ("app.kubernetes.io/managed-by", "dist-spec-runner")
CONTAINER = "worker"
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"

_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


def label_value(text: str) -> str:
    """Any text as a valid label value (lossy; the raw text goes into an annotation)."""
    value = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:63]
    value = re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", value)
    return value


def k8s_literal(text: str) -> str:
    """Escape a literal for command/args/env values: Kubernetes expands ``$(VAR)`` there and
    turns ``$$`` into ``$``, so doubling every ``$`` keeps the text exactly as written."""
    return text.replace("$", "$$")


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
    if launch.results_root:
        from runner.run.lock import root_tag

        out[ROOT_LABEL] = root_tag(launch.results_root)
    return out


def object_annotations(launch: Launch) -> dict[str, str]:
    return {CASE_ANNOTATION: launch.case_id, RESULTS_ANNOTATION: launch.results_dir}


def service_manifest(launch: Launch, opts: KubernetesOptions, name: str, session: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": opts.namespace,
                     "labels": labels(name, launch, session), "annotations": object_annotations(launch)},
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
                     "annotations": object_annotations(launch)},
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
                "metadata": {"labels": dict(meta_labels), "annotations": object_annotations(launch)},
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
