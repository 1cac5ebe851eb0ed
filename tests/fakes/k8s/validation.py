"""A few of the API server's validations that the OpenAPI schema does not express."""
from __future__ import annotations

import re
from typing import Any

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


def semantic_errors(obj: dict[str, Any], kind: str) -> list[str]:
    """A few of the API server's validations that the OpenAPI schema does not express."""
    errs: list[str] = []
    meta = obj.get("metadata") or {}
    name = meta.get("name") or ""
    if kind == "Service":
        if not (len(name) <= 63 and _DNS1035.match(name)):
            errs.append(f"metadata.name: Invalid value: {name!r}: a DNS-1035 label must start with a letter, "
                        "consist of lower case alphanumerics or '-', at most 63 characters")
    elif not (len(name) <= 63 and _DNS_LABEL.match(name)):
        errs.append(f"metadata.name: Invalid value: {name!r}: must be a DNS-1123 label of at most 63 characters")
    for where, labels in (("metadata.labels", meta.get("labels") or {}),
                          ("spec.template.metadata.labels",
                           ((obj.get("spec") or {}).get("template") or {}).get("metadata", {}).get("labels") or {})):
        for k, v in labels.items():
            prefix, _, lname = k.rpartition("/")
            if (prefix and not _DNS_SUBDOMAIN.match(prefix)) or not (len(lname) <= 63 and _LABEL_NAME.match(lname)):
                errs.append(f"{where}: Invalid value: {k!r}: not a qualified name")
            if v and not (len(v) <= 63 and _LABEL_NAME.match(v)):
                errs.append(f"{where}: Invalid value: {v!r}: not a valid label value")
    if kind == "Job":
        spec = obj["spec"]
        pspec = spec["template"]["spec"]
        restart = pspec.get("restartPolicy")
        if restart not in ("Never", "OnFailure"):
            errs.append(f"spec.template.spec.restartPolicy: Unsupported value: {restart!r}")
        if spec.get("podFailurePolicy") and restart != "Never":
            errs.append("spec.podFailurePolicy: Invalid value: only allowed with restartPolicy Never")
        if spec.get("completionMode") == "Indexed":
            if spec.get("completions") is None:
                errs.append("spec.completions: Required value: when completionMode is Indexed")
            else:
                host = f"{name}-{max(0, spec['completions'] - 1)}"
                if len(host) > 63:
                    errs.append(f"pod hostname {host!r} would be longer than 63 characters")
        sub = pspec.get("subdomain")
        if sub is not None and not (len(sub) <= 63 and _DNS_LABEL.match(sub)):
            errs.append(f"spec.template.spec.subdomain: Invalid value: {sub!r}")
        for c in pspec.get("containers") or []:
            if not (len(c["name"]) <= 63 and _DNS_LABEL.match(c["name"])):
                errs.append(f"container name {c['name']!r} is not a DNS-1123 label")
            if not c.get("image"):
                errs.append(f"container {c['name']}: image: Required value")
            for e in c.get("env") or []:
                if not _ENV_NAME.match(e["name"]):
                    errs.append(f"env name {e['name']!r} is not a valid environment variable name")
    elif kind == "Service":
        spec = obj["spec"]
        if spec.get("clusterIP") == "None" and spec.get("type", "ClusterIP") != "ClusterIP":
            errs.append("spec.clusterIP: None is only allowed for type ClusterIP")
    return errs
