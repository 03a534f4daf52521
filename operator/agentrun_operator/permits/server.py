"""The permit server: the HTTP face of the throttle pools (protocol in ``agentrun_api.permits``)."""

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from pydantic import ValidationError

from agentrun_api import permits as protocol
from agentrun_api.names import DNS_LABEL_PATTERN
from agentrun_operator.permits.access import AccessLookupError, PoolAccess, how_to_grant
from agentrun_operator.permits.credentials import CredentialLookupError, CredentialVerifier
from agentrun_operator.permits.metrics import QUEUE_WAIT_SECONDS, pool_label
from agentrun_operator.permits.pool import (
    Pool,
    PoolClosedError,
    PoolLimits,
    PoolSnapshot,
    PoolTiming,
    QueueTimeoutError,
    SupersededError,
)
from agentrun_operator.permits.settings import PermitSettings

logger = logging.getLogger(__name__)

_NAME = DNS_LABEL_PATTERN.strip("^$")
_POOL_ROUTE = f"/pools/{{namespace:{_NAME}}}/{{pool:{_NAME}}}"
_CLUSTER_POOL_ROUTE = f"/clusterpools/{{pool:{_NAME}}}/namespaces/{{namespace:{_NAME}}}"
_TOKEN_COUNT = re.compile(r"[0-9]{1,12}")
# The registry's namespace of ClusterThrottlePools: no namespace is named "".
CLUSTER_SCOPE = ""


def _is_cluster_pool(request: web.Request) -> bool:
    return request.path.startswith("/clusterpools/")


def _key_of(request: web.Request) -> tuple[str, str]:
    """The registry key of the pool a request names."""
    namespace = CLUSTER_SCOPE if _is_cluster_pool(request) else request.match_info["namespace"]
    return (namespace, request.match_info["pool"])


class PoolRegistry:
    """The pools this operator serves, keyed by (namespace, name), ClusterThrottlePools by (CLUSTER_SCOPE,
    name); fed by the pools' kopf handlers."""

    def __init__(self, timing: PoolTiming, clock: Callable[[], float]) -> None:
        self.timing = timing
        self._clock = clock
        self._pools: dict[tuple[str, str], Pool] = {}
        self._started_at = clock()
        self.stopping = False
        # False while another replica of the operator holds the leader Lease: its permit server is the
        # one runners must ask (the permit Service selects the leader's pod; this is for the moments
        # the label lags behind the Lease).
        self.leading = True

    @property
    def learning(self) -> bool:
        """True during the first lease period: the ThrottlePools may not all be declared yet (the
        operator lists them after it starts), so an unknown pool is not yet a missing one."""
        return self._clock() < self._started_at + self.timing.lease_seconds

    def take_over(self) -> None:
        """This replica became the leader: serve, and fail closed for one lease period as after a restart,
        so permits the previous leader granted are adopted as their holders renew them here first."""
        now = self._clock()
        self._started_at = now
        for pool in self._pools.values():
            pool.opens_at = max(pool.opens_at, now + self.timing.lease_seconds)
        self.leading = True

    def configure(self, namespace: str, name: str, limits: PoolLimits) -> Pool:
        """Declare a pool or change its limits; waiters and leases of an existing pool are kept."""
        pool = self._pools.get((namespace, name))
        if pool is None:
            pool = self._pools[(namespace, name)] = Pool(limits, self.timing, self._clock)
        elif pool.limits != limits:
            pool.reconfigure(limits)
        return pool

    def remove(self, namespace: str, name: str) -> None:
        pool = self._pools.pop((namespace, name), None)
        if pool is not None:
            pool.close()
            with contextlib.suppress(KeyError):  # no call of that pool was ever observed
                QUEUE_WAIT_SECONDS.remove(pool_label(namespace, name))

    def get(self, namespace: str, name: str) -> Pool | None:
        return self._pools.get((namespace, name))

    def snapshot(self, namespace: str, name: str) -> PoolSnapshot | None:
        pool = self._pools.get((namespace, name))
        return None if pool is None else pool.snapshot()

    def close(self) -> None:
        self.stopping = True
        for pool in self._pools.values():
            pool.close()


# Seconds a runner is asked to wait (Retry-After) before asking again when this replica does not lead.
NOT_LEADING_RETRY_AFTER_SECONDS = 1


def _refusal(status: int, reason: str, message: str, *, retry_after: int | None = None, **counts: int) -> web.Response:
    body = protocol.PermitRefusal.model_validate({"reason": reason, "message": message, **counts})
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return web.json_response(
        body.model_dump(mode="json", by_alias=True, exclude_none=True), status=status, headers=headers
    )


@dataclass
class _Handlers:
    registry: PoolRegistry
    verifier: CredentialVerifier
    access: PoolAccess

    async def _authorize(self, request: web.Request) -> tuple[str, Pool] | web.Response:
        """The calling run's name and the pool, or the refusal to send."""
        if not self.registry.leading:
            return _refusal(
                503,
                "Unavailable",
                "this operator replica does not lead; the leader serves permits (ask again)",
                retry_after=NOT_LEADING_RETRY_AFTER_SECONDS,
            )
        namespace, pool_name = request.match_info["namespace"], request.match_info["pool"]
        run = request.headers.get(protocol.RUN_HEADER, "")
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token or not run:
            return _refusal(
                401,
                "Unauthorized",
                f"send the run's permit key (AGENTRUN_PERMIT_KEY) as a bearer token and {protocol.RUN_HEADER}",
            )
        try:
            allowed = await self.verifier.verify(namespace, run, token)
        except CredentialLookupError as error:
            return _refusal(503, "Unavailable", f"cannot check the run's credential now: {error}")
        if not allowed:
            return _refusal(401, "Unauthorized", f"not the credential of run {namespace}/{run}")
        cluster = _is_cluster_pool(request)
        pool = self.registry.get(*_key_of(request))
        if pool is not None and cluster:
            try:
                if not await self.access.may_use(namespace, run, pool_name):
                    return _refusal(403, "Forbidden", how_to_grant(namespace, run, pool_name))
            except AccessLookupError as error:
                return _refusal(503, "Unavailable", f"cannot check who may use the pool now: {error}")
        if pool is None and self.registry.learning:
            # Clients retry on 503; runners fall back to their own limits only on PoolNotFound.
            return _refusal(503, "Unavailable", "the permit server has just started and is reading the ThrottlePools")
        if pool is None:
            if cluster:
                missing = f"no ClusterThrottlePool {pool_name!r}"
            else:
                missing = f"no ThrottlePool {pool_name!r} in namespace {namespace!r}"
            return _refusal(404, "PoolNotFound", f"{missing}; create it first")
        return run, pool

    async def acquire(self, request: web.Request) -> web.Response:
        authorized = await self._authorize(request)
        if isinstance(authorized, web.Response):
            return authorized
        run, pool = authorized
        try:
            wanted = protocol.PermitRequest.model_validate(await request.json())
        except (ValueError, ValidationError) as error:
            return _refusal(400, "BadRequest", f"the body is not a PermitRequest: {error}")
        label = pool_label(*_key_of(request))
        try:
            grant = await pool.acquire(
                run,
                wanted.request_id,
                max_wait_seconds=wanted.max_wait_seconds,
                waited_seconds=wanted.waited_seconds,
            )
        except QueueTimeoutError as timeout:
            QUEUE_WAIT_SECONDS.labels(label).observe(timeout.waited_seconds)
            return _refusal(
                429, "QueueTimeout", str(timeout), queue_depth=timeout.queue_depth, in_flight=timeout.in_flight
            )
        except SupersededError as superseded:
            return _refusal(409, "Superseded", str(superseded))
        except PoolClosedError as closed:
            if self.registry.stopping:  # the operator is restarting: the pool is not gone
                return _refusal(503, "Unavailable", "the permit server is stopping; ask its successor")
            return _refusal(404, "PoolNotFound", str(closed))
        QUEUE_WAIT_SECONDS.labels(label).observe(grant.waited_seconds)
        body = protocol.PermitGrant(
            lease_id=grant.lease.lease_id,
            lease_seconds=self.registry.timing.lease_seconds,
            waited_seconds=grant.waited_seconds,
        )
        return web.json_response(body.model_dump(mode="json", by_alias=True), status=201)

    async def renew(self, request: web.Request) -> web.Response:
        authorized = await self._authorize(request)
        if isinstance(authorized, web.Response):
            return authorized
        run, pool = authorized
        if not pool.renew(run, request.match_info["lease"]):
            return _refusal(404, "LeaseNotFound", "the lease expired or was never granted; it cannot be renewed")
        return web.json_response({"leaseSeconds": self.registry.timing.lease_seconds})

    async def release(self, request: web.Request) -> web.Response:
        authorized = await self._authorize(request)
        if isinstance(authorized, web.Response):
            return authorized
        run, pool = authorized
        raw = request.query.get(protocol.TOKENS_USED_PARAM, "")
        if raw and not _TOKEN_COUNT.fullmatch(raw):
            return _refusal(400, "BadRequest", f"{protocol.TOKENS_USED_PARAM} must be a whole number of tokens")
        pool.release(run, request.match_info["lease"], tokens_used=int(raw) if raw else None)
        return web.Response(status=204)

    async def penalize(self, request: web.Request) -> web.Response:
        authorized = await self._authorize(request)
        if isinstance(authorized, web.Response):
            return authorized
        run, pool = authorized
        try:
            report = protocol.PenaltyReport.model_validate(await request.json())
        except (ValueError, ValidationError) as error:
            return _refusal(400, "BadRequest", f"the body is not a PenaltyReport: {error}")
        logger.info(
            "run %s/%s saw a provider 429: lowering the rate of pool %s, pausing it for %.1fs",
            request.match_info["namespace"],
            run,
            pool_label(*_key_of(request)),
            report.retry_after_seconds,
        )
        pool.penalize(report.retry_after_seconds)
        return web.Response(status=202)


async def _healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok")


def create_app(registry: PoolRegistry, verifier: CredentialVerifier, access: PoolAccess) -> web.Application:
    handlers = _Handlers(registry, verifier, access)
    app = web.Application()
    app.router.add_get("/healthz", _healthz)
    for route in (_POOL_ROUTE, _CLUSTER_POOL_ROUTE):
        app.router.add_post(f"{route}/permits", handlers.acquire)
        app.router.add_put(f"{route}/permits/{{lease}}", handlers.renew)
        app.router.add_delete(f"{route}/permits/{{lease}}", handlers.release)
        app.router.add_post(f"{route}/penalties", handlers.penalize)
    return app


@dataclass
class PermitServer:
    """A running permit server: its pools, and where it listens."""

    registry: PoolRegistry
    runner: web.AppRunner
    port: int

    async def close(self) -> None:
        self.registry.close()
        await self.runner.cleanup()


async def start_permit_server(
    settings: PermitSettings,
    verifier: CredentialVerifier,
    access: PoolAccess,
    *,
    clock: Callable[[], float] | None = None,
    registry: PoolRegistry | None = None,
) -> PermitServer:
    """Start listening on settings.host:settings.port (port 0: any free port, see .port).

    The clock defaults to the event loop's, so tests that fast-forward loop time move pools too.
    """
    loop_clock = clock or asyncio.get_running_loop().time
    if registry is None:
        registry = PoolRegistry(PoolTiming(settings.lease_seconds, settings.max_penalty_seconds), loop_clock)
    # handler_cancellation: a client that hangs up while queued gives up its place at once.
    runner = web.AppRunner(create_app(registry, verifier, access), handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    port = int(runner.addresses[0][1])
    logger.info("permit server listening on %s:%d", settings.host, port)
    return PermitServer(registry, runner, port)
