"""Reading what the API server says about a launch's Job and Pods (pure: no client calls).

The objects are the official client's models (snake_case attributes) or plain dicts; every
accessor here takes either.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from backends.kubernetes.manifests import INDEX_ANNOTATION

IMAGE_PULL_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName",
                                "ErrImageNeverPull", "CreateContainerConfigError",
                                "CreateContainerError"})
#: pod status reasons that mean the infrastructure ended the pod
_INFRA_POD_REASONS = ("Evicted", "Preempting", "NodeLost", "Terminated", "UnexpectedAdmissionError")


def get(obj: Any, *path: str) -> Any:
    """Walk a client model (snake_case attributes) or a dict; None when absent."""
    for key in path:
        if obj is None:
            return None
        obj = obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)
    return obj


def pod_index(pod: Any) -> int:
    for source in (get(pod, "metadata", "annotations"), get(pod, "metadata", "labels")):
        if source and INDEX_ANNOTATION in source:
            try:
                return int(source[INDEX_ANNOTATION])
            except ValueError:
                pass
    return -1


def age(ts: Any) -> float:
    if isinstance(ts, datetime):
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=timezone.utc)
        return (datetime.now(timezone.utc) - ts).total_seconds()
    return 0.0


def infra_reason(pods: list[Any], pending_timeout: float) -> str | None:
    """Why the infrastructure ended (or blocks) the launch, from its pods; None when it did not."""
    for pod in sorted(pods, key=pod_index):
        name, index = get(pod, "metadata", "name"), pod_index(pod)
        status = get(pod, "status")
        phase = get(status, "phase")
        reason, message = get(status, "reason") or "", get(status, "message") or ""
        where = f"pod {name} (index {index})"
        for cond in get(status, "conditions") or []:
            if get(cond, "type") == "DisruptionTarget" and get(cond, "status") == "True":
                why = get(cond, "reason") or "disrupted"
                return f"{where} disrupted ({why}{': ' + reason if reason else ''}): {get(cond, 'message') or message}".rstrip(": ")
        if reason in _INFRA_POD_REASONS:
            return f"{where} {reason}: {message}".rstrip(": ")
        if phase == "Unknown":
            return f"{where} in phase Unknown (node lost?): {message}".rstrip(": ")
        for cs in (get(status, "init_container_statuses") or []) + (get(status, "container_statuses") or []):
            waiting = get(cs, "state", "waiting")
            if waiting is not None and get(waiting, "reason") in IMAGE_PULL_REASONS:
                return (f"{where}: {get(waiting, 'reason')} for image "
                        f"{get(cs, 'image')}: {get(waiting, 'message') or ''}").rstrip(": ")
        if phase == "Pending":
            for cond in get(status, "conditions") or []:
                if (get(cond, "type") == "PodScheduled" and get(cond, "status") == "False"
                        and get(cond, "reason") == "Unschedulable"):
                    waited = age(get(cond, "last_transition_time") or get(pod, "metadata", "creation_timestamp"))
                    if waited > pending_timeout:
                        return (f"{where} unschedulable for {waited:.0f}s "
                                f"(pending_timeout {pending_timeout:g}s): {get(cond, 'message') or ''}")
    return None


def exit_code(pods: list[Any]) -> tuple[int | None, int | None]:
    """(first non-zero exit code by pod index, or 0 when every pod succeeded; index of an OOMKilled pod)."""
    codes: list[tuple[int, int]] = []
    oom: int | None = None
    for pod in pods:
        for cs in get(pod, "status", "container_statuses") or []:
            term = get(cs, "state", "terminated") or get(cs, "last_state", "terminated")
            if term is None:
                continue
            if get(term, "reason") == "OOMKilled" and oom is None:
                oom = pod_index(pod)
            code = get(term, "exit_code")
            if code is not None:
                codes.append((pod_index(pod), int(code)))
    if not codes:
        return None, oom
    nonzero = sorted(c for c in codes if c[1] != 0)
    return (nonzero[0][1] if nonzero else 0), oom


def api_message(exc: Any) -> str:
    """The message of an API error (its JSON body's ``message``), else its reason."""
    body = getattr(exc, "body", None)
    if body:
        try:
            import json

            return str(json.loads(body).get("message") or body)[:500]
        except (ValueError, AttributeError):
            return str(body)[:500]
    return str(getattr(exc, "reason", "") or exc)
