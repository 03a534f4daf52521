"""Test and benchmark harness for throttle pools: a real permit server and a scripted model endpoint,
both on 127.0.0.1 with ephemeral ports, plus the simulated-run scenario and its figures."""

import asyncio
import contextlib
import itertools
import statistics
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import openai
from aiohttp import web

from agentrun_operator.permits.credentials import StaticCredentials
from agentrun_operator.permits.pool import PoolLimits
from agentrun_operator.permits.server import PermitServer, start_permit_server
from agentrun_operator.permits.settings import PermitSettings
from agentrun_runner.throttle_remote import QueueTimeoutError, RemoteLimiter

NAMESPACE = "team-a"
POOL = "shared-key"


def token_of(run: str) -> str:
    return f"stream-token-of-{run}"


@contextlib.asynccontextmanager
async def permit_server(
    runs: list[str], limits: PoolLimits, *, lease_seconds: float, port: int = 0
) -> AsyncIterator[PermitServer]:
    """A permit server knowing the runs' credentials and serving one pool, NAMESPACE/POOL."""
    settings = PermitSettings(host="127.0.0.1", port=port, lease_seconds=lease_seconds)
    credentials = StaticCredentials({(NAMESPACE, run): token_of(run) for run in runs})
    server = await start_permit_server(settings, credentials)
    server.registry.configure(NAMESPACE, POOL, limits)
    try:
        yield server
    finally:
        await server.close()


def limiter_for(run: str, server_url: str) -> RemoteLimiter:
    return RemoteLimiter(server_url=server_url, namespace=NAMESPACE, pool=POOL, run=run, token=token_of(run))


@dataclass
class ScriptedModel:
    """An OpenAI-compatible chat completions endpoint that records when calls arrive and how many overlap."""

    latency: Callable[[int], float]  # seconds to answer the n-th call
    clock: Callable[[], float]
    rate_limited_calls: frozenset[int] = frozenset()  # these call numbers answer 429 with Retry-After
    retry_after_seconds: int = 30
    arrivals: list[tuple[float, str]] = field(default_factory=list)
    in_flight: int = 0
    peak_in_flight: int = 0
    _numbers: "itertools.count[int]" = field(default_factory=itertools.count)

    async def _complete(self, request: web.Request) -> web.Response:
        number = next(self._numbers)
        body = await request.json()
        self.arrivals.append((self.clock(), body.get("user", "")))
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            if number in self.rate_limited_calls:
                return web.json_response(
                    {"error": {"message": "rate limited", "type": "requests", "code": "rate_limit_exceeded"}},
                    status=429,
                    headers={"Retry-After": str(self.retry_after_seconds)},
                )
            await asyncio.sleep(self.latency(number))
            return web.json_response(
                {
                    "id": f"chatcmpl-{number}",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body["model"],
                    "choices": [
                        {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "done"}}
                    ],
                    "usage": {"prompt_tokens": 40, "completion_tokens": 10, "total_tokens": 50},
                }
            )
        finally:
            self.in_flight -= 1

    @contextlib.asynccontextmanager
    async def serve(self) -> AsyncIterator[str]:
        """Serve on 127.0.0.1 and yield the base URL for the openai SDK."""
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._complete)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        try:
            yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
        finally:
            await runner.cleanup()


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


def max_starts_in_window(arrivals: list[float], window: float) -> int:
    times = sorted(arrivals)
    return max((sum(1 for t in times[i:] if t < start + window) for i, start in enumerate(times)), default=0)


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
                limiter.penalize(float(error.response.headers.get("retry-after", "1")))
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
