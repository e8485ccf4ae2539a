"""The one HTTP endpoint every long-running service exposes: /metrics (Prometheus), /healthz (liveness)
and /readyz (readiness), served from a daemon thread so probes never wait on the service's loop."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

Probe = Callable[[], tuple[bool, bytes, str]]
"""Returns (healthy, body, content type); unhealthy answers 503."""


def serve_probes(port: int, live: Probe, ready: Probe, registry: CollectorRegistry = REGISTRY, name: str = "probes") -> ThreadingHTTPServer:
    """Serve /metrics, /healthz and /readyz on ``port`` (all interfaces: kubelet probes come from outside the pod)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server interface
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._answer(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/readyz"):
                ok, body, content_type = live() if path == "/healthz" else ready()
                self._answer(200 if ok else 503, body, content_type)
            else:
                self._answer(404, b"not found\n", "text/plain; charset=utf-8")

        def _answer(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:  # probes every few seconds: no access log
            pass

    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name=f"{name}-http", daemon=True).start()
    return server
