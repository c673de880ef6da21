"""Slack-compatible webhook notifications: start, success, failure, rollback.

A notification that cannot be delivered is recorded in the audit log as ``notify.failed``
and never fails the deployment: the audit log is the record, a chat message a courtesy.
"""

from __future__ import annotations

from typing import Any

from monkeytown_deploy.audit import AuditLog
from workers.errors import TemporaryError
from workers.http import post_json

ICONS = {
    "started": ":rocket:",
    "succeeded": ":white_check_mark:",
    "failed": ":x:",
    "rollback": ":rewind:",
}


class Notifier:
    def __init__(self, url: str | None, audit: AuditLog) -> None:
        self.url = url
        self.audit = audit

    def send(self, kind: str, text: str, **fields: Any) -> None:
        """Post ``{"text": ...}`` (what Slack reads) plus the structured *fields*."""
        if not self.url:
            return
        body = {"text": f"{ICONS.get(kind, '')} {text}".strip(), "event": kind, **fields}
        try:
            status = post_json(self.url, body)
            problem = None if 200 <= status < 300 else f"webhook answered HTTP {status}"
        except TemporaryError as error:
            problem = str(error)
        if problem is not None:
            self.audit.record("notify.failed", outcome="failed", kind=kind, reason=problem)
