"""Environment leases held by one job, renewed in the background while it runs.

RQ alone cannot keep two deploys apart (a work-horse outlives a SIGKILLed worker), so each
environment has a Redis lease with a fencing token. A job takes the lease of every
environment it is about to change and keeps it renewed from a thread; before every write
to the cluster it calls :meth:`Leases.guard`, which refuses once any lease was lost or a
newer holder has taken a newer token.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

import redis

from monkeytown_deploy.audit import AuditLog
from monkeytown_deploy.lease import Lease
from monkeytown_deploy.metrics import LEASE_WAIT_SECONDS
from workers.errors import LeaseLost

POLL = 0.25


def lease_name(environment: str) -> str:
    return f"env-{environment}"


class Leases:
    def __init__(self, client: redis.Redis, owner: str, ttl: float, audit: AuditLog) -> None:
        self.client = client
        self.owner = owner
        self.ttl = ttl
        self.audit = audit
        self._held: dict[str, tuple[Lease, float]] = {}
        self._lost: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self, environment: str, while_waiting: Callable[[], None]) -> None:
        """Wait for *environment*'s lease; *while_waiting* runs each poll (and may raise)."""
        if environment in self._held:
            return
        lease = Lease(self.client, lease_name(environment), self.owner, self.ttl)
        started = time.monotonic()
        announced = False
        while not lease.acquire():
            if not announced:
                self.audit.record(
                    "lease.waiting", environment=environment, holder=lease.holder(),
                    lease=lease.name,
                )  # fmt: skip
                announced = True
            while_waiting()
            time.sleep(POLL)
        waited = time.monotonic() - started
        LEASE_WAIT_SECONDS.labels(environment).observe(waited)
        with self._lock:
            self._held[environment] = (lease, time.monotonic())
        self.audit.record(
            "lease.acquired", environment=environment, lease=lease.name, token=lease.token,
            waited_ms=round(waited * 1000, 1),
        )  # fmt: skip
        self._start_renewing()

    def release(self, environment: str) -> None:
        with self._lock:
            held = self._held.pop(environment, None)
        if held is None:
            return
        lease, since = held
        lease.release()
        self.audit.record(
            "lease.released", environment=environment, lease=lease.name,
            duration_ms=round((time.monotonic() - since) * 1000, 1),
        )  # fmt: skip

    def guard(self) -> None:
        """Raise :class:`LeaseLost` unless every held lease is still ours, token and all."""
        with self._lock:
            held = dict(self._held)
            lost = set(self._lost)
        for environment, (lease, _) in held.items():
            if environment in lost or not lease.still_valid():
                raise LeaseLost(
                    f"lost the lease of {environment} (now held by {lease.holder()!r}); "
                    "another worker may be deploying it, so this job stops"
                )

    def close(self) -> None:
        """Release every lease and stop renewing."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for environment in list(self._held):
            with contextlib.suppress(redis.RedisError):  # it expires on its own after ttl
                self.release(environment)

    def _start_renewing(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._renew, name="lease-renewal", daemon=True)
            self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            with self._lock:
                held = dict(self._held)
            for environment, (lease, _) in held.items():
                try:
                    renewed = lease.renew()
                except redis.RedisError:
                    continue  # try again next round; the ttl leaves room for two misses
                if not renewed:
                    with self._lock:
                        self._lost.add(environment)
