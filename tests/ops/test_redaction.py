"""Secrets never reach the audit file or its Redis stream."""

from __future__ import annotations

from pathlib import Path

import redis
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from monkeytown_deploy import audit
from monkeytown_deploy.audit import STREAM, AuditLog, redact

SECRETS = {
    "redis_url": "redis://:hunter2hunter2@redis.internal:6379/0",
    "webhook": "https://hooks.slack.com/services/T000/B000/XXXXSECRETXXXX",
    "header": "Authorization: Bearer abcdefghijklmnopqrstuvwxyz012345",
    "query": "https://api.example.test/v1?token=s3cr3tvalue&page=2",
    "github": "push failed for ghp_ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
    "aws": "key AKIAABCDEFGHIJKLMNOP rejected",
    "pem": "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----",
}
LEAKS = (
    "hunter2hunter2",
    "XXXXSECRETXXXX",
    "abcdefghijklmnopqrstuvwxyz012345",
    "s3cr3tvalue",
    "ghp_ABCDEFGHIJ",
    "AKIAABCDEFGHIJKLMNOP",
    "MIIEpAIBAAKCAQEA",
)


def test_secrets_in_text_are_masked_in_file_and_stream(
    tmp_path: Path, redis_client: redis.Redis
) -> None:
    """Passwords in URLs, webhook URLs, bearer tokens and key shapes are masked everywhere."""
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, actor="worker@test", stream=redis_client)
    log.record("notify.failed", reason=" / ".join(SECRETS.values()), details=dict(SECRETS))

    written = path.read_text()
    mirrored = str(redis_client.xrange(STREAM))
    for leak in LEAKS:
        assert leak not in written and leak not in mirrored, leak
    assert "redis://:***@redis.internal:6379/0" in written
    assert "page=2" in written


def test_secret_named_fields_are_masked_whatever_they_hold() -> None:
    """A field named like a secret is masked; a numeric fencing token stays readable."""
    cleaned = redact(
        {
            "api_key": "plain",
            "webhook_url": "http://example.test/x",
            "password": b"bytes-secret",
            "nested": {"client_secret": "deep", "ok": "visible"},
            "token": 7,
            "signing_key": SecretStr("shh"),
        }
    )
    assert cleaned == {
        "api_key": "***",
        "webhook_url": "***",
        "password": "***",
        "nested": {"client_secret": "***", "ok": "visible"},
        "token": 7,
        "signing_key": "***",
    }


def test_a_commit_sha_is_not_mistaken_for_a_secret() -> None:
    """Forty hex digits and trigger ids pass through unchanged."""
    sha = "abc123def4567890abc123def4567890abc12345"
    assert redact({"sha": sha, "trigger_id": "trigger-" + "f" * 32}) == {
        "sha": sha,
        "trigger_id": "trigger-" + "f" * 32,
    }


@settings(max_examples=2000, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                *SECRETS.values(),
                *LEAKS,
                "://",
                "?",
                "&",
                "=",
                "key",
                "Bearer ",
                "x",
                " ",
                "\n",
                "hooks.",
                "https",
                ":",
                "@",
                "-----",
                "sig",
            ]
        )
        | st.text(max_size=12),
        max_size=8,
    ).map("".join)
)
def test_the_screen_never_skips_text_a_pattern_would_mask(text: str) -> None:
    """Masking with the quick screen in front gives what all six patterns give without it."""
    assert audit._mask_text(text) == audit._mask_all(text)
