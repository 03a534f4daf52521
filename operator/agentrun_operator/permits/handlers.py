"""kopf handlers of ThrottlePool: declare pools to the permit server and mirror their state into status.

The operator's handlers module imports this module: the import registers the handlers, and the
operator's startup calls ``start_permits`` (settings ``OperatorSettings.permits``).
The handlers only route; the decisions live in ``limits_from_spec`` and ``status_from_snapshot``.
They are coroutines, never sync handlers: kopf runs sync handlers in worker threads, and the pools
belong to the permit server's event loop (their timers and waiters' futures live there).
"""

import math
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf
from pydantic import ValidationError

from agentrun_api import constants, throttlepool
from agentrun_operator.kube import KubeClient
from agentrun_operator.permits.credentials import StreamTokenVerifier
from agentrun_operator.permits.pool import PoolLimits, PoolSnapshot
from agentrun_operator.permits.server import PermitServer, start_permit_server
from agentrun_operator.permits.settings import PermitSettings

_RESOURCE = (constants.GROUP, constants.VERSION, throttlepool.PLURAL)
# How often each pool's status is looked at; it is written only when it changed and at most once per
# AGENTRUN_POOL_STATUS_INTERVAL_SECONDS, so the tick itself costs no API call.
STATUS_TICK_SECONDS = 1.0


def limits_from_spec(spec: Mapping[str, Any]) -> PoolLimits:
    """The pool limits a ThrottlePool spec declares; ValueError naming the bad field otherwise."""
    try:
        parsed = throttlepool.ThrottlePoolSpec.model_validate(dict(spec))
    except ValidationError as error:
        problems = "; ".join(
            f"spec.{'.'.join(str(part) for part in issue['loc'])}: {issue['msg']}" for issue in error.errors()
        )
        raise ValueError(f"invalid ThrottlePool: {problems}") from None
    return PoolLimits(
        max_in_flight=parsed.max_requests_in_flight,
        requests_per_minute=parsed.requests_per_minute,
        burst=parsed.burst_requests,
        tokens_per_minute=parsed.tokens_per_minute,
    )


def status_from_snapshot(snapshot: PoolSnapshot, *, generation: int, now: datetime) -> dict[str, Any]:
    """The status fields to write for a pool, as JSON; whole seconds, so an idle pool's status is stable."""
    throttled_until = None
    if snapshot.paused_for_seconds > 0:
        # Rounded up to the whole second, so writes a moment apart agree on the same end.
        exact = now + timedelta(seconds=snapshot.paused_for_seconds)
        throttled_until = exact.replace(microsecond=0) + timedelta(seconds=1 if exact.microsecond else 0)
    status = throttlepool.ThrottlePoolStatus(
        in_flight=snapshot.in_flight,
        queue_depth=snapshot.queue_depth,
        waiting_runs=snapshot.waiting_runs,
        granted_last_minute=snapshot.granted_last_minute,
        throttled_until=throttled_until,
        accepting=snapshot.opens_in_seconds <= 0,
        observed_generation=generation,
    )
    return status.model_dump(mode="json", by_alias=True)


def _server(memo: Any) -> PermitServer:
    server: PermitServer = memo.permit_server
    return server


async def start_permits(memo: Any, kube: KubeClient, settings: PermitSettings) -> None:
    """Start the permit server; the operator's startup calls it with its own API client, through which
    runs' credentials are checked."""
    verifier = StreamTokenVerifier(kube, cache_seconds=settings.credential_cache_seconds, clock=time.monotonic)
    memo.permit_settings = settings
    memo.permit_server = await start_permit_server(settings, verifier)


@kopf.on.cleanup()
async def stop_permits(memo: Any, **_: Any) -> None:
    if "permit_server" in memo:
        await _server(memo).close()


@kopf.on.resume(*_RESOURCE)
@kopf.on.create(*_RESOURCE)
@kopf.on.update(*_RESOURCE, field="spec")
async def declare_pool(spec: kopf.Spec, namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    assert namespace is not None  # ThrottlePool is namespaced
    try:
        limits = limits_from_spec(spec)
    except ValueError as error:
        raise kopf.PermanentError(str(error)) from None
    _server(memo).registry.configure(namespace, name, limits)


@kopf.on.event(*_RESOURCE)
async def forget_deleted_pool(type: str, namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    # A watch event, not a deletion handler: pools carry no finalizer, so deleting one is never blocked.
    if type == "DELETED" and namespace is not None:
        _server(memo).registry.remove(namespace, name)


@kopf.timer(*_RESOURCE, interval=STATUS_TICK_SECONDS)
async def report_pool_status(
    namespace: str | None,
    name: str,
    meta: kopf.Meta,
    status: kopf.Status,
    patch: kopf.Patch,
    memo: Any,
    **_: Any,
) -> None:
    registry = _server(memo).registry
    if not registry.leading:
        return  # the leader writes the pools' status; a standby's pools see no traffic
    snapshot = registry.snapshot(namespace, name) if namespace is not None else None
    now = time.monotonic()
    # memo is this pool's own copy of the operator memo: the last write time is per pool.
    if (
        snapshot is None
        or now < memo.get("pool_status_written_at", -math.inf) + memo.permit_settings.status_interval_seconds
    ):
        return
    fresh = status_from_snapshot(snapshot, generation=int(meta.get("generation") or 0), now=datetime.now(UTC))
    if any(status.get(key) != value for key, value in fresh.items()):
        patch.status.update(fresh)
        memo.pool_status_written_at = now
