"""A runner killed while holding a permit does not leak it: its lease stops being renewed and the
permit returns to the pool one lease period later. Real time, real processes, a one-second lease."""

import asyncio
import os
import signal
import sys

import pytest

from agentrun_operator.permits.pool import PoolLimits
from tests.harness.source_roots import pythonpath
from tests.harness.throttle import NAMESPACE, POOL, limiter_for, permit_server

pytestmark = pytest.mark.integration

LEASE = 1.0

HOLDER = """
import asyncio, sys
from tests.harness.throttle import limiter_for

async def main() -> None:
    permit, _ = await limiter_for("doomed", sys.argv[1]).acquire(max_wait_seconds=30)
    print("held", flush=True)
    await asyncio.sleep(3600)  # holds the permit, renewing its lease, until killed

asyncio.run(main())
"""


async def test_a_runner_killed_while_holding_a_permit_returns_it_after_the_lease_timeout() -> None:
    limits = PoolLimits(max_in_flight=1, requests_per_minute=600)
    async with permit_server(["doomed", "next"], limits, lease_seconds=LEASE) as server:
        url = f"http://127.0.0.1:{server.port}"
        paths = pythonpath()
        holder = await asyncio.create_subprocess_exec(
            sys.executable, "-c", HOLDER, url, env={**os.environ, "PYTHONPATH": paths}, stdout=asyncio.subprocess.PIPE
        )
        try:
            assert holder.stdout is not None
            assert await asyncio.wait_for(holder.stdout.readline(), timeout=20) == b"held\n"
            # Alive, the holder keeps its lease through several lease periods by renewing it.
            await asyncio.sleep(3 * LEASE)
            snapshot = server.registry.snapshot(NAMESPACE, POOL)
            assert snapshot is not None
            assert (snapshot.in_flight, snapshot.leases_expired_total) == (1, 0)
            holder.send_signal(signal.SIGKILL)
            await holder.wait()
        finally:
            if holder.returncode is None:
                holder.kill()
                await holder.wait()
        limiter = limiter_for("next", url)
        permit, _ = await limiter.acquire(max_wait_seconds=10 * LEASE)
        snapshot = server.registry.snapshot(NAMESPACE, POOL)
        assert snapshot is not None
        assert (snapshot.in_flight, snapshot.leases_expired_total) == (1, 1)  # the killed run's permit expired
        await permit.release()
        await limiter.aclose()
