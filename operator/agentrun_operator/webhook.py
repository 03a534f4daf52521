"""The run's webhook: a signed POST once a run has ended, and once per call that starts waiting for approval;
retried with exponential backoff.

Signature: ``X-AgentRun-Signature: sha256=<hex>`` where hex is HMAC-SHA256, keyed with the Secret's
value, over ``<timestamp>.<body>``; the timestamp goes in ``X-AgentRun-Timestamp`` (Unix seconds) so a
receiver can reject old deliveries, and ``X-AgentRun-Event-Id`` is the same on every retry of one
event so a receiver can drop duplicates.

Redirects are never followed: the operator posts from the cluster's most privileged pod, and a
receiver answering 3xx could otherwise point it at any address the policy never allowed (the
metadata service, the API server, an in-cluster Service). A 3xx is a failed attempt, retried like
any other, and says so. The host is checked against the policy's allowed webhook hosts before each
attempt too, so a policy tightened after a run was admitted still holds.
"""

import dataclasses
import hashlib
import hmac
import json
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

import aiohttp

from agentrun_api import constants
from agentrun_api.status import AgentRunStatus, ApprovalRequest

SIGNATURE_HEADER: Final = "X-AgentRun-Signature"
EVENT_ID_HEADER: Final = "X-AgentRun-Event-Id"
TIMESTAMP_HEADER: Final = "X-AgentRun-Timestamp"
EVENT_TYPE: Final = "agentrun.finished"
APPROVAL_EVENT_TYPE: Final = "agentrun.approval_requested"


def sign(key: bytes, timestamp: int, body: bytes) -> str:
    """The signature header value for one delivery."""
    digest = hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify(key: bytes, timestamp: str, body: bytes, signature: str) -> bool:
    """What a receiver does: recompute and compare in constant time."""
    return hmac.compare_digest(sign(key, int(timestamp), body), signature)


def event_id(run_uid: str, phase: str) -> str:
    """Stable across retries and operator restarts: one run ends once."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{constants.GROUP}/{run_uid}/{phase}"))


def payload(namespace: str, name: str, uid: str, status: AgentRunStatus, the_event_id: str) -> bytes:
    result = status.result
    document: dict[str, Any] = {
        "type": EVENT_TYPE,
        "id": the_event_id,
        "run": {"namespace": namespace, "name": name, "uid": uid},
        "phase": status.phase.value if status.phase else "",
        "reason": status.reason,
        "message": status.message,
        "iteration": status.iteration,
        "restarts": status.restarts,
        "usage": status.usage.model_dump(mode="json", by_alias=True),
        "completionTime": status.completion_time.isoformat() if status.completion_time else None,
        "result": result.model_dump(mode="json", by_alias=True) if result else None,
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def approval_payload(namespace: str, name: str, uid: str, request: ApprovalRequest, the_event_id: str) -> bytes:
    """A call that starts waiting for approval: what, with which (redacted) arguments, since when, and how to decide."""
    document: dict[str, Any] = {
        "type": APPROVAL_EVENT_TYPE,
        "id": the_event_id,
        "run": {"namespace": namespace, "name": name, "uid": uid},
        "call": request.call,
        "tool": request.tool,
        "arguments": request.arguments,
        "requestedAt": request.requested_at.isoformat(),
        "decide": f"kubectl agentrun approve|deny {name} {request.call} -n {namespace} [--reason ...]",
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def backoff_seconds(attempt: int, *, base: float, cap: float) -> float:
    """Delay before attempt number ``attempt + 1``: base, 2 x base, 4 x base ... up to cap."""
    return float(min(cap, base * (2 ** max(attempt - 1, 0))))


@dataclasses.dataclass(frozen=True)
class DeliveryResult:
    ok: bool
    error: str = ""


async def deliver(
    session: aiohttp.ClientSession,
    url: str,
    key: bytes,
    body: bytes,
    the_event_id: str,
    *,
    now: datetime,
    timeout_seconds: float,
    host_allowed: bool = True,
) -> DeliveryResult:
    """One attempt. Any 2xx is delivered; anything else (a 3xx included) is an error to retry."""
    if not host_allowed:
        return DeliveryResult(ok=False, error="the webhook URL's host is not allowed by the operator's policy")
    timestamp = int(now.timestamp())
    headers: Mapping[str, str] = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign(key, timestamp, body),
        EVENT_ID_HEADER: the_event_id,
        TIMESTAMP_HEADER: str(timestamp),
        "User-Agent": "agentrun-operator",
    }
    try:
        async with session.post(
            url,
            data=body,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout_seconds),
            allow_redirects=False,
        ) as response:
            if 200 <= response.status < 300:
                return DeliveryResult(ok=True)
            if 300 <= response.status < 400:
                # The Location is not repeated: it may carry a token, and it is not where the run asked to post.
                return DeliveryResult(
                    ok=False,
                    error=f"HTTP {response.status} redirect from the webhook URL; redirects are not followed, "
                    "set spec.completionWebhook.url to the final URL",
                )
            return DeliveryResult(ok=False, error=f"HTTP {response.status} from the webhook URL")
    except (aiohttp.ClientError, TimeoutError) as error:
        return DeliveryResult(ok=False, error=f"{type(error).__name__} posting to the webhook URL")
