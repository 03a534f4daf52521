"""Completion webhook signing: HMAC-SHA256 over timestamp and body, stable event ids, backoff."""

import hashlib
import hmac
import json

import pytest

from agentrun_api.status import AgentRunStatus, Phase
from agentrun_operator import webhook

pytestmark = pytest.mark.unit

KEY = b"whsec-test-key"


def test_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    body = b'{"phase":"Succeeded"}'
    expected = hmac.new(KEY, b"1767268800." + body, hashlib.sha256).hexdigest()
    assert webhook.sign(KEY, 1767268800, body) == f"sha256={expected}"


def test_receiver_verification_rejects_a_changed_body_timestamp_or_key() -> None:
    body = b'{"phase":"Succeeded"}'
    signature = webhook.sign(KEY, 100, body)
    assert webhook.verify(KEY, "100", body, signature)
    assert not webhook.verify(KEY, "101", body, signature)
    assert not webhook.verify(KEY, "100", body + b" ", signature)
    assert not webhook.verify(b"other", "100", body, signature)


def test_event_id_is_stable_per_run_and_outcome() -> None:
    assert webhook.event_id("uid-1", "Succeeded") == webhook.event_id("uid-1", "Succeeded")
    assert webhook.event_id("uid-1", "Succeeded") != webhook.event_id("uid-2", "Succeeded")


def test_payload_names_the_run_and_its_outcome() -> None:
    status = AgentRunStatus(phase=Phase.FAILED, reason="TokenBudgetExceeded", message="over budget", iteration=9)
    document = json.loads(webhook.payload("team-a", "q3", "uid-q3", status, "evt-1"))
    assert document["run"] == {"namespace": "team-a", "name": "q3", "uid": "uid-q3"}
    assert (document["phase"], document["reason"], document["iteration"], document["id"]) == (
        "Failed",
        "TokenBudgetExceeded",
        9,
        "evt-1",
    )


def test_backoff_doubles_from_the_base_up_to_the_cap() -> None:
    delays = [webhook.backoff_seconds(n, base=2, cap=20) for n in range(1, 7)]
    assert delays == [2, 4, 8, 16, 20, 20]
