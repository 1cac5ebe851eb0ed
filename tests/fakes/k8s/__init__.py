"""A stand-in Kubernetes API server for the tests. It is NOT Kubernetes.

Why: no Kubernetes control plane can run on the CI machines, yet the backend's whole
client flow (the official ``kubernetes`` client over HTTP, create / list / logs / delete,
failure classification) and a real multi-node torchrun rendezvous through the rendered
manifests must be exercised. This package serves, on ``http://127.0.0.1:<random port>``
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

The package: ``cluster`` (StandInCluster: store, API operations, test controls),
``kubelet`` (pods as local processes), ``controller`` (the Job controller), ``http`` (the
routes), ``hosts`` (/etc/hosts), ``validation``, ``common``.
"""
from __future__ import annotations

from fakes.k8s.cluster import StandInCluster, StandInUnavailable
from fakes.k8s.kubelet import expand_k8s_vars
from fakes.k8s.validation import semantic_errors

__all__ = ["StandInCluster", "StandInUnavailable", "expand_k8s_vars", "semantic_errors"]
