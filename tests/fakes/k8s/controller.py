"""The stand-in's Job controller: Indexed Jobs, parallelism/completions, backoffLimit,
activeDeadlineSeconds, podFailurePolicy, and the Job's conditions and status counts."""
from __future__ import annotations

import copy
import secrets
import string
import time
import uuid
from typing import TYPE_CHECKING, Any

from fakes.k8s.common import INDEX_KEY, now_iso

if TYPE_CHECKING:
    from fakes.k8s.cluster import StandInCluster


def ranges(values: list[int]) -> str:
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


def pod_failure_action(policy: dict[str, Any] | None, pod: dict[str, Any]) -> tuple[str, str]:
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


class JobController:
    """Reconciles the Jobs of one stand-in cluster (called under its lock)."""

    def __init__(self, cluster: "StandInCluster") -> None:
        self.cluster = cluster

    def sync(self, job: dict[str, Any]) -> None:
        meta, spec, status = job["metadata"], job["spec"], job["status"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        pods = [p for p in self.cluster.objects["pods"].values() if p["metadata"]["labels"].get("controller-uid") == uid]
        if meta.get("deletionTimestamp"):
            if not pods:
                del self.cluster.objects["jobs"][(ns, name)]
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
                meta["resourceVersion"] = self.cluster.next_rv()
            return
        if "startTime" not in status:
            status["startTime"] = now_iso()
            status.update(active=0, succeeded=0, failed=0, ready=0)
            self.cluster.job_state[uid] = {"t0": time.time(), "counted": set(), "done": set()}
        js = self.cluster.job_state[uid]
        deadline = spec.get("activeDeadlineSeconds")
        if deadline is not None and time.time() - js["t0"] > deadline:
            self.fail_job(job, pods, "DeadlineExceeded", "Job was active longer than specified deadline")
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
            action, why = pod_failure_action(spec.get("podFailurePolicy"), pod)
            if action == "FailJob":
                status["failed"] += 1
                self.fail_job(job, pods, "PodFailurePolicy", why)
                return
            if action == "Ignore":
                continue
            status["failed"] += 1
            if status["failed"] > spec["backoffLimit"]:
                self.fail_job(job, pods, "BackoffLimitExceeded", "Job has reached the specified backoff limit")
                return
        # keep `parallelism` pods alive over the indexes not done yet
        live = [p for p in pods if p["status"]["phase"] in ("Pending", "Running") and not p["metadata"].get("deletionTimestamp")]
        live_indexes = {int(p["metadata"]["labels"].get(INDEX_KEY, "0")) for p in live}
        todo = [i for i in range(spec["completions"]) if i not in js["done"] and i not in live_indexes]
        for index in todo[: max(0, spec["parallelism"] - len(live))]:
            self.create_pod(job, index)
        done = js["done"]
        status["active"] = len(live)
        status["ready"] = sum(1 for p in live if p["status"]["phase"] == "Running")
        if done:
            status["completedIndexes"] = ranges(sorted(done))
        if len(done) >= spec["completions"]:
            t = now_iso()
            conds.append({"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached",
                          "message": "Reached expected number of succeeded pods", "lastProbeTime": t, "lastTransitionTime": t})
            conds.append({"type": "Complete", "status": "True", "reason": "CompletionsReached",
                          "message": "Reached expected number of succeeded pods", "lastProbeTime": t, "lastTransitionTime": t})
            status["completionTime"] = t
            status["active"] = 0
            meta["resourceVersion"] = self.cluster.next_rv()

    def fail_job(self, job: dict[str, Any], pods: list[dict[str, Any]], reason: str, message: str) -> None:
        t = now_iso()
        job["status"]["conditions"].append({"type": "FailureTarget", "status": "True", "reason": reason,
                                            "message": message, "lastProbeTime": t, "lastTransitionTime": t})
        for pod in pods:
            if pod["status"]["phase"] in ("Pending", "Running"):
                self.cluster.kubelet.delete_pod(pod)
        job["metadata"]["resourceVersion"] = self.cluster.next_rv()

    def create_pod(self, job: dict[str, Any], index: int) -> None:
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
                         "resourceVersion": self.cluster.next_rv(),
                         "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": jmeta["name"],
                                              "uid": jmeta["uid"], "controller": True, "blockOwnerDeletion": True}]},
            "spec": spec,
            "status": {"phase": "Pending", "conditions": []},
        }
        self.cluster.objects["pods"][(jmeta["namespace"], name)] = pod
