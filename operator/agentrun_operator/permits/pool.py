"""One throttle pool: who waits for a permit, who holds one, and when the next may be granted.

Grant order is start-time fair queuing over runs: each waiting call gets a tag when it arrives,
``start = max(pool clock, that run's last finish)``, and the waiter with the smallest
``(start, enqueued_at)`` is served next, after which the pool clock is that start. A run with one call
waiting is served in arrival order (first come, first served); a run with many parallel calls gets
one grant per round and cannot starve the others; a run's own calls keep their order.

A grant needs, all at once: the pool open (past its first lease period), no provider penalty
running, fewer leases than ``max_requests_in_flight``, one request in the rate bucket and, with a
token limit, a token bucket not in debt. Both buckets start empty, so a restarted or re-declared
pool can never add a burst on top of what its previous life granted (see ``permits`` for the
restart semantics). Everything is computed from an injected clock, so tests fast-forward time.

The rate bucket fills at the pool's *current* rate, which adapts to the provider (AIMD): a provider
429 reported by a run multiplies it by ``Aimd.decrease_factor`` (once per ``Aimd.hold_seconds``: the
429s of calls already started at the old rate are one signal, not many), and every second without
one adds ``Aimd.increase_fraction_per_second`` of the declared rate, up to the declared rate. The
declared ``requestsPerMinute`` is thus a ceiling the pool probes towards, and a provider's limit
below it (shared with other clients, or never published) is found rather than hammered.
"""

import asyncio
import heapq
import itertools
import math
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

# Grants counted for the "granted in the last minute" figure.
RATE_WINDOW_SECONDS: Final = 60.0
# Float slack when a timer fires exactly at the moment the bucket reaches one request.
_EPSILON: Final = 1e-9
MAX_LEASE_ID_LENGTH: Final = 64


@dataclass(frozen=True)
class PoolLimits:
    """The limits of one pool, from its ThrottlePool spec."""

    max_in_flight: int
    requests_per_minute: int
    burst: int = 1
    tokens_per_minute: int | None = None

    def __post_init__(self) -> None:
        if self.max_in_flight < 1 or self.requests_per_minute < 1 or self.burst < 1:
            raise ValueError("max_in_flight, requests_per_minute and burst must be at least 1")
        if self.tokens_per_minute is not None and self.tokens_per_minute < 1:
            raise ValueError("tokens_per_minute must be at least 1 when set")


@dataclass(frozen=True)
class Aimd:
    """How a pool's rate adapts to provider 429s: additive increase, multiplicative decrease."""

    # The rate is multiplied by this on a 429; 1.0 turns adaptation off (a fixed rate, paused only
    # by Retry-After). One half, as in TCP: the rate converges near the provider's limit in a few steps.
    decrease_factor: float = 0.5
    # 429s within this long of the last decrease do not decrease again: they answer calls started
    # before it, at the old rate.
    hold_seconds: float = 2.0
    # Each second without a 429 adds this share of the declared rate (0.02: from half the declared
    # rate back to all of it in 25 s), so a limit that was lifted is found again.
    increase_fraction_per_second: float = 0.02
    # The rate never falls below this, so a pool keeps probing whatever the provider answers.
    min_requests_per_minute: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.decrease_factor <= 1:
            raise ValueError("decrease_factor must be in (0, 1]")
        if self.hold_seconds < 0 or self.increase_fraction_per_second < 0 or self.min_requests_per_minute <= 0:
            raise ValueError("hold_seconds and increase_fraction_per_second must be >= 0, min_requests_per_minute > 0")


@dataclass(frozen=True)
class PoolTiming:
    """Time settings every pool of one permit server shares."""

    lease_seconds: float  # a lease not renewed within this long is returned to the pool
    max_penalty_seconds: float  # longest pause one Retry-After may impose; guards against absurd values
    aimd: Aimd = field(default_factory=Aimd)


class QueueTimeoutError(Exception):
    """No permit within the caller's wait budget."""

    def __init__(self, *, waited_seconds: float, queue_depth: int, in_flight: int) -> None:
        super().__init__(
            f"no permit after {waited_seconds:.1f}s in the queue; {queue_depth} calls were waiting "
            f"and {in_flight} in flight"
        )
        self.waited_seconds = waited_seconds
        self.queue_depth = queue_depth
        self.in_flight = in_flight


class PoolClosedError(Exception):
    """The pool was deleted or the server is stopping while a call waited."""


class SupersededError(Exception):
    """The same request was queued again (the client reconnected); the newer one keeps the place."""


@dataclass
class Lease:
    lease_id: str
    run: str
    request_id: str
    granted_at: float
    expires_at: float


@dataclass(frozen=True)
class Grant:
    lease: Lease
    waited_seconds: float  # since the call first queued, including time before a reconnect


@dataclass(frozen=True)
class PoolSnapshot:
    in_flight: int
    queue_depth: int
    waiting_runs: int
    granted_last_minute: int
    paused_for_seconds: float  # left of a provider penalty; 0 when none
    opens_in_seconds: float  # left of the first lease period; 0 once granting
    leases_expired_total: int  # leases returned because their holder stopped renewing
    requests_per_minute: float  # the current (adapted) rate; the declared one without recent 429s
    rate_decreases_total: int  # times a provider 429 lowered the rate


@dataclass(order=True)
class _Waiter:
    start_tag: int
    enqueued_at: float
    seq: int
    run: str = field(compare=False)
    request_id: str = field(compare=False)
    future: "asyncio.Future[Lease]" = field(compare=False)
    gone: bool = field(default=False, compare=False)


class Pool:
    """The permits of one ThrottlePool. Not thread-safe: used from one event loop."""

    def __init__(self, limits: PoolLimits, timing: PoolTiming, clock: Callable[[], float]) -> None:
        self._limits = limits
        self._timing = timing
        self._clock = clock
        now = clock()
        # Fail closed for one lease period: leases granted before a restart (or before the pool was
        # re-declared) are unknown here until their holders renew them, which they do within it.
        self.opens_at = now + timing.lease_seconds
        self._paused_until = now
        self._request_level = 0.0
        self._token_level = 0.0
        self._rate_per_minute = float(limits.requests_per_minute)
        self._decreased_at = -math.inf
        self._rate_decreases = 0
        self._refilled_at = now
        self._leases: dict[str, Lease] = {}
        self._lease_of_request: dict[tuple[str, str], str] = {}
        self._heap: list[_Waiter] = []
        self._waiting: dict[tuple[str, str], _Waiter] = {}
        self._waiting_per_run: dict[str, int] = {}
        self._run_finish: dict[str, int] = {}
        self._virtual_clock = 0
        self._seq = itertools.count()
        self._grant_times: deque[float] = deque()
        self._leases_expired = 0
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def limits(self) -> PoolLimits:
        return self._limits

    async def acquire(self, run: str, request_id: str, *, max_wait_seconds: float, waited_seconds: float) -> Grant:
        """Wait for a permit. ``waited_seconds`` is how long the client already waited (before a
        reconnect or a server restart); it places the call where it first queued."""
        if self._closed:
            raise PoolClosedError("the pool is being removed")
        now = self._clock()
        granted_id = self._lease_of_request.get((run, request_id))
        if granted_id is not None and granted_id in self._leases:
            # The client lost the answer to a grant and asked again: hand it the same lease.
            return Grant(self._leases[granted_id], waited_seconds)
        enqueued_at = now - max(0.0, waited_seconds)
        previous = self._waiting.get((run, request_id))
        if previous is not None:
            start_tag = previous.start_tag
            enqueued_at = min(enqueued_at, previous.enqueued_at)
            self._forget_waiter(previous)
            previous.future.set_exception(SupersededError("queued again by a reconnecting client"))
        else:
            start_tag = max(self._virtual_clock, self._run_finish.get(run, 0))
            self._run_finish[run] = start_tag + 1
        waiter = _Waiter(
            start_tag,
            enqueued_at,
            next(self._seq),
            run=run,
            request_id=request_id,
            future=asyncio.get_running_loop().create_future(),
        )
        heapq.heappush(self._heap, waiter)
        self._waiting[(run, request_id)] = waiter
        self._waiting_per_run[run] = self._waiting_per_run.get(run, 0) + 1
        self._dispatch()
        try:
            await asyncio.wait({waiter.future}, timeout=max(0.0, max_wait_seconds))
        except asyncio.CancelledError:
            # The client went away while waiting: give up the place, or the permit if it just came.
            if waiter.future.done() and not waiter.future.cancelled() and waiter.future.exception() is None:
                self.release(run, waiter.future.result().lease_id, tokens_used=None)
            elif not waiter.gone:
                self._withdraw(waiter)
            raise
        if not waiter.future.done():
            depth = self.queue_depth
            self._withdraw(waiter)
            raise QueueTimeoutError(
                waited_seconds=self._clock() - enqueued_at, queue_depth=depth, in_flight=len(self._leases)
            )
        lease = waiter.future.result()  # re-raises SupersededError / PoolClosedError
        return Grant(lease, lease.granted_at - enqueued_at)

    def renew(self, run: str, lease_id: str) -> bool:
        """Extend a lease by one lease period. During the pool's first lease period an unknown lease
        is adopted: it was granted before a restart and is still in flight. False: the lease is gone."""
        now = self._clock()
        self._expire_leases(now)
        lease = self._leases.get(lease_id)
        if lease is not None:
            if lease.run != run:
                return False
            lease.expires_at = now + self._timing.lease_seconds
            return True
        if now < self.opens_at and 0 < len(lease_id) <= MAX_LEASE_ID_LENGTH:
            self._leases[lease_id] = Lease(
                lease_id, run, "", granted_at=now, expires_at=now + self._timing.lease_seconds
            )
            return True
        return False

    def release(self, run: str, lease_id: str, *, tokens_used: int | None) -> bool:
        """Return a permit. Tokens are charged even when the lease had already expired: the call happened."""
        now = self._clock()
        self._refill(now)
        if tokens_used and self._limits.tokens_per_minute is not None:
            self._token_level -= tokens_used
        lease = self._leases.get(lease_id)
        released = lease is not None and lease.run == run
        if lease is not None and released:
            self._drop_lease(lease)
        self._dispatch()
        return released

    def penalize(self, retry_after_seconds: float) -> None:
        """A provider answered 429: lower the pool's rate (see Aimd) and, for a Retry-After, grant
        nothing to the whole pool until it has passed."""
        now = self._clock()
        self._refill(now)
        aimd = self._timing.aimd
        if aimd.decrease_factor < 1 and now >= self._decreased_at + aimd.hold_seconds:
            self._rate_per_minute = max(aimd.min_requests_per_minute, self._rate_per_minute * aimd.decrease_factor)
            self._decreased_at = now
            self._rate_decreases += 1
        seconds = min(max(0.0, retry_after_seconds), self._timing.max_penalty_seconds)
        self._paused_until = max(self._paused_until, now + seconds)
        self._dispatch()

    def reconfigure(self, limits: PoolLimits) -> None:
        self._refill(self._clock())
        # The adaptation is a share of the declared rate: an edit keeps the share, so a pool without recent
        # 429s moves to the new rate at once (raised or lowered), and one that backed off stays backed off.
        share = self._rate_per_minute / self._limits.requests_per_minute
        self._limits = limits
        self._request_level = min(self._request_level, limits.burst)
        declared = float(limits.requests_per_minute)
        self._rate_per_minute = min(declared, max(self._timing.aimd.min_requests_per_minute, share * declared))
        self._dispatch()

    def close(self) -> None:
        """Fail every waiter; leases simply stop mattering."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        for waiter in list(self._waiting.values()):
            self._forget_waiter(waiter)
            waiter.future.set_exception(PoolClosedError("the pool is being removed"))

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    def snapshot(self) -> PoolSnapshot:
        now = self._clock()
        self._expire_leases(now)
        self._trim_grant_times(now)
        self._refill(now)
        return PoolSnapshot(
            in_flight=len(self._leases),
            queue_depth=len(self._waiting),
            waiting_runs=len(self._waiting_per_run),
            granted_last_minute=len(self._grant_times),
            paused_for_seconds=max(0.0, self._paused_until - now),
            opens_in_seconds=max(0.0, self.opens_at - now),
            leases_expired_total=self._leases_expired,
            requests_per_minute=self._rate_per_minute,
            rate_decreases_total=self._rate_decreases,
        )

    # The scheduler: grant while possible, then sleep until the earliest moment something may change.

    def _dispatch(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._closed:
            return
        now = self._clock()
        self._expire_leases(now)
        self._refill(now)
        while self._waiting:
            blocked_until = self._blocked_until(now)
            if blocked_until is not None:
                self._timer = asyncio.get_running_loop().call_at(self._loop_time(blocked_until, now), self._dispatch)
                return
            self._grant(self._pop_next(), now)
        if self._leases:
            # Nothing waits, but a lease may expire unseen; wake then to keep in-flight honest.
            earliest = min(lease.expires_at for lease in self._leases.values())
            self._timer = asyncio.get_running_loop().call_at(self._loop_time(earliest, now), self._dispatch)

    def _loop_time(self, when: float, now: float) -> float:
        # The pool's clock and the loop's may differ by an offset; timers need the loop's.
        return asyncio.get_running_loop().time() + max(0.0, when - now)

    def _blocked_until(self, now: float) -> float | None:
        if now < self.opens_at:
            return self.opens_at
        if now < self._paused_until:
            return self._paused_until
        if len(self._leases) >= self._limits.max_in_flight:
            return min(lease.expires_at for lease in self._leases.values())
        # At the current rate; should it rise meanwhile, the dispatch then grants and looks again.
        per_second = self._rate_per_minute / 60.0
        if self._request_level < 1.0 - _EPSILON:
            return now + (1.0 - self._request_level) / per_second
        tokens_per_minute = self._limits.tokens_per_minute
        if tokens_per_minute is not None and self._token_level < -_EPSILON:
            return now + (-self._token_level) / (tokens_per_minute / 60.0)
        return None

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._refilled_at)
        self._refilled_at = now
        # The bucket fills at the rate of the start of the interval (never more than was allowed), then
        # the rate climbs additively towards the declared one.
        self._request_level = min(
            float(self._limits.burst), self._request_level + elapsed * self._rate_per_minute / 60.0
        )
        ceiling = float(self._limits.requests_per_minute)
        if self._rate_per_minute < ceiling:
            climb = elapsed * ceiling * self._timing.aimd.increase_fraction_per_second
            self._rate_per_minute = min(ceiling, self._rate_per_minute + climb)
        if self._limits.tokens_per_minute is not None:
            # The token bucket holds at most one second of tokens: spare capacity is not hoarded into bursts.
            per_second = self._limits.tokens_per_minute / 60.0
            self._token_level = min(per_second, self._token_level + elapsed * per_second)

    def _pop_next(self) -> _Waiter:
        while True:
            waiter = heapq.heappop(self._heap)
            if not waiter.gone:
                return waiter

    def _grant(self, waiter: _Waiter, now: float) -> None:
        self._forget_waiter(waiter)
        self._virtual_clock = waiter.start_tag
        for run in [run for run, finish in self._run_finish.items() if finish <= self._virtual_clock]:
            del self._run_finish[run]  # max(clock, finish) is the clock for these: no need to remember
        self._request_level -= 1.0
        lease = Lease(
            lease_id=secrets.token_urlsafe(16),
            run=waiter.run,
            request_id=waiter.request_id,
            granted_at=now,
            expires_at=now + self._timing.lease_seconds,
        )
        self._leases[lease.lease_id] = lease
        self._lease_of_request[(waiter.run, waiter.request_id)] = lease.lease_id
        self._grant_times.append(now)
        self._trim_grant_times(now)
        waiter.future.set_result(lease)

    def _withdraw(self, waiter: _Waiter) -> None:
        """A call leaves the queue unserved; its run does not lose its turn for it."""
        self._forget_waiter(waiter)
        waiter.future.cancel()
        if self._run_finish.get(waiter.run) == waiter.start_tag + 1:
            self._run_finish[waiter.run] = waiter.start_tag

    def _forget_waiter(self, waiter: _Waiter) -> None:
        if waiter.gone:
            return
        waiter.gone = True
        del self._waiting[(waiter.run, waiter.request_id)]
        left = self._waiting_per_run[waiter.run] - 1
        if left:
            self._waiting_per_run[waiter.run] = left
        else:
            del self._waiting_per_run[waiter.run]
        if len(self._heap) > 2 * len(self._waiting) + 64:
            self._heap = [w for w in self._heap if not w.gone]
            heapq.heapify(self._heap)

    def _trim_grant_times(self, now: float) -> None:
        while self._grant_times and self._grant_times[0] <= now - RATE_WINDOW_SECONDS:
            self._grant_times.popleft()

    def _expire_leases(self, now: float) -> None:
        for lease in [lease for lease in self._leases.values() if lease.expires_at <= now]:
            self._drop_lease(lease)
            self._leases_expired += 1

    def _drop_lease(self, lease: Lease) -> None:
        del self._leases[lease.lease_id]
        self._lease_of_request.pop((lease.run, lease.request_id), None)
