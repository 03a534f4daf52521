"""The queue in front of every model call.

The agent loop only sees ``Limiter``; ``InProcessLimiter`` is the implementation used when the run
has no cluster-wide pool (``RunnerConfig.permit_server_url`` is None). A pool client that asks a
permit server replaces it without touching the loop.
"""

import asyncio
import collections
import contextlib
from typing import Protocol, runtime_checkable


class Permit(Protocol):
    async def release(self) -> None: ...


@runtime_checkable
class MetersTokens(Protocol):
    """A permit that charges the call's tokens to a budget (a pool with tokensPerMinute) on release."""

    def record_tokens(self, tokens: int) -> None: ...


class Limiter(Protocol):
    async def acquire(self, *, max_wait_seconds: float) -> tuple[Permit, float]:
        """Wait for a permit; returns it and the seconds waited. Raises QueueTimeoutError(depth=..) past max_wait."""
        ...

    def penalize(self, retry_after_seconds: float) -> None:
        """A 429 with Retry-After was seen: slow every caller of this limiter for that long."""
        ...


def _now() -> float:
    # The loop's clock (monotonic), so tests can run the limiter on a virtual-time loop.
    return asyncio.get_running_loop().time()


class QueueTimeoutError(Exception):
    """No permit within the allowed wait; the message says why, ``depth`` how many calls were queued
    (None when the limiter cannot tell, as a pool client cut off from its server)."""

    def __init__(self, message: str = "", *, depth: int | None = None) -> None:
        super().__init__(message or f"no throttle permit within the queue budget; queue depth {depth}")
        self.depth = depth


class _InProcessPermit:
    def __init__(self, limiter: "InProcessLimiter") -> None:
        self._limiter = limiter
        self._released = False

    async def release(self) -> None:
        if not self._released:
            self._released = True
            await self._limiter._release()


class InProcessLimiter:
    """At most ``max_concurrent`` permits out and ``requests_per_minute`` started in any 60 s window.

    Waiters are served first come, first served: the head of the queue holds ``_turn`` while it
    waits for capacity, so a later caller can never overtake it.
    """

    WINDOW_SECONDS = 60.0

    def __init__(self, *, max_concurrent: int, requests_per_minute: int) -> None:
        if max_concurrent < 1 or requests_per_minute < 1:
            raise ValueError("max_concurrent and requests_per_minute must be at least 1")
        self._max_concurrent = max_concurrent
        self._requests_per_minute = requests_per_minute
        self._in_flight = 0
        self._starts: collections.deque[float] = collections.deque()
        self._penalty_until = 0.0
        self._depth = 0
        self._turn = asyncio.Lock()
        self._capacity = asyncio.Condition()

    @property
    def queue_depth(self) -> int:
        return self._depth

    async def acquire(self, *, max_wait_seconds: float) -> tuple[Permit, float]:
        started = _now()
        self._depth += 1
        try:
            async with asyncio.timeout(max(max_wait_seconds, 0.0)):
                async with self._turn:
                    await self._wait_for_capacity()
        except TimeoutError:
            waited = _now() - started
            raise QueueTimeoutError(
                f"no throttle permit after {waited:.1f}s; queue depth {self._depth}", depth=self._depth
            ) from None
        finally:
            self._depth -= 1
        return _InProcessPermit(self), _now() - started

    def penalize(self, retry_after_seconds: float) -> None:
        self._penalty_until = max(self._penalty_until, _now() + max(retry_after_seconds, 0.0))

    async def _wait_for_capacity(self) -> None:
        async with self._capacity:
            while True:
                now = _now()
                while self._starts and self._starts[0] <= now - self.WINDOW_SECONDS:
                    self._starts.popleft()
                delay = self._penalty_until - now
                if len(self._starts) >= self._requests_per_minute:
                    delay = max(delay, self._starts[0] + self.WINDOW_SECONDS - now)
                if self._in_flight < self._max_concurrent and delay <= 0:
                    self._in_flight += 1
                    self._starts.append(now)
                    return
                if self._in_flight >= self._max_concurrent:
                    # A release notifies; a penalty or window wait can only shorten while waiting.
                    await self._capacity.wait()
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._capacity.wait(), timeout=delay)

    async def _release(self) -> None:
        async with self._capacity:
            self._in_flight -= 1
            self._capacity.notify_all()
