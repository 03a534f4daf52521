"""The ThrottlePool resource: one provider budget shared by every AgentRun that names it.

A provider's rate limits belong to an API key or an organisation, not to a pod, so the limits are
declared once per namespace (where the runs sharing an API key Secret live) as a small custom
resource rather than in the operator's settings: a pool is then reviewed, versioned and applied
like every other manifest (GitOps), its live state is readable with ``kubectl get throttlepools``,
and changing a limit needs no operator restart. Runs join a pool with ``spec.throttle.pool``.

The CRD's schema is generated from these models (``agentrun_api.crd``), as for AgentRun.
"""

from datetime import datetime
from typing import Final

from pydantic import Field

from agentrun_api import constants
from agentrun_api.spec import SpecModel
from agentrun_api.status import StatusModel

KIND: Final = "ThrottlePool"
PLURAL: Final = "throttlepools"
SINGULAR: Final = "throttlepool"
SHORT_NAMES: Final = ("tp",)
CRD_NAME: Final = f"{PLURAL}.{constants.GROUP}"


class ThrottlePoolSpec(SpecModel):
    """The provider limits the pool enforces across all of its runs."""

    max_requests_in_flight: int = Field(
        ge=1, le=10_000, description="Model calls of all runs in the pool that may be in flight at once."
    )
    requests_per_minute: int = Field(
        ge=1,
        le=1_000_000,
        description="Model calls started per minute, granted at an even pace (requestsPerMinute/60 per second) "
        "as providers enforce it, with bursts of at most burstRequests.",
    )
    burst_requests: int = Field(
        default=1,
        ge=1,
        le=10_000,
        description="Calls that may start back to back after a quiet spell; in any window of T seconds at most "
        "burstRequests + requestsPerMinute x T / 60 calls start.",
    )
    tokens_per_minute: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000_000,
        description="Tokens (prompt plus completion) per minute. Runs report each call's usage when it ends; a "
        "new call waits while the pool is over this pace. Omit when the provider sets no token limit.",
    )


class ThrottlePoolStatus(StatusModel):
    """The pool as the operator's permit server sees it, written at a bounded rate."""

    in_flight: int = Field(default=0, ge=0, description="Permits held right now (model calls in flight).")
    queue_depth: int = Field(default=0, ge=0, description="Model calls waiting for a permit.")
    waiting_runs: int = Field(default=0, ge=0, description="Runs with at least one call waiting.")
    granted_last_minute: int = Field(
        default=0, ge=0, description="Permits granted in the last 60 seconds (the achieved rate per minute)."
    )
    current_requests_per_minute: int = Field(
        default=0,
        ge=0,
        description="The rate the pool grants at now: requestsPerMinute, lowered on each provider 429 and climbing "
        "back while none come (additive increase, multiplicative decrease).",
    )
    throttled_until: datetime | None = Field(
        default=None,
        description="Set while a 429 with Retry-After from the provider pauses the whole pool: when grants resume.",
    )
    accepting: bool = Field(
        default=False,
        description="Whether the pool grants permits. It grants none during its first lease period after the "
        "operator starts or the pool is declared, so permits held from before a restart are counted first.",
    )
    observed_generation: int = Field(default=0, ge=0, description="The spec generation the permit server enforces.")
