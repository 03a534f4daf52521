"""The throttle pool's scheduling, on a fast-forwarded event-loop clock (looptime): every time below is
loop time, computed exactly, with no real sleeping."""

import asyncio
import itertools
from collections import Counter

import pytest

from agentrun_operator.permits.pool import Grant, Pool, PoolLimits, PoolTiming, QueueTimeoutError

pytestmark = [pytest.mark.unit, pytest.mark.looptime]

LEASE = 10.0
_request_ids = itertools.count()


def make_pool(
    max_in_flight: int = 1, rpm: int = 6000, burst: int = 1, tpm: int | None = None, lease: float = LEASE
) -> Pool:
    limits = PoolLimits(max_in_flight=max_in_flight, requests_per_minute=rpm, burst=burst, tokens_per_minute=tpm)
    return Pool(limits, PoolTiming(lease_seconds=lease, max_penalty_seconds=600), asyncio.get_running_loop().time)


def now() -> float:
    return asyncio.get_running_loop().time()


async def take(pool: Pool, run: str, *, max_wait: float = 3600, waited: float = 0.0) -> Grant:
    return await pool.acquire(run, f"req-{next(_request_ids)}", max_wait_seconds=max_wait, waited_seconds=waited)


async def call(pool: Pool, run: str, hold: float, log: list[tuple[str, float]], max_wait: float = 3600) -> None:
    """One model call: wait for a permit, hold it for `hold` seconds, release it."""
    grant = await take(pool, run, max_wait=max_wait)
    log.append((run, now()))
    await asyncio.sleep(hold)
    pool.release(run, grant.lease.lease_id, tokens_used=None)


async def test_single_calls_are_granted_in_arrival_order_once_the_pool_opens() -> None:
    pool = make_pool()
    start = now()
    log: list[tuple[str, float]] = []
    tasks = []
    for run in ["e", "a", "d", "b", "c"]:
        tasks.append(asyncio.create_task(call(pool, run, hold=1, log=log)))
        await asyncio.sleep(0.5)
    await asyncio.gather(*tasks)
    assert [run for run, _ in log] == ["e", "a", "d", "b", "c"]
    assert log[0][1] == pytest.approx(start + LEASE)  # nothing before the first lease period has passed


async def test_a_run_with_parallel_calls_cannot_starve_the_others() -> None:
    pool = make_pool(max_in_flight=1)
    log: list[tuple[str, float]] = []
    stop_at = LEASE + 100

    async def worker(run: str) -> None:
        while now() < stop_at:
            await call(pool, run, hold=1, log=log)

    greedy = [worker("greedy") for _ in range(4)]  # four parallel tool calls of one run
    polite = [worker(run) for run in ("a", "b", "c")]
    await asyncio.gather(*greedy, *polite)
    # While every run has calls waiting (after that, only the greedy run's leftover calls remain).
    counts = Counter(run for run, granted_at in log if granted_at < stop_at)
    assert set(counts) == {"greedy", "a", "b", "c"}
    assert max(counts.values()) - min(counts.values()) <= 1, counts
    # Round by round: between two grants of the greedy run, every polite run got one.
    greedy_rounds = [i for i, (run, granted_at) in enumerate(log) if run == "greedy" and granted_at < stop_at]
    for first, second in itertools.pairwise(greedy_rounds):
        assert {run for run, _ in log[first + 1 : second]} == {"a", "b", "c"}


async def test_the_rate_bucket_paces_grants_at_requests_per_minute() -> None:
    pool = make_pool(max_in_flight=100, rpm=60, burst=1)
    log: list[tuple[str, float]] = []
    await asyncio.gather(*(call(pool, f"run-{i}", hold=0.5, log=log) for i in range(90)))
    times = sorted(t for _, t in log)
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert min(gaps) == pytest.approx(1.0)  # 60 per minute, one at a time
    for i, start in enumerate(times):
        assert sum(1 for t in times[i:] if t < start + 60) <= 60


async def test_a_burst_allows_back_to_back_grants_but_not_more_than_burst_plus_rate() -> None:
    pool = make_pool(max_in_flight=100, rpm=60, burst=5)
    log: list[tuple[str, float]] = []
    await asyncio.sleep(30)  # the pool opens and its bucket fills to the burst
    await asyncio.gather(*(call(pool, f"run-{i}", hold=0.1, log=log) for i in range(20)))
    times = sorted(t for _, t in log)
    assert times[4] == pytest.approx(times[0])  # five at once
    for i, start in enumerate(times):
        for j in range(i, len(times)):
            assert j - i + 1 <= 5 + (times[j] - start) * 60 / 60 + 1e-6


async def test_no_more_calls_in_flight_than_the_limit() -> None:
    pool = make_pool(max_in_flight=2)
    in_flight = 0
    peak = 0

    async def one(run: str) -> None:
        nonlocal in_flight, peak
        grant = await take(pool, run)
        in_flight += 1
        peak = max(peak, in_flight)
        assert pool.snapshot().in_flight == in_flight
        await asyncio.sleep(5)
        in_flight -= 1
        pool.release(run, grant.lease.lease_id, tokens_used=None)

    started = now()
    await asyncio.gather(*(one(f"run-{i % 3}") for i in range(8)))
    assert peak == 2
    assert now() - started == pytest.approx(LEASE + 4 * 5, abs=0.1)  # 8 calls, 2 at a time, 5 s each


async def test_a_lease_never_released_returns_its_permit_after_the_lease_period() -> None:
    pool = make_pool(max_in_flight=1)
    abandoned = await take(pool, "crashed")  # the holder dies: no release, no renewal
    second = await take(pool, "survivor")
    assert second.lease.granted_at == pytest.approx(abandoned.lease.granted_at + LEASE)
    assert pool.snapshot().leases_expired_total == 1


async def test_a_renewed_lease_is_kept_until_released() -> None:
    pool = make_pool(max_in_flight=1)
    holder = await take(pool, "slow")
    waiter = asyncio.create_task(take(pool, "next"))
    for _ in range(10):
        await asyncio.sleep(LEASE / 3)
        assert pool.renew("slow", holder.lease.lease_id)
    assert not waiter.done()
    pool.release("slow", holder.lease.lease_id, tokens_used=None)
    granted = await waiter
    assert granted.lease.granted_at == pytest.approx(holder.lease.granted_at + 10 * LEASE / 3)
    assert pool.snapshot().leases_expired_total == 0


async def test_a_lease_cannot_be_renewed_or_released_by_another_run() -> None:
    pool = make_pool(max_in_flight=1)
    grant = await take(pool, "owner")
    assert not pool.renew("intruder", grant.lease.lease_id)
    assert not pool.release("intruder", grant.lease.lease_id, tokens_used=None)
    assert pool.snapshot().in_flight == 1


async def test_a_provider_retry_after_pauses_every_run_of_the_pool() -> None:
    pool = make_pool(max_in_flight=10)
    await asyncio.sleep(LEASE)
    first = await take(pool, "saw-429")
    pool.release("saw-429", first.lease.lease_id, tokens_used=None)
    penalized_at = now()
    pool.penalize(30)
    others = await asyncio.gather(*(take(pool, run) for run in ("b", "c")))
    assert min(g.lease.granted_at for g in others) == pytest.approx(penalized_at + 30)
    assert pool.snapshot().paused_for_seconds == 0


async def test_an_absurd_retry_after_is_capped() -> None:
    pool = make_pool()
    pool.penalize(10**9)
    assert pool.snapshot().paused_for_seconds == pytest.approx(600)


async def test_a_call_past_its_wait_budget_is_told_the_queue_depth() -> None:
    pool = make_pool(max_in_flight=1)
    await take(pool, "holder")
    waiting = [asyncio.create_task(take(pool, f"patient-{i}", max_wait=1000)) for i in range(3)]
    await asyncio.sleep(1)
    enqueued = now()
    with pytest.raises(QueueTimeoutError) as caught:
        await take(pool, "impatient", max_wait=5)
    assert now() == pytest.approx(enqueued + 5)
    assert caught.value.queue_depth == 4  # the three patient calls and the one giving up
    assert caught.value.in_flight == 1
    assert "4 calls were waiting" in str(caught.value)
    assert pool.queue_depth == 3
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    assert pool.queue_depth == 0


async def test_a_cancelled_waiter_gives_up_its_place() -> None:
    pool = make_pool(max_in_flight=1)
    holder = await take(pool, "holder")
    leaving = asyncio.create_task(take(pool, "leaving"))
    staying = asyncio.create_task(take(pool, "staying"))
    await asyncio.sleep(1)
    leaving.cancel()
    await asyncio.gather(leaving, return_exceptions=True)
    pool.release("holder", holder.lease.lease_id, tokens_used=None)
    granted = await staying
    assert granted.lease.run == "staying"
    assert pool.snapshot().in_flight == 1


async def test_restart_fails_closed_for_one_lease_period_and_adopts_renewed_leases() -> None:
    before = make_pool(max_in_flight=2)
    held = [await take(before, "run-a"), await take(before, "run-b")]
    restarted_at = now()
    after = make_pool(max_in_flight=2)  # the operator restarted: a new pool with empty memory
    newcomer = asyncio.create_task(take(after, "run-c"))
    await asyncio.sleep(LEASE / 3)
    # The holders renew on their usual schedule; the new server adopts the leases it never granted.
    assert all(after.renew(g.lease.run, g.lease.lease_id) for g in held)
    assert after.snapshot().in_flight == 2
    await asyncio.sleep(LEASE)  # the fail-closed period is over, but both permits are still held
    assert not newcomer.done()
    after.release("run-a", held[0].lease.lease_id, tokens_used=None)
    granted = await newcomer
    assert granted.lease.granted_at == pytest.approx(restarted_at + LEASE / 3 + LEASE)
    # After the fail-closed period an unknown lease is not adopted: its holder is told it is gone.
    assert not after.renew("run-x", "lease-from-nowhere")


async def test_requeued_calls_keep_their_original_order_after_a_restart() -> None:
    pool = make_pool(max_in_flight=1)
    log: list[str] = []

    async def requeue(run: str, waited: float) -> None:
        grant = await take(pool, run, waited=waited)
        log.append(run)
        pool.release(run, grant.lease.lease_id, tokens_used=None)

    # Clients reconnect in any order, each saying how long it had already waited.
    tasks = []
    for run, waited in [("third", 2.0), ("first", 9.0), ("fourth", 0.5), ("second", 5.0)]:
        tasks.append(asyncio.create_task(requeue(run, waited)))
        await asyncio.sleep(0.1)
    await asyncio.gather(*tasks)
    assert log == ["first", "second", "third", "fourth"]


async def test_asking_again_with_the_same_request_id_returns_the_same_lease() -> None:
    pool = make_pool(max_in_flight=1)
    first = await pool.acquire("run", "request-1", max_wait_seconds=60, waited_seconds=0)
    again = await pool.acquire("run", "request-1", max_wait_seconds=60, waited_seconds=12)
    assert again.lease.lease_id == first.lease.lease_id
    assert pool.snapshot().in_flight == 1


async def test_tokens_reported_on_release_slow_the_pool_to_tokens_per_minute() -> None:
    pool = make_pool(max_in_flight=10, rpm=6000, tpm=600)  # 10 tokens a second
    first = await take(pool, "big-call")
    pool.release("big-call", first.lease.lease_id, tokens_used=100)
    released_at = now()
    second = await take(pool, "next")
    # The bucket held one second of tokens (10) and owes 100: 9 seconds until it is out of debt.
    assert second.lease.granted_at == pytest.approx(released_at + 9)


async def test_new_limits_apply_to_calls_already_waiting() -> None:
    pool = make_pool(max_in_flight=1)
    holder = await take(pool, "holder")
    waiter = asyncio.create_task(take(pool, "waiter"))
    await asyncio.sleep(1)
    assert not waiter.done()
    pool.reconfigure(PoolLimits(max_in_flight=2, requests_per_minute=6000))
    granted = await waiter
    assert granted.lease.granted_at == pytest.approx(holder.lease.granted_at + 1, abs=0.02)


async def test_a_call_that_gave_up_does_not_cost_its_run_a_turn() -> None:
    pool = make_pool(max_in_flight=1)
    holder = await take(pool, "holder")
    with pytest.raises(QueueTimeoutError):
        await take(pool, "unlucky", max_wait=1)
    unlucky = asyncio.create_task(take(pool, "unlucky"))  # asks again at once, before the other run
    await asyncio.sleep(1)
    other = asyncio.create_task(take(pool, "other"))
    await asyncio.sleep(1)
    pool.release("holder", holder.lease.lease_id, tokens_used=None)
    # Both are in the same round, so arrival order decides: the timed-out call left no debt behind.
    first = await unlucky
    assert not other.done()
    pool.release("unlucky", first.lease.lease_id, tokens_used=None)
    await other


async def grant_times_over(pool: Pool, seconds: float) -> list[float]:
    """Grant times of calls kept queued for `seconds` (released at once, so only the rate limits)."""
    log: list[tuple[str, float]] = []
    stop_at = now() + seconds

    async def worker(run: str) -> None:
        while now() < stop_at:
            await call(pool, run, hold=0.0, log=log)

    await asyncio.gather(*(worker(f"run-{i}") for i in range(4)))
    return [t for _, t in log if t < stop_at]


async def test_a_provider_429_halves_the_rate_and_it_climbs_back_to_the_declared_one() -> None:
    pool = make_pool(max_in_flight=100, rpm=600)  # 10 per second declared
    await asyncio.sleep(LEASE)  # the pool opens
    before = await grant_times_over(pool, 5)
    assert len(before) == pytest.approx(50, abs=2)
    penalized_at = now()
    pool.penalize(0)  # a 429 without Retry-After: no pause, a lower rate
    assert pool.snapshot().requests_per_minute == pytest.approx(300)
    assert pool.snapshot().rate_decreases_total == 1
    after = await grant_times_over(pool, 1)
    assert len(after) <= 6  # about 5 per second, climbing by 2 % of 600/min each second
    # Additive increase: 12/min per second, so 300 -> 600 in 25 s.
    await asyncio.sleep(10)
    assert pool.snapshot().requests_per_minute == pytest.approx(300 + (now() - penalized_at) * 12)
    await asyncio.sleep(25)
    assert pool.snapshot().requests_per_minute == 600  # never above the declared rate
    recovered = await grant_times_over(pool, 5)
    assert len(recovered) == pytest.approx(50, abs=2)


async def test_429s_of_calls_started_before_a_decrease_count_once() -> None:
    pool = make_pool(max_in_flight=100, rpm=600)
    for _ in range(5):  # five calls in flight at the old rate all come back 429
        pool.penalize(0)
    assert pool.snapshot().requests_per_minute == pytest.approx(300)
    await asyncio.sleep(2.0)  # past the hold: a new 429 is new evidence
    pool.penalize(0)
    assert pool.snapshot().rate_decreases_total == 2
    assert pool.snapshot().requests_per_minute == pytest.approx((300 + 2 * 12) / 2)


async def test_repeated_429s_never_take_the_rate_below_its_floor() -> None:
    pool = make_pool(max_in_flight=100, rpm=60)
    for _ in range(20):
        pool.penalize(0)
        await asyncio.sleep(2.0)
    assert pool.snapshot().requests_per_minute >= 1.0


async def test_lowering_the_declared_rate_caps_the_current_one() -> None:
    pool = make_pool(max_in_flight=100, rpm=600)
    pool.reconfigure(PoolLimits(max_in_flight=100, requests_per_minute=120))
    assert pool.snapshot().requests_per_minute == 120


async def test_raising_the_declared_rate_applies_at_once_unless_the_pool_backed_off() -> None:
    """A live edit from 1/min to 60/min (how the e2e scenario opens its pool) takes effect at once; a pool
    that halved its rate on a 429 keeps half of the new rate and climbs from there."""
    pool = make_pool(max_in_flight=100, rpm=1)
    pool.reconfigure(PoolLimits(max_in_flight=100, requests_per_minute=60))
    assert pool.snapshot().requests_per_minute == 60
    pool.penalize(0)
    pool.reconfigure(PoolLimits(max_in_flight=100, requests_per_minute=600))
    assert pool.snapshot().requests_per_minute == 300
