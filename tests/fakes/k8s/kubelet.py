"""The stand-in's one-node "kubelet": each pod's container runs as one local process.

A "container" is every process that carries the pod's marker variable (found through
``/proc/*/environ``), because torchrun starts its workers in new sessions: all of them are
killed with the pod, and when the main process exits.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fakes.k8s.common import INDEX_KEY, NODE_NAME, ApiError, age_s, now_iso

if TYPE_CHECKING:
    from fakes.k8s.cluster import StandInCluster

_MARKER_ENV = "K8S_STANDIN_POD_UID"
_SETHOSTNAME = ("import os, socket, sys; socket.sethostname(sys.argv[1]); "
                "os.execvp(sys.argv[2], sys.argv[2:])")


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


def signal_all(uid: str, sig: int) -> None:
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


def can_unshare_uts() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    try:
        probe = subprocess.run(["unshare", "--uts", "--", sys.executable, "-c", _SETHOSTNAME, "standin-probe",
                                "true"], capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


class Kubelet:
    """Runs, watches and kills the pods of one stand-in cluster (called under its lock)."""

    def __init__(self, cluster: "StandInCluster") -> None:
        self.cluster = cluster

    def sync(self, pod: dict[str, Any]) -> None:
        meta, status = pod["metadata"], pod["status"]
        uid = meta["uid"]
        rt = self.cluster.runtimes.get(uid)
        if meta.get("deletionTimestamp"):
            if rt is None or rt.exited or rt.proc is None or rt.proc.poll() is not None:
                if rt is not None and rt.proc is not None:
                    signal_all(uid, signal.SIGKILL)
                del self.cluster.objects["pods"][(meta["namespace"], meta["name"])]
                return
        if rt is None:
            self.start_pod(pod)
            return
        if rt.proc is None:
            if status["phase"] == "Pending":
                cs = status["containerStatuses"][0]
                waiting = cs["state"].get("waiting") or {}
                if waiting.get("reason") == "ErrImagePull" and age_s(status.get("startTime")) >= 1:
                    cs["state"]["waiting"] = {"reason": "ImagePullBackOff",
                                              "message": f'Back-off pulling image "{cs["image"]}"'}
            return
        if rt.kill_deadline is not None and time.time() >= rt.kill_deadline:
            signal_all(uid, signal.SIGKILL)
            rt.kill_deadline = None
        if rt.exited:
            return
        rc = rt.proc.poll()
        if rc is None:
            return
        rt.exited = True
        signal_all(uid, signal.SIGKILL)    # the container's other processes go with it
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
        meta["resourceVersion"] = self.cluster.next_rv()

    def _schedule_problem(self, spec: dict[str, Any]) -> str | None:
        sel = spec.get("nodeSelector") or {}
        if any(self.cluster.node_labels.get(k) != v for k, v in sel.items()):
            return "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
        want = 0
        for c in spec["containers"]:
            limits = (c.get("resources") or {}).get("limits") or {}
            want += int(limits.get("nvidia.com/gpu", 0))
        if want > self.cluster.node_gpus:
            return "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."
        return None

    def start_pod(self, pod: dict[str, Any]) -> None:
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
        log_path = self.cluster.workdir / f"{meta['namespace']}_{meta['name']}.log"
        if container["image"] in self.cluster.unpullable_images:
            cstatus["state"] = {"waiting": {"reason": "ErrImagePull", "message":
                                f'failed to pull image "{container["image"]}": not found (stand-in: listed as unpullable)'}}
            self.cluster.runtimes[meta["uid"]] = PodRuntime(meta["uid"], None, log_path)
            return
        try:
            argv, env = self._container_process(pod, container)
        except ApiError as exc:
            cstatus["state"] = {"waiting": {"reason": "CreateContainerConfigError", "message": exc.message}}
            self.cluster.runtimes[meta["uid"]] = PodRuntime(meta["uid"], None, log_path)
            return
        exe = shutil.which(argv[0], path=env.get("PATH", os.defpath)) if "/" not in argv[0] else argv[0]
        if not exe:
            cstatus["state"] = {"terminated": {"exitCode": 128, "reason": "StartError", "message":
                                f'exec: "{argv[0]}": executable file not found in $PATH', "finishedAt": now_iso()}}
            status["phase"] = "Failed"
            self.cluster.runtimes[meta["uid"]] = PodRuntime(meta["uid"], None, log_path, exited=True)
            return
        if self.cluster.isolate_hostname:
            argv = ["unshare", "--uts", "--", sys.executable, "-c", _SETHOSTNAME, spec.get("hostname") or meta["name"], *argv]
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(argv, env=env, cwd=container.get("workingDir") or str(self.cluster.workdir),
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.cluster.runtimes[meta["uid"]] = PodRuntime(meta["uid"], proc, log_path)
        started = now_iso()
        cstatus.update(ready=True, started=True, containerID=f"standin://{proc.pid}",
                       state={"running": {"startedAt": started}})
        status["phase"] = "Running"
        status["conditions"] += [{"type": t, "status": "True", "lastTransitionTime": started}
                                 for t in ("Initialized", "ContainersReady", "Ready")]
        meta["resourceVersion"] = self.cluster.next_rv()

    def _container_process(self, pod: dict[str, Any], container: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
        meta, spec = pod["metadata"], pod["spec"]
        env = dict(self.cluster.image_env)
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

    def terminate(self, rt: PodRuntime, grace: float) -> None:
        if rt.proc is None or rt.exited or rt.proc.poll() is not None:
            return
        signal_all(rt.uid, signal.SIGTERM if grace > 0 else signal.SIGKILL)
        rt.kill_deadline = time.time() + grace if grace > 0 else None

    def delete_pod(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        if meta.get("deletionTimestamp"):
            return
        meta["deletionTimestamp"] = now_iso()
        grace = min(float(pod["spec"].get("terminationGracePeriodSeconds", 30)), self.cluster.max_grace)
        rt = self.cluster.runtimes.get(meta["uid"])
        if rt is not None:
            self.terminate(rt, grace)
