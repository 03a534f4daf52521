"""The runner's client of a cluster-wide throttle pool: permits come from the operator's permit server.

``RemoteLimiter`` implements the runner's ``Limiter`` interface. It never lets a model call go out
unthrottled: when the permit server cannot be reached it retries within the call's queue budget and
then raises ``QueueTimeoutError`` saying so. While a call holds a permit, its lease is renewed every
third of the lease period; a runner killed meanwhile stops renewing and the permit returns to the pool.

``PooledLimiter`` is what a throttled run uses when the operator serves pools: the run's own limits
(spec.throttle) always, and the pool's as well while the ThrottlePool it names exists. A pool that
does not exist is not an error: the run keeps its own limits and says so (``PoolNotFoundError``).
"""

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from typing import Final

import aiohttp
from pydantic import ValidationError

from agentrun_api import permits as protocol
from agentrun_api.contract import RunnerConfig
from agentrun_common.retry import RetryPolicy, parse_retry_after
from agentrun_runner.throttle import Limiter, Permit, QueueTimeoutError

__all__ = [
    "PoolForbiddenError",
    "PoolNotFoundError",
    "PooledLimiter",
    "QueueTimeoutError",
    "RemoteLimiter",
    "RemotePermit",
]

logger = logging.getLogger(__name__)

# Extra seconds an HTTP request may take beyond the wait it asked for, for the answer to travel.
ANSWER_GRACE_SECONDS: Final = 5.0
# First and longest pause between attempts to reach an unreachable permit server (attempts are bounded by the
# call's wait, not counted).
FIRST_RETRY_SECONDS: Final = 0.2
MAX_RETRY_SECONDS: Final = 5.0
PERMIT_RETRY: Final = RetryPolicy(
    first_backoff_seconds=FIRST_RETRY_SECONDS,
    max_backoff_seconds=MAX_RETRY_SECONDS,
    max_retry_after_seconds=MAX_RETRY_SECONDS,
)
# A pool-wide pause longer than this is not believed (same cap as the server's default).
MAX_PENALTY_SECONDS: Final = 600.0
# After the permit server said the pool does not exist, how long calls use only the run's own limits
# before asking again (a ThrottlePool created later then takes over within this long).
POOL_RECHECK_SECONDS: Final = 30.0


class PoolNotFoundError(QueueTimeoutError):
    """The permit server has no ThrottlePool of that name in the run's namespace."""


class PoolForbiddenError(QueueTimeoutError):
    """The run's namespace may not use the ClusterThrottlePool it names: waiting would not change that."""


class RemotePermit:
    """A lease on one permit. Keeps itself alive until released."""

    def __init__(self, limiter: "RemoteLimiter", lease_id: str, lease_seconds: float) -> None:
        self._limiter = limiter
        self.lease_id = lease_id
        self._lease_seconds = lease_seconds
        self._tokens_used: int | None = None
        self._renewal = asyncio.get_running_loop().create_task(self._keep_alive(), name=f"renew-lease-{lease_id[:8]}")
        limiter._renewals.add(self._renewal)
        self._renewal.add_done_callback(limiter._renewals.discard)
        self.lost = False  # the server no longer knew the lease when it was renewed

    def record_tokens(self, tokens: int) -> None:
        """Tokens the call used; charged to the pool's token budget on release."""
        self._tokens_used = max(0, tokens)

    async def release(self) -> None:
        self._renewal.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._renewal
        await self._limiter._release(self.lease_id, self._tokens_used)

    async def _keep_alive(self) -> None:
        interval = self._lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            try:
                known = await self._limiter._renew(self.lease_id)
            except (aiohttp.ClientError, TimeoutError) as error:
                # Try again sooner: one lease period without a renewal returns the permit.
                logger.warning("cannot renew throttle lease (%s); retrying", type(error).__name__)
                interval = self._lease_seconds / 6
                continue
            interval = self._lease_seconds / 3
            if not known:
                self.lost = True
                logger.warning("the permit server no longer knows this call's lease; the call runs on uncounted")
                return


class RemoteLimiter:
    """Permits from the ThrottlePool ``pool`` in ``namespace``, asked for as ``run`` with its credential."""

    def __init__(
        self,
        *,
        server_url: str,
        namespace: str,
        pool: str,
        run: str,
        token: str,
        cluster: bool = False,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self._base = server_url.rstrip("/")
        self._namespace = namespace
        self._pool = pool
        self._cluster = cluster  # pool names a ClusterThrottlePool
        self._headers = {"Authorization": f"Bearer {token}", protocol.RUN_HEADER: run}
        self._session = session
        self._owns_session = session is None
        self._paused_until = 0.0
        self._background: set[asyncio.Task[None]] = set()  # penalty reports in flight
        self._renewals: set[asyncio.Task[None]] = set()  # lease keep-alives of permits not yet released

    @classmethod
    def for_run(cls, config: RunnerConfig, token: str) -> "RemoteLimiter":
        """The limiter of a run whose config names a permit server; token is its AGENTRUN_PERMIT_KEY."""
        if config.permit_server_url is None:
            raise ValueError("the runner config has no permitServerUrl: the run uses an in-process limiter")
        throttle = config.spec.throttle
        return cls(
            server_url=config.permit_server_url,
            namespace=config.run.namespace,
            pool=throttle.cluster_pool or throttle.pool,
            run=config.run.name,
            token=token,
            cluster=throttle.cluster_pool is not None,
        )

    @property
    def pool_name(self) -> str:
        return f"ClusterThrottlePool {self._pool}" if self._cluster else f"{self._namespace}/{self._pool}"

    async def acquire(self, *, max_wait_seconds: float) -> tuple[RemotePermit, float]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        request_id = uuid.uuid4().hex
        failures = 0
        problem = ""
        while True:
            waited = loop.time() - started
            remaining = max_wait_seconds - waited
            # A provider 429 seen here pauses this run even if reporting it to the server failed.
            paused_for = self._paused_until - loop.time()
            if paused_for > 0:
                if paused_for >= remaining:
                    await asyncio.sleep(max(0.0, remaining))
                    raise QueueTimeoutError(
                        f"no throttle permit from pool {self.pool_name} within {max_wait_seconds:g}s: the provider "
                        f"asked to wait {paused_for:.0f}s more (Retry-After)"
                    )
                await asyncio.sleep(paused_for)
                continue
            asked_to_wait: float | None = None
            try:
                answer, asked_to_wait = await self._ask(request_id, max(0.0, remaining), waited)
            except (aiohttp.ClientError, TimeoutError) as error:
                problem = f"the permit server at {self._base} was unreachable ({type(error).__name__})"
            else:
                if isinstance(answer, protocol.PermitGrant):
                    return RemotePermit(self, answer.lease_id, answer.lease_seconds), loop.time() - started
                if answer.reason == "QueueTimeout":
                    raise QueueTimeoutError(
                        f"no throttle permit from pool {self.pool_name} within {max_wait_seconds:g}s: "
                        f"{answer.queue_depth} calls were waiting and {answer.in_flight} in flight",
                        depth=answer.queue_depth,
                    )
                if answer.reason == "PoolNotFound":
                    raise PoolNotFoundError(f"{answer.message} (pool {self.pool_name})")
                if answer.reason == "Forbidden":
                    raise PoolForbiddenError(f"no throttle permit from pool {self.pool_name}: {answer.message}")
                # Unauthorized, Unavailable: may heal (the Secret is being created, the API server is back,
                # the replica reached is not the leader and the Service is about to route to the one that is).
                problem = f"the permit server refused: {answer.reason}: {answer.message}"
            remaining = max_wait_seconds - (loop.time() - started)
            if remaining <= 0:
                raise QueueTimeoutError(
                    f"no throttle permit from pool {self.pool_name} within {max_wait_seconds:g}s: {problem}"
                )
            # A Retry-After from the server says when to ask again; otherwise back off exponentially.
            await asyncio.sleep(min(PERMIT_RETRY.delay(failures, asked_to_wait), remaining))
            if asked_to_wait is None:
                failures += 1

    def penalize(self, retry_after_seconds: float) -> None:
        seconds = min(max(0.0, retry_after_seconds), MAX_PENALTY_SECONDS)
        loop = asyncio.get_running_loop()
        self._paused_until = max(self._paused_until, loop.time() + seconds)
        task = loop.create_task(self._report_penalty(seconds))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def aclose(self) -> None:
        for task in list(self._background):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # Permits never released stop being renewed and expire on the server within one lease period.
        for task in list(self._renewals):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def _ask(
        self, request_id: str, max_wait: float, waited: float
    ) -> tuple[protocol.PermitGrant | protocol.PermitRefusal, float | None]:
        """The server's answer, and the seconds its Retry-After header asks to wait (None without one)."""
        body = protocol.PermitRequest(request_id=request_id, max_wait_seconds=max_wait, waited_seconds=waited)
        url = self._base + protocol.permits_path(self._namespace, self._pool, cluster=self._cluster)
        async with self._http().post(
            url,
            json=body.model_dump(mode="json", by_alias=True),
            headers=self._headers,
            timeout=aiohttp.ClientTimeout(total=max_wait + ANSWER_GRACE_SECONDS),
        ) as response:
            payload = await response.read()
            asked_to_wait = parse_retry_after(response.headers.get("Retry-After"))
            try:
                if response.status == 201:
                    return protocol.PermitGrant.model_validate_json(payload), None
                return protocol.PermitRefusal.model_validate_json(payload), asked_to_wait
            except ValidationError:
                raise aiohttp.ClientResponseError(
                    response.request_info, (), status=response.status, message="not a permit server answer"
                ) from None

    async def _renew(self, lease_id: str) -> bool:
        url = self._base + protocol.lease_path(self._namespace, self._pool, lease_id, cluster=self._cluster)
        async with self._http().put(
            url, headers=self._headers, timeout=aiohttp.ClientTimeout(total=ANSWER_GRACE_SECONDS)
        ) as response:
            if response.status in (200, 404):
                return response.status == 200
            # Unauthorized or unavailable for now: keep trying while the lease lasts.
            raise aiohttp.ClientResponseError(response.request_info, (), status=response.status)

    async def _release(self, lease_id: str, tokens_used: int | None) -> None:
        url = self._base + protocol.lease_path(self._namespace, self._pool, lease_id, cluster=self._cluster)
        params = {protocol.TOKENS_USED_PARAM: str(tokens_used)} if tokens_used is not None else {}
        try:
            async with self._http().delete(
                url, headers=self._headers, params=params, timeout=aiohttp.ClientTimeout(total=ANSWER_GRACE_SECONDS)
            ):
                pass
        except (aiohttp.ClientError, TimeoutError) as error:
            # The lease then expires on its own within one lease period.
            logger.warning("cannot release throttle lease (%s); it expires by itself", type(error).__name__)

    async def _report_penalty(self, seconds: float) -> None:
        url = self._base + protocol.penalties_path(self._namespace, self._pool, cluster=self._cluster)
        body = protocol.PenaltyReport(retry_after_seconds=seconds)
        try:
            async with self._http().post(
                url,
                json=body.model_dump(mode="json", by_alias=True),
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=ANSWER_GRACE_SECONDS),
            ):
                pass
        except (aiohttp.ClientError, TimeoutError) as error:
            logger.warning("cannot report the provider's Retry-After to the pool (%s)", type(error).__name__)


class _PooledPermit:
    """The run's own permit and the pool's, released together; the tokens are charged to the pool."""

    def __init__(self, own: Permit, pooled: RemotePermit) -> None:
        self._own = own
        self._pooled = pooled

    def record_tokens(self, tokens: int) -> None:
        self._pooled.record_tokens(tokens)

    async def release(self) -> None:
        try:
            await self._pooled.release()
        finally:
            await self._own.release()


class PooledLimiter:
    """The run's own limiter, then the pool's permit while the pool exists.

    ``on_pool_missing`` is told once each time the pool turns out not to exist (the runner puts it in
    the run's status message); while it is missing the pool is asked again every ``recheck_seconds``.
    """

    def __init__(
        self,
        own: Limiter,
        pool: RemoteLimiter,
        *,
        on_pool_missing: Callable[[str], None],
        recheck_seconds: float = POOL_RECHECK_SECONDS,
    ) -> None:
        self._own = own
        self._pool = pool
        self._on_pool_missing = on_pool_missing
        self._recheck_seconds = recheck_seconds
        self._missing_until: float | None = None  # None: the pool was found (or not asked yet)

    async def acquire(self, *, max_wait_seconds: float) -> tuple[Permit, float]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        own, _ = await self._own.acquire(max_wait_seconds=max_wait_seconds)
        try:
            if self._missing_until is None or loop.time() >= self._missing_until:
                remaining = max(0.0, max_wait_seconds - (loop.time() - started))
                try:
                    pooled, _ = await self._pool.acquire(max_wait_seconds=remaining)
                except PoolNotFoundError as missing:
                    self._pool_missing(str(missing), loop.time())
                else:
                    if self._missing_until is not None:
                        logger.info("throttle pool %s exists now; calls wait for its permits", self._pool.pool_name)
                        self._missing_until = None
                    return _PooledPermit(own, pooled), loop.time() - started
        except BaseException:
            await own.release()
            raise
        return own, loop.time() - started

    def penalize(self, retry_after_seconds: float) -> None:
        self._own.penalize(retry_after_seconds)
        if self._missing_until is None:
            self._pool.penalize(retry_after_seconds)

    async def aclose(self) -> None:
        await self._pool.aclose()

    def _pool_missing(self, message: str, now: float) -> None:
        if self._missing_until is None:
            self._on_pool_missing(
                f"{message}; model calls use only this run's own spec.throttle limits until it exists"
            )
        self._missing_until = now + self._recheck_seconds
