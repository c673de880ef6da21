"""systemd's notification protocol: READY=1, WATCHDOG=1, STOPPING=1, STATUS=...

A datagram to ``$NOTIFY_SOCKET``; without that variable every call does nothing, so the
same code runs under systemd, in a container and in a terminal.
"""

from __future__ import annotations

import os
import socket


def notify(*states: str) -> bool:
    """Send ``KEY=value`` lines to systemd; False when not running under a notify unit."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # an abstract socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(address)
            sock.sendall("\n".join(states).encode())
        except OSError:
            return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec), or None when not asked."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and int(pid) != os.getpid()):
        return None
    return int(usec) / 2_000_000
