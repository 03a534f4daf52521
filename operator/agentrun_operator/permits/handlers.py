"""kopf handlers of ThrottlePool and ClusterThrottlePool: declare pools to the permit server and to the writer of their status.

The operator's handlers module imports this module: the import registers the handlers, and the
operator's startup calls ``start_permits`` (settings ``OperatorSettings.permits``).
The handlers only route; the decisions live in ``limits_from_spec`` and the status writer.
No handler here needs a finalizer (no deletion handler, timer or daemon), so pools carry none, and
kopf removes the one an earlier version's status timer left.
They are coroutines, never sync handlers: kopf runs sync handlers in worker threads, and the pools
belong to the permit server's event loop (their timers and waiters' futures live there).
"""

import time
from collections.abc import Mapping
from typing import Any

import kopf
from pydantic import ValidationError

from agentrun_api import clusterthrottlepool, constants, throttlepool
from agentrun_operator.kube import KubeClient
from agentrun_operator.permits.access import SubjectAccessReviewAccess
from agentrun_operator.permits.credentials import PermitKeyVerifier
from agentrun_operator.permits.pool import PoolLimits
from agentrun_operator.permits.server import CLUSTER_SCOPE, PermitServer, start_permit_server
from agentrun_operator.permits.settings import PermitSettings
from agentrun_operator.permits.status_writer import PoolStatusWriter

_RESOURCE = (constants.GROUP, constants.VERSION, throttlepool.PLURAL)
_CLUSTER_RESOURCE = (constants.GROUP, constants.VERSION, clusterthrottlepool.PLURAL)


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


def _server(memo: Any) -> PermitServer:
    server: PermitServer = memo.permit_server
    return server


def _writer(memo: Any) -> PoolStatusWriter:
    writer: PoolStatusWriter = memo.pool_status_writer
    return writer


async def start_permits(memo: Any, kube: KubeClient, settings: PermitSettings) -> None:
    """Start the permit server; the operator's startup calls it with its own API client, through which
    runs' credentials are checked."""
    verifier = PermitKeyVerifier(kube, cache_seconds=settings.credential_cache_seconds, clock=time.monotonic)
    access = SubjectAccessReviewAccess(kube, cache_seconds=settings.credential_cache_seconds, clock=time.monotonic)
    memo.permit_server = server = await start_permit_server(settings, verifier, access)
    memo.pool_status_writer = writer = PoolStatusWriter(
        kube, server.registry, interval_seconds=settings.status_interval_seconds
    )
    writer.start()


@kopf.on.cleanup()
async def stop_permits(memo: Any, **_: Any) -> None:
    if "pool_status_writer" in memo:
        await _writer(memo).close()
    if "permit_server" in memo:
        await _server(memo).close()


@kopf.on.resume(*_RESOURCE)
@kopf.on.create(*_RESOURCE)
@kopf.on.update(*_RESOURCE, field="spec")
@kopf.on.resume(*_CLUSTER_RESOURCE)
@kopf.on.create(*_CLUSTER_RESOURCE)
@kopf.on.update(*_CLUSTER_RESOURCE, field="spec")
async def declare_pool(
    spec: kopf.Spec, meta: kopf.Meta, status: kopf.Status, namespace: str | None, name: str, memo: Any, **_: Any
) -> None:
    namespace = namespace or CLUSTER_SCOPE  # a ClusterThrottlePool has none
    try:
        limits = limits_from_spec(spec)
    except ValueError as error:
        raise kopf.PermanentError(str(error)) from None
    _server(memo).registry.configure(namespace, name, limits)
    _writer(memo).track(namespace, name, generation=int(meta.get("generation") or 0), status=status)


@kopf.on.event(*_RESOURCE)
@kopf.on.event(*_CLUSTER_RESOURCE)
async def forget_deleted_pool(type: str, namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    # A watch event, not a deletion handler: pools carry no finalizer, so deleting one is never blocked.
    if type == "DELETED":
        namespace = namespace or CLUSTER_SCOPE
        _writer(memo).forget(namespace, name)
        _server(memo).registry.remove(namespace, name)
