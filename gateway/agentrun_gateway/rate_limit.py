"""Submissions per caller per minute: one token bucket per caller, in the replica's memory.

Per replica by design: counting across replicas would cost an API write per submission, and a limit of N per
replica bounds a caller to N x replicas, which the docs state. Buckets of idle callers are dropped.
"""

import time
from collections import OrderedDict

MAX_CALLERS = 100_000  # bounds memory under a flood of distinct callers


class CallerRateLimit:
    def __init__(self, per_minute: int, burst: int) -> None:
        self._rate = per_minute / 60.0
        self._burst = float(burst)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # caller -> (tokens, at)

    def _tokens(self, caller: str, now: float) -> float:
        tokens, at = self._buckets.get(caller, (self._burst, now))
        return min(self._burst, tokens + (now - at) * self._rate)

    def reserve(self, caller: str) -> float | None:
        """Take one submission from the caller's bucket: None when taken, else the seconds until one is free."""
        now = time.monotonic()
        tokens = self._tokens(caller, now)
        if tokens < 1.0:
            return (1.0 - tokens) / self._rate
        self._buckets[caller] = (tokens - 1.0, now)
        self._buckets.move_to_end(caller)
        while len(self._buckets) > MAX_CALLERS:
            self._buckets.popitem(last=False)
        return None

    def refund(self, caller: str) -> None:
        """Give back a reserved submission that created nothing (a replay, or a refusal by the API server)."""
        now = time.monotonic()
        self._buckets[caller] = (min(self._burst, self._tokens(caller, now) + 1.0), now)
