"""Redis connections that ride out a restart of the server instead of crashing.

A Redis restart (a failover, a crash with AOF, an upgrade) takes seconds. redis-py gives
up after three quick retries by default, and an RQ worker whose connection gives up
quits with its job half-done. ``ResilientRedis`` retries connection errors and timeouts
with exponential backoff for about half a minute, so a daemon process waits for Redis
to come back rather than dying. It is also a valid ``rq worker --connection-class``.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

# 0.1, 0.2, 0.4 ... capped at 2 s: about 35 s of waiting over 20 attempts.
OUTAGE_RETRIES = 20
_RETRIABLE = (redis.ConnectionError, redis.TimeoutError)


def _retry() -> Retry:
    return Retry(ExponentialBackoff(cap=2.0, base=0.1), OUTAGE_RETRIES, supported_errors=_RETRIABLE)


def _with_defaults(options: dict[str, Any]) -> dict[str, Any]:
    return {
        "retry": _retry(),
        "retry_on_error": list(_RETRIABLE),
        "health_check_interval": 15,
        "socket_connect_timeout": 2,
        **options,
    }


class ResilientRedis(redis.Redis):
    """``redis.Redis`` that retries through a server restart of up to ~30 s."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if "connection_pool" not in kwargs:
            kwargs = _with_defaults(kwargs)
        super().__init__(*args, **kwargs)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> redis.Redis:
        # The pool builds the connections, so the retry policy has to reach it.
        return super().from_url(url, **_with_defaults(kwargs))


def connect(url: str, **options: Any) -> redis.Redis:
    """A :class:`ResilientRedis` for *url*; *options* go to ``redis.Redis``."""
    return ResilientRedis.from_url(url, **options)
