"""Throttle pools end to end over real HTTP on loopback: the permit server, RemoteLimiter clients, and a
scripted OpenAI-compatible model endpoint called with the openai SDK.

The event loop's clock is fast-forwarded (looptime): a pool of 60 calls per minute is exercised for
minutes of loop time in about a second, and every timestamp is exact, because looptime advances loop
time only when nothing (no socket, no callback) is ready."""

import asyncio
import random
import socket

import pytest
from prometheus_client import REGISTRY

from agentrun_operator.permits.pool import Aimd, PoolLimits, PoolSnapshot
from agentrun_operator.permits.server import PermitServer
from agentrun_runner.throttle_remote import QueueTimeoutError, RemoteLimiter
from tests.harness.model_server import ModelServer, most_in_window
from tests.harness.throttle import (
    NAMESPACE,
    POOL,
    HiddenLimit,
    arrivals_by_run,
    limiter_for,
    permit_server,
    provider_script,
    run_scenario,
)

pytestmark = [pytest.mark.integration, pytest.mark.looptime]

LEASE = 10.0


def server_url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def pool_state(server: PermitServer) -> PoolSnapshot:
    """The served pool's state now (the pool is configured for as long as the server runs)."""
    snapshot = server.registry.snapshot(NAMESPACE, POOL)
    assert snapshot is not None
    return snapshot


def queue_waits_observed() -> float:
    labels = {"pool": f"{NAMESPACE}/{POOL}"}
    return REGISTRY.get_sample_value("agentrun_queue_wait_seconds_count", labels) or 0.0


def loop_time() -> float:
    return asyncio.get_running_loop().time()


async def test_twenty_runs_share_two_in_flight_and_sixty_per_minute_fairly() -> None:
    runs = [f"run-{i:02d}" for i in range(20)]
    greedy = set(runs[:5])  # five runs make three tool-driven model calls at once
    latencies = random.Random(6)
    model = ModelServer(provider_script(lambda _: latencies.uniform(0.5, 3.0)), clock=loop_time)
    limits = PoolLimits(max_in_flight=2, requests_per_minute=60)
    observed_before = queue_waits_observed()
    async with permit_server(runs, limits, lease_seconds=LEASE) as server, model:
        started = loop_time()
        result = await run_scenario(
            permit_url=server_url(server.port),
            model_url=model.base_url,
            runs=runs,
            parallel_calls=lambda run: 3 if run in greedy else 1,
            queue_budget_seconds=120,
            opened_at=started + LEASE,
            stop_at=started + LEASE + 240,
        )
    assert result.timeouts == []
    assert max(result.waits) <= 120
    assert model.max_in_flight == 2
    arrivals = [at for at, _ in arrivals_by_run(model)]
    assert len(arrivals) == len(result.grants) > 150
    assert most_in_window(arrivals, 60) <= 60
    assert most_in_window(arrivals, 10) <= 10
    shares = result.shares()
    assert set(shares) == set(runs)
    assert result.fairness_spread() <= 0.2, shares
    assert queue_waits_observed() - observed_before == len(result.grants)  # one histogram sample per call


async def test_a_provider_429_slows_every_run_of_the_pool() -> None:
    runs = ["saw-429", "other"]
    retry_after = 30
    script = provider_script(lambda _: 0.1, rate_limited_calls=frozenset({0}), retry_after_seconds=retry_after)
    model = ModelServer(script, clock=loop_time)
    limits = PoolLimits(max_in_flight=5, requests_per_minute=600)
    async with permit_server(runs, limits, lease_seconds=LEASE) as server, model:
        await asyncio.sleep(LEASE)
        result = await run_scenario(
            permit_url=server_url(server.port),
            model_url=model.base_url,
            runs=runs,
            parallel_calls=lambda run: 1,
            queue_budget_seconds=120,
            opened_at=loop_time(),
            stop_at=loop_time() + 5,
        )
    first_429_at, _ = arrivals_by_run(model)[0]
    later = arrivals_by_run(model)[1:]
    # The run that did not see the 429 was held back too: nobody called the model during Retry-After.
    assert {run for _, run in later} == set(runs)
    assert not [at for at, _ in later if first_429_at < at < first_429_at + retry_after]
    assert result.timeouts == []


async def against_a_hidden_limit(aimd: Aimd, *, retry_after: str | None) -> tuple[HiddenLimit, float, int]:
    """Eight runs of two parallel calls, for 60 s of loop time, on a pool declaring 1200/min against a
    provider that allows 600/min (burst 5): the provider's record, the window's length, and how often
    the pool lowered its rate."""
    runs = [f"run-{i}" for i in range(8)]
    latencies = random.Random(3)
    provider = HiddenLimit(600, 5, lambda _: latencies.uniform(0.05, 0.15), retry_after=retry_after)
    model = ModelServer(provider.script, clock=loop_time)
    limits = PoolLimits(max_in_flight=16, requests_per_minute=1200)
    seconds = 60.0
    async with permit_server(runs, limits, lease_seconds=LEASE, aimd=aimd) as server, model:
        await asyncio.sleep(LEASE)
        await run_scenario(
            permit_url=server_url(server.port),
            model_url=model.base_url,
            runs=runs,
            parallel_calls=lambda run: 2,
            queue_budget_seconds=120,
            opened_at=loop_time(),
            stop_at=loop_time() + seconds,
        )
        decreases = pool_state(server).rate_decreases_total
    return provider, seconds, decreases


@pytest.mark.parametrize("retry_after", ["1", None], ids=["with-retry-after", "without-retry-after"])
async def test_the_adaptive_pool_finds_a_hidden_provider_limit_with_few_429s(retry_after: str | None) -> None:
    fixed, seconds, fixed_decreases = await against_a_hidden_limit(Aimd(decrease_factor=1.0), retry_after=retry_after)
    adaptive, _, adaptive_decreases = await against_a_hidden_limit(Aimd(), retry_after=retry_after)
    assert fixed_decreases == 0
    assert adaptive_decreases >= 1  # every 429 was reported, with or without Retry-After
    figures = {
        "fixed": (len(fixed.answered_at), len(fixed.rejected_at)),
        "adaptive": (len(adaptive.answered_at), len(adaptive.rejected_at)),
    }
    # The adaptive pool answers close to the hidden limit (600/min, plus its burst) while rarely exceeding it ...
    assert 0.7 * 600 <= len(adaptive.answered_at) / seconds * 60 <= 600 + 5, figures
    assert len(adaptive.rejected_at) <= 0.05 * len(adaptive.answered_at), figures
    # ... where the fixed rate keeps hitting it: several times the 429s.
    assert len(fixed.rejected_at) >= 3 * max(1, len(adaptive.rejected_at)), figures


async def test_a_call_past_its_queue_budget_fails_with_the_queue_depth() -> None:
    runs = ["holder", "waiter-1", "waiter-2", "late"]
    async with permit_server(runs, PoolLimits(max_in_flight=1, requests_per_minute=60), lease_seconds=LEASE) as server:
        url = server_url(server.port)
        limiters = {run: limiter_for(run, url) for run in runs}
        permit, _ = await limiters["holder"].acquire(max_wait_seconds=60)
        waiting = [asyncio.create_task(limiters[run].acquire(max_wait_seconds=600)) for run in ("waiter-1", "waiter-2")]
        await asyncio.sleep(1)
        asked_at = loop_time()
        with pytest.raises(QueueTimeoutError) as caught:
            await limiters["late"].acquire(max_wait_seconds=30)
        assert loop_time() - asked_at == pytest.approx(30, abs=0.1)
        assert caught.value.depth == 3
        assert f"pool {NAMESPACE}/{POOL} within 30s: 3 calls were waiting and 1 in flight" in str(caught.value)
        await permit.release()
        for task in waiting:
            granted, _ = await task
            await granted.release()
        for limiter in limiters.values():
            await limiter.aclose()


async def test_an_unreachable_permit_server_fails_the_call_within_its_budget_without_calling_the_model() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    limiter = limiter_for("lonely", server_url(port))
    asked_at = loop_time()
    with pytest.raises(QueueTimeoutError) as caught:
        await limiter.acquire(max_wait_seconds=45)
    await limiter.aclose()
    assert loop_time() - asked_at == pytest.approx(45, abs=0.1)
    assert caught.value.depth is None
    assert "permit server" in str(caught.value)
    assert "unreachable" in str(caught.value)


async def test_a_run_with_a_wrong_credential_gets_no_permit() -> None:
    async with permit_server(
        ["honest"], PoolLimits(max_in_flight=1, requests_per_minute=60), lease_seconds=LEASE
    ) as server:
        impostor = RemoteLimiter(
            server_url=server_url(server.port), namespace=NAMESPACE, pool=POOL, run="honest", token="guessed"
        )
        with pytest.raises(QueueTimeoutError) as caught:
            await impostor.acquire(max_wait_seconds=20)
        await impostor.aclose()
        assert "Unauthorized" in str(caught.value)
        assert pool_state(server).in_flight == 0


async def test_a_pool_that_does_not_exist_is_named_in_the_failure() -> None:
    async with permit_server(
        ["run"], PoolLimits(max_in_flight=1, requests_per_minute=60), lease_seconds=LEASE
    ) as server:
        limiter = RemoteLimiter(
            server_url=server_url(server.port), namespace=NAMESPACE, pool="typo", run="run", token="permit-key-of-run"
        )
        with pytest.raises(QueueTimeoutError) as caught:
            await limiter.acquire(max_wait_seconds=20)
        await limiter.aclose()
        assert "no ThrottlePool 'typo' in namespace 'team-a'" in str(caught.value)


async def test_after_a_permit_server_restart_held_permits_are_adopted_and_waiting_calls_keep_their_order() -> None:
    runs = ["holder", "first", "second", "third"]
    limits = PoolLimits(max_in_flight=1, requests_per_minute=600)
    order: list[str] = []
    async with permit_server(runs, limits, lease_seconds=LEASE) as before:
        port = before.port
        url = server_url(port)
        limiters = {run: limiter_for(run, url) for run in runs}
        held, _ = await limiters["holder"].acquire(max_wait_seconds=60)

        async def call(run: str) -> None:
            permit, _ = await limiters[run].acquire(max_wait_seconds=300)
            order.append(run)
            await permit.release()

        waiting = []
        for run in ("first", "second", "third"):
            waiting.append(asyncio.create_task(call(run)))
            await asyncio.sleep(1)
    # The operator is gone for a few seconds; clients retry, the holder keeps renewing.
    await asyncio.sleep(3)
    restarted_at = loop_time()
    async with permit_server(runs, limits, lease_seconds=LEASE, port=port) as after:
        await asyncio.sleep(LEASE / 2)
        snapshot = pool_state(after)
        assert snapshot.in_flight == 1  # the permit granted before the restart, adopted on renewal
        assert snapshot.queue_depth == 3
        await asyncio.sleep(LEASE)
        assert order == []  # still held: the new server does not grant past the limit
        await held.release()
        await asyncio.gather(*waiting)
        assert order == ["first", "second", "third"]
        assert loop_time() > restarted_at + LEASE
        for limiter in limiters.values():
            await limiter.aclose()


async def test_a_retry_after_seen_by_the_run_holds_its_calls_even_when_the_server_never_hears_of_it() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    limiter = limiter_for("saw-429", server_url(port))
    limiter.penalize(100)
    asked_at = loop_time()
    with pytest.raises(QueueTimeoutError, match="Retry-After"):
        await limiter.acquire(max_wait_seconds=30)
    assert loop_time() - asked_at == pytest.approx(30, abs=0.1)
    await limiter.aclose()


async def test_tokens_reported_on_release_hold_back_the_next_call_of_any_run() -> None:
    limits = PoolLimits(max_in_flight=5, requests_per_minute=6000, tokens_per_minute=6000)  # 100 tokens a second
    async with permit_server(["big", "small"], limits, lease_seconds=LEASE) as server:
        url = server_url(server.port)
        big, small = limiter_for("big", url), limiter_for("small", url)
        permit, _ = await big.acquire(max_wait_seconds=60)
        permit.record_tokens(1100)
        await permit.release()
        released_at = loop_time()
        next_permit, _ = await small.acquire(max_wait_seconds=60)
        # One second of tokens was in the bucket; the other 1000 take 10 s to earn back.
        assert loop_time() - released_at == pytest.approx(10, abs=0.1)
        await next_permit.release()
        await big.aclose()
        await small.aclose()


async def test_a_run_that_stops_waiting_leaves_the_queue_at_once() -> None:
    async with permit_server(
        ["holder", "quitter"], PoolLimits(max_in_flight=1, requests_per_minute=60), lease_seconds=LEASE
    ) as server:
        url = server_url(server.port)
        holder, quitter = limiter_for("holder", url), limiter_for("quitter", url)
        permit, _ = await holder.acquire(max_wait_seconds=60)
        waiting = asyncio.create_task(quitter.acquire(max_wait_seconds=600))
        await asyncio.sleep(1)
        assert pool_state(server).queue_depth == 1
        waiting.cancel()  # the run is cancelled or suspended: its long-poll connection closes
        await asyncio.gather(waiting, return_exceptions=True)
        await asyncio.sleep(1)
        assert pool_state(server).queue_depth == 0
        await permit.release()
        for limiter in (holder, quitter):
            await limiter.aclose()


async def test_a_client_that_never_releases_its_permit_loses_it_after_one_lease_period() -> None:
    async with permit_server(
        ["forgetful", "next"], PoolLimits(max_in_flight=1, requests_per_minute=60), lease_seconds=LEASE
    ) as server:
        url = server_url(server.port)
        forgetful, following = limiter_for("forgetful", url), limiter_for("next", url)
        await forgetful.acquire(max_wait_seconds=60)
        await asyncio.sleep(3 * LEASE)  # renewed in the background while the client lives
        snapshot = pool_state(server)
        assert (snapshot.in_flight, snapshot.leases_expired_total) == (1, 0)
        await forgetful.aclose()  # gone without releasing
        stopped_at = loop_time()
        permit, _ = await following.acquire(max_wait_seconds=60)
        assert loop_time() - stopped_at <= LEASE
        assert pool_state(server).leases_expired_total == 1
        await permit.release()
        await following.aclose()


async def test_a_replica_that_does_not_lead_is_asked_again_when_its_retry_after_says() -> None:
    async with permit_server(
        ["follower"], PoolLimits(max_in_flight=1, requests_per_minute=60), lease_seconds=LEASE
    ) as server:
        await asyncio.sleep(LEASE)  # past the pool's first lease period: it grants at once when asked
        server.registry.leading = False  # another replica holds the leader Lease
        limiter = limiter_for("follower", server_url(server.port))
        asked_at = loop_time()
        # The replica becomes the leader 3.5 s later (set directly: take_over would also fail closed).
        asyncio.get_running_loop().call_later(3.5, setattr, server.registry, "leading", True)
        permit, waited = await limiter.acquire(max_wait_seconds=30)
        await permit.release()
        await limiter.aclose()
    # 503s with Retry-After: 1 at 0, 1, 2 and 3 s; granted when asked at 4 s (exponential backoff would have
    # asked at 0.2, 0.6, 1.4, 3.0 and only then at 6.2 s).
    assert waited == pytest.approx(4.0, abs=0.05)
    assert loop_time() - asked_at == pytest.approx(4.0, abs=0.05)
