"""The HTTP plumbing shared by the simulated API server and the simulated application.

Both run a threaded stdlib server in a background thread. Tests fail on a leaked thread,
so closing must end every handler thread too, including those parked on an idle
keep-alive connection from a client's connection pool: the server remembers its open
connections and shuts them down before joining the handler threads.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qsl, urlsplit

log = logging.getLogger(__name__)

#: Idle keep-alive connections are dropped after this many seconds.
IDLE_CONNECTION_TIMEOUT = 30.0

#: How often the accept loop checks for shutdown.
SHUTDOWN_POLL_SECONDS = 0.02


class SimHTTPServer(ThreadingHTTPServer):
    """A threaded HTTP server whose close() also ends every connection's handler thread."""

    daemon_threads = True
    block_on_close = True
    allow_reuse_address = True

    def __init__(self, port: int, handler: type[BaseHTTPRequestHandler], owner: Any) -> None:
        self.owner = owner
        self.closing = threading.Event()
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", port), handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def end_connections(self) -> None:
        """Shut down every open connection so that handler threads blocked on it return."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # The client may have closed it first.
                connection.shutdown(socket.SHUT_RDWR)


class BackgroundServer:
    """Runs a SimHTTPServer's serve_forever loop in a named thread until close()."""

    def __init__(self, server: SimHTTPServer, name: str) -> None:
        self.server = server
        # A short poll interval keeps close() quick: shutdown() waits for the loop to wake.
        self._thread = threading.Thread(
            target=server.serve_forever, args=(SHUTDOWN_POLL_SECONDS,), name=name, daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def close(self) -> None:
        """Stop accepting, end open connections, and join the loop and handler threads."""
        self.server.closing.set()
        self.server.shutdown()
        self.server.end_connections()
        self.server.server_close()
        self._thread.join()


class Closeable:
    """Gives a class with close() the context manager protocol."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class JSONRequestHandler(BaseHTTPRequestHandler):
    """A request handler with helpers for JSON bodies, query strings and dropped connections."""

    protocol_version = "HTTP/1.1"
    timeout = IDLE_CONNECTION_TIMEOUT
    # Headers and body go out in separate writes; with Nagle on, each answer would wait
    # for the client's delayed ACK (~40 ms). Real API servers set TCP_NODELAY too.
    disable_nagle_algorithm = True
    server: SimHTTPServer

    @property
    def url_path(self) -> str:
        return urlsplit(self.path).path

    @property
    def query(self) -> dict[str, str]:
        return dict(parse_qsl(urlsplit(self.path).query, keep_blank_values=True))

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").split(";")[0].strip()

    def read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def send_text(self, status: int, text: str) -> None:
        payload = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def reset_connection(self) -> None:
        """Close the socket with a TCP reset and no response, as a crashed proxy would."""
        # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.server.owner.__class__.__name__, *args)
