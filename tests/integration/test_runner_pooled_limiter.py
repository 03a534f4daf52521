"""The runner's throttle when the operator serves pools: its own limits, plus the ThrottlePool's permits
while that pool exists, over real HTTP to a real permit server; model calls through the openai SDK.

The event loop's clock is fast-forwarded (looptime), so waits of seconds cost no wall time."""

import asyncio

import pytest

from agentrun_api.spec import ModelSpec
from agentrun_operator.permits.pool import PoolLimits
from agentrun_runner.model import ModelClient
from agentrun_runner.settings import RunnerSettings
from agentrun_runner.throttle import InProcessLimiter
from agentrun_runner.throttle_remote import PooledLimiter, RemoteLimiter
from tests.harness.model_server import Answer, ModelServer, in_order
from tests.harness.throttle import NAMESPACE, POOL, limiter_for, permit_server, token_of

pytestmark = [pytest.mark.integration, pytest.mark.looptime]

LEASE = 4.0
RECHECK = 30.0


def loop_time() -> float:
    return asyncio.get_running_loop().time()


def pooled(run: str, url: str, pool: str, notices: list[str]) -> PooledLimiter:
    own = InProcessLimiter(max_concurrent=2, requests_per_minute=600)
    remote = RemoteLimiter(server_url=url, namespace=NAMESPACE, pool=pool, run=run, token=token_of(run))
    return PooledLimiter(own, remote, on_pool_missing=notices.append, recheck_seconds=RECHECK)


async def test_a_missing_pool_leaves_the_run_on_its_own_limits_until_the_pool_is_created() -> None:
    limits = PoolLimits(max_in_flight=1, requests_per_minute=600)
    async with permit_server(["run"], limits, lease_seconds=LEASE) as server:
        url = f"http://127.0.0.1:{server.port}"
        notices: list[str] = []
        limiter = pooled("run", url, "later", notices)
        await asyncio.sleep(LEASE)  # past the server's first lease period, when unknown pools are missing ones

        permit, waited = await limiter.acquire(max_wait_seconds=60)
        assert waited == pytest.approx(0, abs=0.1)  # no pool to wait for: the run's own limits only
        assert len(notices) == 1
        assert "no ThrottlePool 'later' in namespace 'team-a'" in notices[0]
        assert "own spec.throttle limits" in notices[0]
        await permit.release()
        # The run's own concurrency limit (2) still holds while the pool is missing.
        first, _ = await limiter.acquire(max_wait_seconds=60)
        second, _ = await limiter.acquire(max_wait_seconds=60)
        third = asyncio.create_task(limiter.acquire(max_wait_seconds=60))
        await asyncio.sleep(5)
        assert not third.done()
        await first.release()
        extra, _ = await third
        await second.release()
        await extra.release()

        server.registry.configure(NAMESPACE, "later", limits)
        await asyncio.sleep(RECHECK)
        permit, _ = await limiter.acquire(max_wait_seconds=60)
        assert server.registry.snapshot(NAMESPACE, "later").in_flight == 1  # type: ignore[union-attr]
        await permit.release()
        assert server.registry.snapshot(NAMESPACE, "later").in_flight == 0  # type: ignore[union-attr]
        assert len(notices) == 1  # said once, not once per call
        await limiter.aclose()


async def test_a_pool_declared_soon_after_the_operator_starts_is_waited_for_not_given_up_on() -> None:
    limits = PoolLimits(max_in_flight=1, requests_per_minute=600)
    async with permit_server(["run"], limits, lease_seconds=LEASE) as server:
        notices: list[str] = []
        limiter = pooled("run", f"http://127.0.0.1:{server.port}", "restarting", notices)
        asking = asyncio.create_task(limiter.acquire(max_wait_seconds=60))
        await asyncio.sleep(1)  # the operator is still listing its ThrottlePools
        server.registry.configure(NAMESPACE, "restarting", limits)
        permit, _ = await asking
        assert server.registry.snapshot(NAMESPACE, "restarting").in_flight == 1  # type: ignore[union-attr]
        assert notices == []
        await permit.release()
        await limiter.aclose()


async def test_a_model_call_charges_its_tokens_to_the_pool_before_releasing_the_permit() -> None:
    limits = PoolLimits(max_in_flight=5, requests_per_minute=6000, tokens_per_minute=60)  # one token a second
    spec = ModelSpec(name="gpt-4.1-mini", base_url="http://127.0.0.1:1/v1", request_timeout="30s")
    async with (
        permit_server(["caller", "next"], limits, lease_seconds=LEASE) as server,
        ModelServer(in_order([Answer("The report is done.")])) as model_server,
    ):
        url = f"http://127.0.0.1:{server.port}"
        limiter = pooled("caller", url, POOL, [])
        model = ModelClient(
            spec.model_copy(update={"base_url": model_server.base_url}),
            api_key="scripted",
            limiter=limiter,
            max_queue_wait_seconds=60,
            settings=RunnerSettings(),
        )
        await asyncio.sleep(LEASE)  # a new pool grants nothing during its first lease period
        answer = await model.complete(
            [{"role": "user", "content": "Write the report."}],
            [],
            remaining=lambda: 600.0,
            on_token=None,
            on_queue_wait=lambda _: None,
            max_completion_tokens=None,
        )
        tokens = answer.prompt_tokens + answer.completion_tokens
        assert tokens > 3
        released_at = loop_time()
        other = limiter_for("next", url)
        permit, _ = await other.acquire(max_wait_seconds=120)
        # The pool's bucket held one second of tokens; the rest of the call's tokens are earned back first.
        assert loop_time() - released_at == pytest.approx(tokens - 1, abs=0.2)
        await permit.release()
        await other.aclose()
        await model.close()
        await limiter.aclose()
