"""The stand-in's HTTP front: the routes of the API subset the backend calls."""
from __future__ import annotations

import json
import re
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import parse_qs, urlsplit

from fakes.k8s.common import ApiError

if TYPE_CHECKING:
    from fakes.k8s.cluster import StandInCluster


_ROUTES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^/apis/batch/v1/namespaces/(?P<ns>[^/]+)/(?P<plural>jobs)$"), "collection"),
    (re.compile(r"^/apis/batch/v1/namespaces/(?P<ns>[^/]+)/(?P<plural>jobs)/(?P<name>[^/]+)$"), "item"),
    (re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/(?P<plural>services|pods)$"), "collection"),
    (re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/(?P<plural>services|pods)/(?P<name>[^/]+)$"), "item"),
    (re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<name>[^/]+)/log$"), "log"),
]


def make_handler(cluster: "StandInCluster") -> Callable[..., BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt: str, *args: Any) -> None:  # quiet
            return

        def _send(self, code: int, payload: bytes, ctype: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def _json(self, code: int, obj: Any) -> None:
            self._send(code, json.dumps(obj).encode())

        def _body(self) -> dict[str, Any]:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if not raw:
                return {}
            try:
                return json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ApiError(400, "BadRequest", f"body is not JSON: {exc}") from None

        def _handle(self, method: str) -> None:
            parts = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            cluster.requests.append((method, parts.path, parts.query))
            try:
                for rx, what in _ROUTES:
                    m = rx.match(parts.path)
                    if not m:
                        continue
                    g = m.groupdict()
                    ns, name = g["ns"], g.get("name")
                    plural = g.get("plural", "pods")
                    if what == "log" and method == "GET":
                        tail = int(query["tailLines"]) if "tailLines" in query else None
                        data = cluster.pod_log(ns, name, query.get("container"),
                                               query.get("previous", "false") == "true", tail)
                        return self._send(200, data, "text/plain")
                    if query.get("watch") in ("true", "1"):
                        raise ApiError(400, "BadRequest", "stand-in: watch is not emulated")
                    if what == "collection" and method == "GET":
                        return self._json(200, cluster.list(plural, ns, query.get("labelSelector", "")))
                    if what == "collection" and method == "POST" and plural != "pods":
                        return self._json(201, cluster.create(plural, ns, self._body()))
                    if what == "item" and method == "GET":
                        return self._json(200, cluster.get(plural, ns, name))
                    if what == "item" and method == "DELETE":
                        body = self._body()
                        policy = body.get("propagationPolicy") or query.get("propagationPolicy")
                        return self._json(200, cluster.delete(plural, ns, name, policy))
                    raise ApiError(405, "MethodNotAllowed", f"stand-in: {method} {parts.path} not emulated")
                raise ApiError(404, "NotFound", f"stand-in: {parts.path} not emulated")
            except ApiError as exc:
                self._json(exc.code, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                      "message": exc.message, "reason": exc.reason, "code": exc.code})

        def do_GET(self) -> None:
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

        def do_DELETE(self) -> None:
            self._handle("DELETE")

        def do_PUT(self) -> None:
            self._handle("PUT")

        def do_PATCH(self) -> None:
            self._handle("PATCH")

    return Handler
