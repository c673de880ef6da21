"""The watcher daemon: one loop that reconciles when woken, on a timer, and as leader only.

Everything happens on the loop's thread, one thing at a time: lease renewal, fetching,
re-arming the folder watch and reconciling. Other threads (inotify, HTTP) only set a flag
and wake it. That keeps the state simple and makes stopping clean: :meth:`Watcher.stop`
wakes the loop, which finishes the trigger in hand, releases the lease and returns.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import structlog

from monkeytown_deploy import sdnotify
from monkeytown_deploy.audit import AuditLog, AuditWriteError
from monkeytown_deploy.lease import Lease, default_owner
from triggers import Environment
from triggers.gitobjects import GitError
from watcher.decide import Policy
from watcher.events import ChangeSignal, WatchLimitError
from watcher.fetch import FetchError, fetch_and_fast_forward
from watcher.http import Endpoints, HttpServer
from watcher.metrics import WatcherMetrics
from watcher.reconcile import PassReport, Reconciler

log = structlog.get_logger("watcher")

LEASE_NAME = "watcher"
_RETRY_AFTER_ERROR = 1.0  # seconds; an unusable Redis or git is retried, never fatal


@dataclass(frozen=True)
class WatchOptions:
    """How one watcher runs (the ``watch`` command's options, resolved)."""

    repo: Path
    branch: str
    reconcile_interval: float = 30.0
    remote: str | None = None
    fetch_interval: float = 30.0
    listen: str | None = None
    lease_ttl: float = 10.0
    webhook_secret: bytes | None = None
    job_timeout: float = 3600.0
    inotify: bool = True


class Watcher:
    """Turns committed triggers on one branch into jobs while it holds the watcher lease."""

    def __init__(
        self,
        options: WatchOptions,
        client: redis.Redis,
        audit: AuditLog,
        policy_for: Callable[[Environment], Policy],
        owner: str | None = None,
    ) -> None:
        self.options = options
        self.client = client
        self.metrics = WatcherMetrics()
        self.lease = Lease(client, LEASE_NAME, owner or default_owner("watcher"), options.lease_ttl)
        self.reconciler = Reconciler(
            options.repo, options.branch, client, audit, policy_for, self.metrics,
            options.job_timeout,
        )  # fmt: skip
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self.reconciler.cancelled = self._checkpoint
        self._ping_every = sdnotify.watchdog_interval()
        self._next_lease = self._next_reconcile = self._next_fetch = self._next_ping = 0.0
        self._woke_at: float | None = None
        self._fetch_requested = False
        self._fetch_error: tuple[float, str] | None = None  # since when, and why
        self.signal: ChangeSignal | None = None
        self.http: HttpServer | None = None
        self.leader = False
        self.last_report: PassReport | None = None

    # -- signals from other threads ------------------------------------------------------

    def wake(self, at: float | None = None) -> None:
        """Ask the loop to look at git now (from inotify, the webhook, or a test)."""
        if self._woke_at is None:
            self._woke_at = at or time.time()
        self._wake.set()

    def request_fetch(self) -> None:
        self._fetch_requested = True
        self.wake()

    def stop(self) -> None:
        """Ask the loop to finish: safe from signal handlers and other threads."""
        self._stopping.set()
        self._wake.set()

    # -- the loop ------------------------------------------------------------------------

    def run(self, ready: Callable[[], None] | None = None) -> None:
        """Run until :meth:`stop`; *ready* is called once the watches and server are up."""
        self._start_services()
        try:
            sdnotify.notify("READY=1", f"STATUS=watching {self.options.branch}")
            if ready is not None:
                ready()
            self._loop()
        finally:
            sdnotify.notify("STOPPING=1")
            self._stop_services()

    def _loop(self) -> None:
        now = time.monotonic()
        self._next_lease = self._next_reconcile = self._next_fetch = self._next_ping = now
        while not self._stopping.is_set():
            self._keep_alive()
            if self.leader:
                self._lead()
            else:
                self._wake.clear()  # a standby ignores events: the lease says when it acts
            self._wake.wait(self._sleep_time())

    def _keep_alive(self) -> None:
        """Renew the lease and ping systemd's watchdog when due (also between triggers)."""
        now = time.monotonic()
        if now >= self._next_lease:
            if self._hold_lease():
                self._next_reconcile = now  # a new leader reconciles fully at once
            self._next_lease = now + self.options.lease_ttl / 3
        if self._ping_every is not None and now >= self._next_ping:
            sdnotify.notify("WATCHDOG=1")
            self._next_ping = now + self._ping_every

    def _checkpoint(self) -> bool:
        """Called between triggers of a long pass: True when the pass must stop now."""
        self._keep_alive()
        return self._stopping.is_set() or not self.leader

    def _lead(self) -> None:
        now = time.monotonic()
        if self.options.remote and (now >= self._next_fetch or self._fetch_requested):
            self._fetch()
            self._next_fetch = now + self.options.fetch_interval
        if self._wake.is_set() or now >= self._next_reconcile:
            timer = now >= self._next_reconcile
            if not self._reconcile(timer):
                self._next_reconcile = time.monotonic() + _RETRY_AFTER_ERROR
            elif timer:
                self._next_reconcile = time.monotonic() + self.options.reconcile_interval

    def _sleep_time(self) -> float:
        deadlines = [self._next_lease]
        if self.leader:
            deadlines.append(self._next_reconcile)
            if self.options.remote:
                deadlines.append(self._next_fetch)
        if self._ping_every is not None:
            deadlines.append(self._next_ping)
        return max(0.0, min(deadlines) - time.monotonic())

    def _reconcile(self, timer: bool) -> bool:
        """One pass if the tip moved (always when *timer*); False when it failed."""
        self._wake.clear()
        woke_at, self._woke_at = self._woke_at, None
        self._refresh_watches()
        try:
            tip = self.reconciler.tip()
            if not timer and tip == self.reconciler.last_commit:
                return True
            reason = "timer" if timer else "event"
            self.last_report = self.reconciler.reconcile(reason, woke_at, tip)
        except (GitError, redis.RedisError, AuditWriteError) as exc:
            self.metrics.reconcile_errors.inc()
            log.error("reconcile.failed", error=str(exc), retry_in=_RETRY_AFTER_ERROR)
            return False
        return True

    def _hold_lease(self) -> bool:
        """Acquire or renew the watcher lease; True when this call made us the leader."""
        was_leader = self.leader
        try:
            self.leader = self.lease.renew() if was_leader else self.lease.acquire()
        except redis.RedisError as exc:
            log.error("lease.unavailable", error=str(exc))
            self.leader = False
        self.metrics.leader.set(1 if self.leader else 0)
        if self.leader != was_leader:
            log.info("lease.acquired" if self.leader else "lease.lost", owner=self.lease.owner)
        return self.leader and not was_leader

    def _fetch(self) -> None:
        self._fetch_requested = False
        assert self.options.remote is not None
        try:
            moved = fetch_and_fast_forward(
                self.options.repo, self.options.remote, self.options.branch
            )
        except FetchError as exc:
            self.metrics.fetches.labels("failed").inc()
            log.error("fetch.failed", error=str(exc))
            if self._fetch_error is None:
                self._fetch_error = (time.time(), str(exc))
            return
        if self._fetch_error is not None:
            log.info("fetch.recovered", failing_for_s=round(time.time() - self._fetch_error[0], 1))
            self._fetch_error = None
        self.metrics.fetches.labels("moved" if moved else "current").inc()
        if moved:
            self.wake()

    def _refresh_watches(self) -> None:
        if self.signal is None:
            return
        try:
            self.signal.refresh()
        except WatchLimitError as exc:
            log.warning("watch.refresh_failed", error=str(exc))

    # -- start and stop ------------------------------------------------------------------

    def _start_services(self) -> None:
        if self.options.inotify:
            try:
                self.signal = ChangeSignal(self.options.repo, self.wake).start()
            except WatchLimitError as exc:
                log.warning("watch.unavailable", error=str(exc), fallback="timer only")
                self.signal = None
        if self.options.listen:
            self.http = HttpServer(self.options.listen, self._endpoints()).start()

    def _stop_services(self) -> None:
        if self.http is not None:
            self.http.stop()
        if self.signal is not None:
            self.signal.stop()
        if self.leader:
            try:
                self.lease.release()
            except redis.RedisError as exc:
                log.warning("lease.release_failed", error=str(exc))
            self.leader = False

    def _endpoints(self) -> Endpoints:
        return Endpoints(
            readiness=self.readiness,
            metrics=self.metrics.exposition,
            request_fetch=self.request_fetch,
            webhook_secret=self.options.webhook_secret,
            count_webhook=lambda status: self.metrics.webhooks.labels(str(status)).inc(),
        )

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready when git answers for the branch, the remote (if any) fetches, Redis pings.

        While the remote is unreachable the watcher keeps serving the commits it has, but
        it is not ready: what it serves may be behind what agents have pushed.
        """
        detail: dict[str, Any] = {"branch": self.options.branch}
        try:
            detail["commit"] = self.reconciler.tip()
            git_ok = True
        except GitError as exc:
            detail["git_error"] = str(exc)
            git_ok = False
        try:
            redis_ok = bool(self.client.ping())
            detail["lease_holder"] = self.lease.holder()
        except redis.RedisError as exc:
            detail["redis_error"] = str(exc)
            redis_ok = False
        remote_ok = self._fetch_error is None
        if self._fetch_error is not None:
            since, error = self._fetch_error
            detail["remote_error"] = error
            detail["remote_failing_since"] = since
        detail.update(git=git_ok, redis=redis_ok, leader=self.leader, owner=self.lease.owner)
        detail["remote"] = remote_ok
        return git_ok and redis_ok and remote_ok, detail
