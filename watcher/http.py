"""The watcher's HTTP endpoints: /health, /ready, /metrics and the push webhook.

``POST /hooks/git`` takes a GitHub-style push notification: the body signed with
HMAC-SHA256 under the shared secret, sent as ``X-Hub-Signature-256: sha256=<hex>``. The
signature is compared in constant time; an unsigned or wrongly signed request gets 401 and
changes nothing. A good one asks the daemon to fetch at once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SIGNATURE_HEADER = "X-Hub-Signature-256"
MAX_BODY = 1024 * 1024  # GitHub caps push payloads at 25 MB; we need none of the body


@dataclass(frozen=True)
class Endpoints:
    """What the HTTP server asks of the daemon."""

    readiness: Callable[[], tuple[bool, dict[str, Any]]]
    metrics: Callable[[], bytes]
    request_fetch: Callable[[], None]
    webhook_secret: bytes | None
    count_webhook: Callable[[int], None]


def signature_valid(secret: bytes | None, body: bytes, header: str | None) -> bool:
    """True when *header* is ``sha256=`` + the HMAC-SHA256 of *body* under *secret*."""
    if not secret or not header or not header.startswith("sha256="):
        return False
    expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), header.strip().encode())


class _Handler(BaseHTTPRequestHandler):
    endpoints: Endpoints
    server_version = "monkeytown-watcher"

    def do_GET(self) -> None:
        if self.path == "/health":
            self._reply(200, {"status": "ok"})
        elif self.path == "/ready":
            ready, detail = self.endpoints.readiness()
            self._reply(200 if ready else 503, {"ready": ready, **detail})
        elif self.path == "/metrics":
            self._send(200, self.endpoints.metrics(), "text/plain; version=0.0.4")
        else:
            self._reply(404, {"error": f"no such endpoint {self.path}"})

    def do_POST(self) -> None:
        if self.path != "/hooks/git":
            self._reply(404, {"error": f"no such endpoint {self.path}"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._webhook(413, {"error": f"body of {length} bytes exceeds {MAX_BODY}"})
            return
        body = self.rfile.read(length)
        if not signature_valid(
            self.endpoints.webhook_secret, body, self.headers.get(SIGNATURE_HEADER)
        ):
            self._webhook(401, {"error": f"missing or wrong {SIGNATURE_HEADER} signature"})
            return
        self.endpoints.request_fetch()
        self._webhook(202, {"status": "fetch requested"})

    def _webhook(self, status: int, payload: dict[str, Any]) -> None:
        self.endpoints.count_webhook(status)
        self._reply(status, payload)

    def _reply(self, status: int, payload: dict[str, Any]) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request stderr line; /metrics counts what matters."""


class HttpServer:
    """A threaded HTTP server on HOST:PORT, stopped and joined by :meth:`stop`."""

    def __init__(self, listen: str, endpoints: Endpoints) -> None:
        host, _, port = listen.rpartition(":")
        handler = type("Handler", (_Handler,), {"endpoints": endpoints})
        self.server = ThreadingHTTPServer((host or "127.0.0.1", int(port)), handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="watcher-http", kwargs={"poll_interval": 0.2}
        )

    @property
    def address(self) -> str:
        host, port = self.server.server_address[:2]
        return f"{host!s}:{port}"

    def start(self) -> HttpServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.thread.is_alive():
            self.server.shutdown()
            self.thread.join()
        self.server.server_close()
