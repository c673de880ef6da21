"""Building a real `kubernetes` client that talks to a simulated API server."""

from __future__ import annotations

from typing import Any

from kubernetes import client


def api_client(url: str, **settings: Any) -> client.ApiClient:
    """An ApiClient for `url` without auth; `settings` set Configuration attributes.

    For example `api_client(server.url, retries=False)` turns off urllib3's own retries,
    so an injected dropped connection reaches the caller even on a GET. Close it when done.
    """
    configuration = client.Configuration()
    configuration.host = url
    for name, value in settings.items():
        setattr(configuration, name, value)
    return client.ApiClient(configuration)
