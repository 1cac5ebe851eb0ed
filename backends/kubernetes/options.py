"""The Kubernetes backend's options: what each one means, and their parsing into
``KubernetesOptions``.

Value rules shared with the Slurm backend (numbers in range, the warm-pool options) live in
``backends.option_values``.
"""
from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from backends.option_values import POOL_OPTION_HELP, number, pool_settings
from runner.errors import UsageError
from runner.run.pools import PoolSettings

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
    **POOL_OPTION_HELP,
}

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
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


def _positive(option: str, raw: str, *, integer: bool = False, hi: float = float("inf")) -> float:
    return number("kubernetes", option, raw, lo=0, hi=hi, integer=integer, open_low=True)


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
    pools: PoolSettings | None = PoolSettings()   # replaced by parse(); None: pools off

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> "KubernetesOptions":
        kw: dict[str, Any] = {}
        for key, raw_value in raw.items():
            value: Any = str(raw_value).strip()
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
            elif key in POOL_OPTION_HELP:
                continue                      # parsed together below
            kw[key] = value
        kw["pools"] = pool_settings("kubernetes", {k: str(v) for k, v in raw.items()})
        return cls(**kw)
