"""Test and benchmark harness for throttle pools: a real permit server on 127.0.0.1 (ephemeral port), a
script for the scripted model server (``tests.harness.model_server``) standing in for the provider, and
the simulated-run scenario (RemoteLimiter clients, no runner) with its figures."""

import asyncio
import contextlib
import statistics
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import openai

from agentrun_operator.permits.access import StaticAccess
from agentrun_operator.permits.credentials import StaticCredentials
from agentrun_operator.permits.pool import Aimd, PoolLimits, PoolTiming
from agentrun_operator.permits.server import CLUSTER_SCOPE, PermitServer, PoolRegistry, start_permit_server
from agentrun_operator.permits.settings import PermitSettings
from agentrun_runner.throttle_remote import QueueTimeoutError, RemoteLimiter
from tests.harness.model_server import Answer, ChatRequest, Failure, ModelServer, Reply, Script

NAMESPACE = "team-a"
POOL = "shared-key"


def token_of(run: str) -> str:
    return f"permit-key-of-{run}"


@contextlib.asynccontextmanager
async def permit_server(
    runs: list[str],
    limits: PoolLimits,
    *,
    lease_seconds: float,
    port: int = 0,
    aimd: Aimd | None = None,
    cluster_pools: dict[str, bool] | None = None,
) -> AsyncIterator[PermitServer]:
    """A permit server knowing the runs' credentials and serving one pool, NAMESPACE/POOL (rate adapting to
    429s as ``aimd`` says, the server's default without), and with the same limits each ClusterThrottlePool
    of ``cluster_pools``, which NAMESPACE may use where the value is True."""
    settings = PermitSettings(host="127.0.0.1", port=port, lease_seconds=lease_seconds)
    credentials = StaticCredentials({(NAMESPACE, run): token_of(run) for run in runs})
    timing = PoolTiming(settings.lease_seconds, settings.max_penalty_seconds, aimd or Aimd())
    registry = PoolRegistry(timing, asyncio.get_running_loop().time)
    cluster_pools = cluster_pools or {}
    access = StaticAccess({(NAMESPACE, name) for name, allowed in cluster_pools.items() if allowed})
    server = await start_permit_server(settings, credentials, access, registry=registry)
    server.registry.configure(NAMESPACE, POOL, limits)
    for name in cluster_pools:
        server.registry.configure(CLUSTER_SCOPE, name, limits)
    try:
        yield server
    finally:
        await server.close()


def limiter_for(run: str, server_url: str) -> RemoteLimiter:
    return RemoteLimiter(server_url=server_url, namespace=NAMESPACE, pool=POOL, run=run, token=token_of(run))


def provider_script(
    latency: Callable[[int], float], *, rate_limited_calls: frozenset[int] = frozenset(), retry_after_seconds: int = 30
) -> Script:
    """The provider for simulated runs: the n-th call answers "done" after ``latency(n)`` seconds, or
    429 with Retry-After at once when n is in ``rate_limited_calls``."""

    def script(request: ChatRequest) -> Reply:
        if request.index in rate_limited_calls:
            return Failure(429, retry_after=str(retry_after_seconds), message="rate limited")
        return Answer("done", delay=latency(request.index))

    return script


@dataclass
class HiddenLimit:
    """A provider that enforces a rate limit it does not publish: a token bucket of ``requests_per_minute``
    holding at most ``burst`` calls; a call finding it empty is answered 429 at once (with
    ``Retry-After`` when ``retry_after`` is set), others "done" after ``latency(n)`` seconds."""

    requests_per_minute: float
    burst: float
    latency: Callable[[int], float]
    retry_after: str | None = "1"
    rejected_at: list[float] = field(default_factory=list)
    answered_at: list[float] = field(default_factory=list)
    _level: float | None = None
    _refilled_at: float = 0.0

    def script(self, request: ChatRequest) -> Reply:
        now = request.received_at
        if self._level is None:
            self._level = self.burst
        else:
            refill = (now - self._refilled_at) * self.requests_per_minute / 60.0
            self._level = min(self.burst, self._level + refill)
        self._refilled_at = now
        if self._level < 1.0:
            self.rejected_at.append(now)
            return Failure(429, retry_after=self.retry_after, message="rate limit reached (hidden)")
        self._level -= 1.0
        self.answered_at.append(now)
        return Answer("done", delay=self.latency(request.index))


def arrivals_by_run(model: ModelServer) -> list[tuple[float, str]]:
    """(arrival, run) of every call simulated runs made; they name their run in the request's ``user``."""
    return [(request.received_at, str(request.body.get("user", ""))) for request in model.requests]


@dataclass
class ScenarioResult:
    grants: list[tuple[float, str]]  # (loop time, run) of every permit granted
    waits: list[float]  # seconds each call waited for its permit
    timeouts: list[QueueTimeoutError]
    opened_at: float  # when the pool began granting
    stopped_at: float  # when runs stopped starting new calls

    def shares(self) -> Counter[str]:
        """Grants per run while all runs were contending."""
        return Counter(run for at, run in self.grants if self.opened_at <= at < self.stopped_at)

    def fairness_spread(self) -> float:
        """Largest relative distance of a run's share from the mean share."""
        shares = self.shares()
        mean = statistics.fmean(shares.values())
        return max(abs(count - mean) / mean for count in shares.values())


async def run_scenario(
    *,
    permit_url: str,
    model_url: str,
    runs: list[str],
    parallel_calls: Callable[[str], int],
    queue_budget_seconds: float,
    opened_at: float,
    stop_at: float,
) -> ScenarioResult:
    """Simulated runs: each loops model calls until stop_at, `parallel_calls(run)` at a time (tool calls in
    parallel), every call waiting for a pool permit first and reporting a 429's Retry-After to the pool."""
    loop = asyncio.get_running_loop()
    result = ScenarioResult(grants=[], waits=[], timeouts=[], opened_at=opened_at, stopped_at=stop_at)

    async def worker(run: str, limiter: RemoteLimiter, model: openai.AsyncOpenAI) -> None:
        while loop.time() < stop_at:
            try:
                permit, waited = await limiter.acquire(max_wait_seconds=queue_budget_seconds)
            except QueueTimeoutError as error:
                result.timeouts.append(error)
                return
            result.grants.append((loop.time(), run))
            result.waits.append(waited)
            try:
                answer = await model.chat.completions.create(
                    model="scripted", messages=[{"role": "user", "content": "step"}], user=run
                )
                permit.record_tokens(answer.usage.total_tokens if answer.usage else 0)
            except openai.RateLimitError as error:
                # As the runner does: every 429 is reported, with its Retry-After or 0 without one.
                limiter.penalize(float(error.response.headers.get("retry-after", "0")))
            finally:
                await permit.release()

    async def simulated_run(run: str) -> None:
        limiter = limiter_for(run, permit_url)
        model = openai.AsyncOpenAI(base_url=model_url, api_key="not-needed", max_retries=0)
        try:
            await asyncio.gather(*(worker(run, limiter, model) for _ in range(parallel_calls(run))))
        finally:
            await model.close()
            await limiter.aclose()

    await asyncio.gather(*(simulated_run(run) for run in runs))
    return result
