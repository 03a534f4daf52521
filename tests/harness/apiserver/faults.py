"""Fault injection: failing or slow requests and dropped watch streams, applied before the store is touched."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.harness.apiserver.accounting import RequestRecord
from tests.harness.apiserver.errors import ApiError

RequestPredicate = Callable[[RequestRecord], bool]

_REASONS = {
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
    409: "Conflict",
    403: "Forbidden",
}


@dataclass
class Fault:
    """One injected fault: the next `remaining` matching requests fail with `status` and/or wait `delay` seconds."""

    remaining: int
    status: int | None = None
    retry_after: float | None = None
    delay: float = 0.0
    match: RequestPredicate | None = None
    hits: int = 0

    def applies_to(self, record: RequestRecord) -> bool:
        return self.remaining > 0 and (self.match is None or self.match(record))

    def error(self) -> ApiError:
        """The error as kube-apiserver renders it: 429 carries `Retry-After` and `details.retryAfterSeconds`."""
        assert self.status is not None
        reason = _REASONS.get(self.status, "InternalError")
        headers: dict[str, str] = {}
        details: dict[str, object] = {}
        message = f"injected fault: {reason}"
        if self.status == 429:
            message = "Too many requests, please try again later."
        if self.retry_after is not None:
            # HTTP's Retry-After is whole seconds; the apiserver rounds up the same way.
            headers["Retry-After"] = str(math.ceil(self.retry_after))
            details["retryAfterSeconds"] = math.ceil(self.retry_after)
        return ApiError(self.status, reason, message, details=details, headers=headers)


@dataclass
class _OpenWatch:
    record: RequestRecord
    dropped: asyncio.Event = field(default_factory=asyncio.Event)


class Faults:
    """The fault hook of the emulated apiserver (`server.faults`)."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._watches: list[_OpenWatch] = []

    def inject(
        self,
        status: int | None = None,
        *,
        count: int = 1,
        retry_after: float | None = None,
        delay: float = 0.0,
        match: RequestPredicate | None = None,
    ) -> Fault:
        """Make the next `count` requests matching `match` (all when None) fail with `status`, be `delay`s slow, or both."""
        if status is None and delay <= 0:
            raise ValueError("a fault needs a status, a delay, or both")
        fault = Fault(remaining=count, status=status, retry_after=retry_after, delay=delay, match=match)
        self._faults.append(fault)
        return fault

    def clear(self) -> None:
        self._faults.clear()

    async def apply(self, record: RequestRecord) -> None:
        """Called for each request before it is served: sleeps and/or raises the injected error."""
        for fault in self._faults:
            if fault.applies_to(record):
                fault.remaining -= 1
                fault.hits += 1
                if fault.delay > 0:
                    await asyncio.sleep(fault.delay)
                if fault.status is not None:
                    raise fault.error()
                return
        self._faults = [fault for fault in self._faults if fault.remaining > 0]

    def watch_opened(self, record: RequestRecord) -> asyncio.Event:
        """Register an open watch; the returned event is set when the stream must be dropped."""
        watch = _OpenWatch(record)
        self._watches.append(watch)
        return watch.dropped

    def watch_closed(self, dropped: asyncio.Event) -> None:
        self._watches = [watch for watch in self._watches if watch.dropped is not dropped]

    @property
    def open_watches(self) -> list[RequestRecord]:
        return [watch.record for watch in self._watches]

    def drop_watches(self, match: RequestPredicate | None = None) -> int:
        """Cut the open watch streams (matching `match`) as a dying apiserver or load balancer would; returns how many."""
        dropped = 0
        for watch in self._watches:
            if match is None or match(watch.record):
                watch.dropped.set()
                dropped += 1
        return dropped
