"""Leases in Redis: who may enqueue, who may deploy to an environment right now.

A lease is a key holding its owner's name with an expiry. Each acquisition also takes a
fencing token, a number that only ever grows: an action that carries an older token than
the current one comes from a holder that lost its lease (a paused or partitioned process)
and must be refused.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass

import redis

from monkeytown_deploy.keys import key

# Renew and release only what we still own; a plain DEL could drop a successor's lease.
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


def default_owner(role: str) -> str:
    """``<role>@<host>:<pid>:<random>``: unique per process, readable in ``status``."""
    return f"{role}@{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass
class Lease:
    """One named lease, held by *owner* for *ttl* seconds at a time."""

    client: redis.Redis
    name: str
    owner: str
    ttl: float = 15.0
    token: int | None = None

    @property
    def key(self) -> str:
        return key("lease", self.name)

    @property
    def fence_key(self) -> str:
        return key("fence", self.name)

    def acquire(self) -> bool:
        """Take the lease if it is free (or already ours); on success, set a new token."""
        ttl_ms = int(self.ttl * 1000)
        if self.client.set(self.key, self.owner, nx=True, px=ttl_ms):
            self.token = int(self.client.incr(self.fence_key))
            return True
        return self.renew()

    def renew(self) -> bool:
        """Extend the lease; False means it was lost and the holder must stop acting."""
        renewed = bool(self.client.eval(_RENEW, 1, self.key, self.owner, int(self.ttl * 1000)))
        if renewed and self.token is None:
            self.token = int(self.client.get(self.fence_key) or 0)
        if not renewed:
            self.token = None
        return renewed

    def release(self) -> None:
        self.client.eval(_RELEASE, 1, self.key, self.owner)
        self.token = None

    def holder(self) -> str | None:
        value = self.client.get(self.key)
        return value.decode() if isinstance(value, bytes) else value

    def still_valid(self) -> bool:
        """True while we hold the lease and no later holder has taken a newer token."""
        if self.token is None:
            return False
        current = int(self.client.get(self.fence_key) or 0)
        return current == self.token and self.holder() == self.owner
