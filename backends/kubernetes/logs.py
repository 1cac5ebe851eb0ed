"""Saving the pods' logs into the results dir: ``logs/launcher-pod{index}.log``."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from backends.kubernetes.manifests import CONTAINER
from backends.kubernetes.status import api_message, get, pod_index


def save_logs(core: Any, namespace: str, results_dir: str, pods: list[Any]) -> None:
    """Write each pod's log (previous container first, after a restart) into
    ``logs/launcher-pod{index}.log``; several pods of one index (a replaced pod) are
    written one after another, oldest first."""
    by_index: dict[int, list[Any]] = {}
    for pod in pods:
        by_index.setdefault(pod_index(pod), []).append(pod)
    logs_dir = Path(results_dir, "logs")
    logs_dir.mkdir(parents=True, exist_ok=True)
    for index, group in sorted(by_index.items()):
        group.sort(key=lambda p: (str(get(p, "metadata", "creation_timestamp")), get(p, "metadata", "name")))
        parts: list[str] = []
        for pod in group:
            name = get(pod, "metadata", "name")
            restarts = max([get(cs, "restart_count") or 0 for cs in get(pod, "status", "container_statuses") or []] or [0])
            if restarts:
                parts.append(f"==== pod {name}: previous container ====\n")
                parts.append(read_log(core, namespace, name, previous=True))
            if len(group) > 1 or restarts:
                parts.append(f"==== pod {name} ====\n")
            parts.append(read_log(core, namespace, name, previous=False))
        label = index if index >= 0 else "unknown"
        (logs_dir / f"launcher-pod{label}.log").write_text("".join(parts), errors="replace")


def read_log(core: Any, namespace: str, pod: str, *, previous: bool) -> str:
    try:
        # raw bytes: the client's str deserialisation mangles logs that look like JSON
        resp = core.read_namespaced_pod_log(pod, namespace, container=CONTAINER,
                                            previous=previous, _preload_content=False)
        text = resp.data.decode("utf-8", "replace")
        return text if text.endswith("\n") or not text else text + "\n"
    except Exception as exc:  # noqa: BLE001 - a pod that never started has no log
        msg = api_message(exc) if hasattr(exc, "status") else str(exc)
        return f"[no log for pod {pod}{' (previous)' if previous else ''}: {msg}]\n"
