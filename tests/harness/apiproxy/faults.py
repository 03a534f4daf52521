"""Fault injection: failing or slow requests and dropped watch streams, applied before a request is forwarded,
so a failed request never reaches the real API server."""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp.web

from tests.harness.apiproxy.accounting import RequestRecord
from tests.harness.apiproxy.status import reason_for, status_response

RequestPredicate = Callable[[RequestRecord], bool]


class InjectedError(Exception):
    """The failure a fault answers a request with, in place of the API server's answer."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        *,
        details: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = dict(details or {})
        self.headers = dict(headers or {})

    def response(self) -> aiohttp.web.Response:
        return status_response(self.code, self.reason, self.message, details=self.details, headers=self.headers)


class _GarbledAnswerError(InjectedError):
    """A 200 whose body is not the JSON the client asked for, as an HTML error page from a proxy would be."""

    def __init__(self, body: bytes) -> None:
        super().__init__(200, "OK", "injected garbled answer")
        self.body = body

    def response(self) -> aiohttp.web.Response:
        return aiohttp.web.Response(status=200, body=self.body, content_type="text/html")


@dataclass
class Fault:
    """One injected fault: the next `remaining` matching requests fail with `status` and/or wait `delay` seconds."""

    remaining: int
    status: int | None = None
    retry_after: float | None = None
    delay: float = 0.0
    match: RequestPredicate | None = None
    hits: int = 0
    # Answer 200 with these bytes as the body instead (a broken middlebox's page where JSON belongs).
    body: bytes | None = None

    def applies_to(self, record: RequestRecord) -> bool:
        return self.remaining > 0 and (self.match is None or self.match(record))

    def error(self) -> InjectedError:
        """The failure as kube-apiserver renders it: 429 carries `Retry-After` and `details.retryAfterSeconds`."""
        if self.body is not None:
            return _GarbledAnswerError(self.body)
        if self.status is None:
            raise ValueError("a delay-only fault has no error")
        reason = reason_for(self.status)
        headers: dict[str, str] = {}
        details: dict[str, Any] = {}
        message = f"injected fault: {reason}"
        if self.status == 429:
            # The API server's own words when its max-in-flight limit throttles a request.
            message = "Too many requests, please try again later."
        if self.retry_after is not None:
            # HTTP's Retry-After is whole seconds; the API server rounds up the same way.
            headers["Retry-After"] = str(math.ceil(self.retry_after))
            details["retryAfterSeconds"] = math.ceil(self.retry_after)
        return InjectedError(self.status, reason, message, details=details, headers=headers)


@dataclass
class _OpenWatch:
    record: RequestRecord
    # The loop serving the watch: drop_watches may be called from another thread (ThreadedApiProxy's user).
    loop: asyncio.AbstractEventLoop
    dropped: asyncio.Event = field(default_factory=asyncio.Event)
    # Set at once, in the caller's thread; `dropped` is set on the watch's loop, maybe a moment later.
    drop_requested: bool = False

    def drop(self) -> None:
        self.drop_requested = True
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            self.dropped.set()
        elif not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.dropped.set)


class Faults:
    """The proxy's fault hook (`proxy.faults`). Safe to call from a thread other than the proxy's loop."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
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
        body: bytes | None = None,
    ) -> Fault:
        """Make the next `count` requests matching `match` (all when None) fail with `status`, be `delay`s slow, or both;
        or, with `body`, be answered 200 with those bytes (not JSON) in place of the API server's answer."""
        if body is not None and status is not None:
            raise ValueError("a garbled answer is a 200: give a body or a status, not both")
        if status is None and delay <= 0 and body is None:
            raise ValueError("a fault needs a status, a delay, a body, or a combination")
        if status is not None and not 400 <= status <= 599:
            raise ValueError(f"an injected status must be an HTTP error code, not {status}")
        if count < 1:
            raise ValueError(f"a fault applies to at least one request, not {count}")
        fault = Fault(remaining=count, status=status, retry_after=retry_after, delay=delay, match=match, body=body)
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    @property
    def pending(self) -> list[Fault]:
        """The faults that still have requests left to fail or slow down, oldest first."""
        with self._lock:
            return [fault for fault in self._faults if fault.remaining > 0]

    async def apply(self, record: RequestRecord) -> None:
        """Called for each request before it is forwarded: sleeps and/or raises the first matching fault's failure."""
        with self._lock:
            fault = next((fault for fault in self._faults if fault.applies_to(record)), None)
            if fault is not None:
                fault.remaining -= 1
                fault.hits += 1
            self._faults = [fault for fault in self._faults if fault.remaining > 0]
        if fault is None:
            return
        if fault.delay > 0:
            await asyncio.sleep(fault.delay)
        if fault.status is not None or fault.body is not None:
            raise fault.error()

    def watch_opened(self, record: RequestRecord) -> asyncio.Event:
        """Register an open watch; the returned event is set when the stream must be dropped."""
        watch = _OpenWatch(record, asyncio.get_running_loop())
        with self._lock:
            self._watches.append(watch)
        return watch.dropped

    def watch_closed(self, dropped: asyncio.Event) -> None:
        with self._lock:
            self._watches = [watch for watch in self._watches if watch.dropped is not dropped]

    @property
    def open_watches(self) -> list[RequestRecord]:
        """The watch streams being relayed that have not been dropped."""
        with self._lock:
            return [watch.record for watch in self._watches if not watch.drop_requested]

    def drop_watches(self, match: RequestPredicate | None = None) -> int:
        """Cut the open watch streams (matching `match`) as a dying API server or load balancer would; returns how many."""
        with self._lock:
            chosen = [
                watch for watch in self._watches if not watch.drop_requested and (match is None or match(watch.record))
            ]
            for watch in chosen:
                watch.drop()
        return len(chosen)
