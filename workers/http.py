"""Small HTTP reads and posts for gates, metrics and notifications, on the standard library."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from workers.errors import TemporaryError

TIMEOUT = 5.0


def get_json(url: str, *, timeout: float = TIMEOUT) -> tuple[int, Any]:
    """HTTP status and decoded JSON body (None when the body is not JSON).

    Raises :class:`TemporaryError` when no answer came: refused, reset, timed out.
    """
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return response.status, _decode(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, _decode(error.read())
    except (urllib.error.URLError, OSError) as error:
        raise TemporaryError(f"GET {url}: no answer ({_reason(error)})") from error


def post_json(url: str, body: Any, *, timeout: float = TIMEOUT) -> int:
    """POST *body* as JSON; returns the HTTP status, raises TemporaryError on no answer."""
    data = json.dumps(body).encode()
    request = urllib.request.Request(  # noqa: S310
        url, data=data, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as error:
        with error:
            return int(error.code)
    except (urllib.error.URLError, OSError) as error:
        raise TemporaryError(f"POST {url}: no answer ({_reason(error)})") from error


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _reason(error: Exception) -> str:
    return str(getattr(error, "reason", None) or error)
