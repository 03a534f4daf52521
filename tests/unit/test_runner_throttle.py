"""The in-process limiter, on a virtual-time loop (looptime): sleeps cost no real time."""

import asyncio

import pytest

from agentrun_runner.throttle import InProcessLimiter, QueueTimeoutError

pytestmark = [pytest.mark.unit, pytest.mark.looptime]


async def test_waits_are_served_first_come_first_served() -> None:
    limiter = InProcessLimiter(max_concurrent=1, requests_per_minute=1000)
    order: list[int] = []

    async def worker(n: int) -> None:
        permit, _ = await limiter.acquire(max_wait_seconds=100)
        order.append(n)
        await asyncio.sleep(1)
        await permit.release()

    tasks = []
    for n in range(5):
        tasks.append(asyncio.create_task(worker(n)))
        await asyncio.sleep(0)  # arrival order 0, 1, 2, ...
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]


async def test_at_most_max_concurrent_permits_are_out() -> None:
    limiter = InProcessLimiter(max_concurrent=2, requests_per_minute=1000)
    out = 0
    most = 0

    async def worker() -> None:
        nonlocal out, most
        permit, _ = await limiter.acquire(max_wait_seconds=100)
        out += 1
        most = max(most, out)
        await asyncio.sleep(1)
        out -= 1
        await permit.release()

    await asyncio.gather(*(worker() for _ in range(7)))
    assert most == 2


async def test_requests_per_minute_spaces_the_starts() -> None:
    loop = asyncio.get_running_loop()
    limiter = InProcessLimiter(max_concurrent=10, requests_per_minute=2)
    starts: list[float] = []
    for _ in range(5):
        permit, _ = await limiter.acquire(max_wait_seconds=500)
        starts.append(loop.time() - starts[0] if starts else 0.0)
        await permit.release()
    # Two per 60 s window: 0, 0, 60, 60, 120.
    assert [round(s) for s in starts] == [0, 0, 60, 60, 120]


async def test_reports_the_wait_it_measured() -> None:
    limiter = InProcessLimiter(max_concurrent=1, requests_per_minute=1000)
    first, waited_first = await limiter.acquire(max_wait_seconds=10)

    async def release_later() -> None:
        await asyncio.sleep(3)
        await first.release()

    releaser = asyncio.create_task(release_later())
    _, waited = await limiter.acquire(max_wait_seconds=10)
    await releaser
    assert waited_first == 0
    assert round(waited) == 3


async def test_queue_timeout_reports_the_queue_depth() -> None:
    limiter = InProcessLimiter(max_concurrent=1, requests_per_minute=1000)
    await limiter.acquire(max_wait_seconds=1)  # held for the whole test
    waiters = [asyncio.create_task(limiter.acquire(max_wait_seconds=5 + n)) for n in range(3)]
    results = await asyncio.gather(*waiters, return_exceptions=True)
    errors = [r for r in results if isinstance(r, QueueTimeoutError)]
    assert len(errors) == 3
    assert [e.depth for e in errors] == [3, 2, 1]
    assert "queue depth 3" in str(errors[0])
    assert limiter.queue_depth == 0


async def test_penalize_holds_every_caller_for_the_retry_after() -> None:
    loop = asyncio.get_running_loop()
    limiter = InProcessLimiter(max_concurrent=5, requests_per_minute=1000)
    limiter.penalize(30)
    started = loop.time()
    permit, waited = await limiter.acquire(max_wait_seconds=100)
    await permit.release()
    assert round(loop.time() - started) == 30
    assert round(waited) == 30
    limiter.penalize(30)
    with pytest.raises(QueueTimeoutError):
        await limiter.acquire(max_wait_seconds=10)


async def test_a_released_permit_is_released_once() -> None:
    limiter = InProcessLimiter(max_concurrent=1, requests_per_minute=1000)
    permit, _ = await limiter.acquire(max_wait_seconds=1)
    await permit.release()
    await permit.release()
    second, _ = await limiter.acquire(max_wait_seconds=1)
    with pytest.raises(QueueTimeoutError):
        await limiter.acquire(max_wait_seconds=1)
    await second.release()
