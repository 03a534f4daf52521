"""The permit protocol between a runner and the operator's permit server, defined once for both sides.

Every model call of a run in a ThrottlePool first obtains a permit over HTTP:

``POST /pools/<namespace>/<pool>/permits`` (body ``PermitRequest``) long-polls until a permit is
    granted (201, ``PermitGrant``) or the wait budget is spent (429, ``PermitRefusal`` with
    reason ``QueueTimeout`` and the queue depth at that moment).
``PUT .../permits/<lease>`` renews a lease (200) or reports it gone (404); the client renews every
    ``leaseSeconds / 3`` while its call runs, so a runner killed while holding a permit returns it
    within one lease period.
``DELETE .../permits/<lease>?tokensUsed=N`` releases it (204), charging the call's tokens.
``POST .../penalties`` (body ``PenaltyReport``) reports a provider 429 with Retry-After (202).

Each request carries the run's permit key: ``Authorization: Bearer <permit key>`` (the Secret
``<run>-permit-key``, which only the runner pod receives, as ``AGENTRUN_PERMIT_KEY``) and the run's name in
``RUN_HEADER``; the server checks the key against that Secret in the pool's namespace, so a run can only
draw from pools of its own namespace. The run's stream token is refused: every reader of the run's stream
holds it, and a reader must not be able to take permits, report penalties or pause a pool.

``/clusterpools/<pool>/namespaces/<namespace>/...`` are the same requests for a ClusterThrottlePool:
the server checks the credential in ``<namespace>`` and then whether the run's ServiceAccount may
``use`` the pool (403, reason ``Forbidden``, saying what to grant, when it may not).
A ``PenaltyReport`` of 0 seconds reports a 429 without Retry-After: it lowers the pool's rate only.
"""

from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

RUN_HEADER: Final = "X-AgentRun-Run"
TOKENS_USED_PARAM: Final = "tokensUsed"
# Longest single wait a client may ask for; the same bound as spec.throttle.maxSecondsToWaitInQueue.
MAX_WAIT_SECONDS: Final = 86_400.0


def pool_path(namespace: str, pool: str, *, cluster: bool = False) -> str:
    """Where a run of ``namespace`` asks for permits of ``pool``: its namespace's ThrottlePool, or with
    ``cluster`` the ClusterThrottlePool of that name (the namespace then says whose credential to check)."""
    if cluster:
        return f"/clusterpools/{pool}/namespaces/{namespace}"
    return f"/pools/{namespace}/{pool}"


def permits_path(namespace: str, pool: str, *, cluster: bool = False) -> str:
    return f"{pool_path(namespace, pool, cluster=cluster)}/permits"


def lease_path(namespace: str, pool: str, lease_id: str, *, cluster: bool = False) -> str:
    return f"{permits_path(namespace, pool, cluster=cluster)}/{lease_id}"


def penalties_path(namespace: str, pool: str, *, cluster: bool = False) -> str:
    return f"{pool_path(namespace, pool, cluster=cluster)}/penalties"


class PermitMessage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", alias_generator=to_camel, populate_by_name=True)


class PermitRequest(PermitMessage):
    request_id: str = Field(
        min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_-]+$", description="Same id on every retry of one call."
    )
    max_wait_seconds: float = Field(ge=0, le=MAX_WAIT_SECONDS, description="Wait budget left for this call.")
    waited_seconds: float = Field(
        default=0.0, ge=0, le=MAX_WAIT_SECONDS, description="Already waited (before a reconnect): keeps the place."
    )


class PermitGrant(PermitMessage):
    lease_id: str
    lease_seconds: float = Field(gt=0)
    waited_seconds: float = Field(ge=0)


class PermitRefusal(PermitMessage):
    reason: Literal[
        "QueueTimeout",
        "PoolNotFound",
        "Unauthorized",
        "Forbidden",
        "BadRequest",
        "Superseded",
        "Unavailable",
        "LeaseNotFound",
    ]
    message: str
    queue_depth: int | None = None
    in_flight: int | None = None


class PenaltyReport(PermitMessage):
    retry_after_seconds: float = Field(ge=0, le=MAX_WAIT_SECONDS)
