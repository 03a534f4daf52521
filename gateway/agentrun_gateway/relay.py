"""Relaying one run's events from its runner to one reader, across runner restarts.

The reader's position is the id of the last event written to it. Every (re)attach to the runner asks
for the events after that id (``Last-Event-ID``) and drops any id at or below it, so a reader sees
each event exactly once and in order, however often the runner's pod is replaced. While the runner
is away the reader receives heartbeats only.

Readers of a running run share one upstream connection per gateway replica (a ``RunFeed`` keeps
the recent events in memory); a reader whose position is older than the feed's memory, or who joins
an ended run, is relayed on its own connection.
"""

import asyncio
import bisect
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from aiohttp import web

from agentrun_common.sse import HEARTBEAT, SSE_HEADERS, SseEvent, SseParser, SseTooLargeError
from agentrun_gateway import metrics
from agentrun_gateway.auth import SingleFlight, StreamTokens, TtlCache
from agentrun_gateway.kube import KubeApi, KubeApiError, RunInfo
from agentrun_gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

FINISHED = "finished"


def final_event(payload: dict[str, Any]) -> SseEvent:
    """The gateway's own closing event, when the run ended without the runner's ``finished`` reaching us.
    It has no id, so a client's Last-Event-ID stays on the runner's last event."""
    return SseEvent(event=FINISHED, data=json.dumps(payload, separators=(",", ":")))


class EventArchive(Protocol):
    """Where an ended run's events are read once its runner is gone (the runner's checkpoint)."""

    async def events_after(self, namespace: str, run: str, run_uid: str, last_id: int) -> list[SseEvent] | None:
        """Events with an id above ``last_id``, oldest first, of the run with uid ``run_uid`` only; None when this
        archive holds nothing for that run."""
        ...


class ClientGoneError(Exception):
    """The reader disconnected."""


class EventSink(Protocol):
    """Where relayed events go: one reader, or a feed shared by readers."""

    @property
    def prepared(self) -> bool:
        """Whether anything (headers included) has been sent."""
        ...

    async def open(self) -> None: ...

    async def deliver(self, event: SseEvent) -> None: ...


class ClientStream:
    """The reader's side: writes are serialized, and a heartbeat goes out whenever nothing else did."""

    def __init__(self, request: web.Request, heartbeat_seconds: float) -> None:
        self._request = request
        self._heartbeat = heartbeat_seconds
        self._lock = asyncio.Lock()
        self._last_write = time.monotonic()
        self._heartbeats: asyncio.Task[None] | None = None
        self.response = web.StreamResponse(status=200, headers=SSE_HEADERS)
        self.prepared = False
        self.gone = False

    async def open(self) -> None:
        if self.prepared:
            return
        self.prepared = True
        try:
            await self.response.prepare(self._request)
        except (ConnectionError, aiohttp.ClientConnectionResetError) as error:
            self.gone = True
            raise ClientGoneError from error
        self._heartbeats = asyncio.create_task(self._beat())

    async def deliver(self, event: SseEvent) -> None:
        await self.open()
        await self.send(event.encode())
        metrics.EVENTS_RELAYED.inc()

    async def send(self, chunk: bytes) -> None:
        if self.gone:
            raise ClientGoneError
        async with self._lock:
            try:
                await self.response.write(chunk)
            except (ConnectionError, aiohttp.ClientConnectionResetError) as error:
                self.gone = True
                raise ClientGoneError from error
            self._last_write = time.monotonic()

    async def _beat(self) -> None:
        while not self.gone:
            await asyncio.sleep(max(self._last_write + self._heartbeat - time.monotonic(), 0.0))
            if time.monotonic() - self._last_write >= self._heartbeat:
                try:
                    await self.send(HEARTBEAT)
                except ClientGoneError:
                    return

    async def close(self) -> None:
        if self._heartbeats is not None:
            self._heartbeats.cancel()
            await asyncio.gather(self._heartbeats, return_exceptions=True)


@dataclass
class _Attach:
    last_id: int
    finished: bool = False
    relayed: int = 0


class RunDirectory:
    """AgentRun lookups (phase, heartbeat), cached briefly so many readers do not multiply API calls."""

    def __init__(self, kube: KubeApi, ttl: float) -> None:
        self._kube = kube
        self._cache: TtlCache[tuple[str, str], RunInfo] = TtlCache(ttl)
        self._flights: SingleFlight[tuple[str, str], RunInfo | None] = SingleFlight()

    async def get(self, namespace: str, run: str) -> RunInfo | None:
        key = (namespace, run)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        info = await self._flights.run(key, lambda: self._kube.run_info(namespace, run))
        if info is not None:
            self._cache.put(key, info)
        return info


class RunFeed:
    """One run's events as relayed by one upstream connection, kept in memory for the readers sharing it."""

    def __init__(self, start_id: int, memory_events: int) -> None:
        self._memory = memory_events
        self._events: list[SseEvent] = []
        self._ids: list[int] = []
        self._changed = asyncio.Condition()
        self.last_id = start_id
        self.final: SseEvent | None = None  # the gateway's own closing event, when the run ended without `finished`
        self.done = False
        self.readers = 0
        self.prepared = True
        self.pump: asyncio.Task[None] | None = None  # the upstream relay filling this feed

    @property
    def oldest_position(self) -> int:
        """The oldest reader position this feed can continue from without a gap."""
        return self._ids[0] - 1 if self._ids else self.last_id

    async def open(self) -> None:
        return None

    async def deliver(self, event: SseEvent) -> None:
        sequence = event.sequence
        if sequence is None:
            self.final = event
        else:
            self._events.append(event)
            self._ids.append(sequence)
            self.last_id = sequence
            if len(self._events) > self._memory:
                del self._events[0], self._ids[0]
        async with self._changed:
            self._changed.notify_all()

    async def close(self) -> None:
        self.done = True
        async with self._changed:
            self._changed.notify_all()

    def _beyond(self, position: int) -> Callable[[], bool]:
        return lambda: self.last_id > position or self.done

    async def read(self, position: int, client: EventSink) -> tuple[int, bool]:
        """Deliver to ``client`` from ``position`` on. Returns the new position and whether the stream is
        complete; False means the reader fell behind the feed's memory and must continue on its own."""
        while True:
            if position < self.oldest_position:
                return position, False
            backlog = self._events[bisect.bisect_right(self._ids, position) :]  # a copy: the feed moves on
            for event in backlog:
                await client.deliver(event)
                position = event.sequence or position
                if event.event == FINISHED:
                    return position, True
            if self.done and position >= self.last_id:
                if self.final is not None:
                    await client.deliver(self.final)
                return position, True
            async with self._changed:
                await self._changed.wait_for(self._beyond(position))


class Relay:
    def __init__(
        self,
        settings: GatewaySettings,
        upstream: aiohttp.ClientSession,
        runs: RunDirectory,
        tokens: StreamTokens,
        archive: EventArchive | None,
    ) -> None:
        self._settings = settings
        self._upstream = upstream
        self._runs = runs
        self._tokens = tokens
        self._archive = archive
        self._feeds: dict[tuple[str, str], RunFeed] = {}
        self._pumps: set[asyncio.Task[None]] = set()

    async def serve(self, namespace: str, run: str, last_id: int, client: ClientStream, info: RunInfo) -> None:
        """Relay the run to one reader: through the run's shared feed when its position allows."""
        key = (namespace, run)
        feed = self._feeds.get(key)
        if info.ended or (feed is not None and last_id < feed.oldest_position):
            await self.follow(namespace, run, last_id, client, info)
            return
        if feed is None:
            feed = self._start_feed(key, last_id, info)
        feed.readers += 1
        try:
            await client.open()
            position, complete = await feed.read(last_id, client)
            if not complete:
                await self.follow(namespace, run, position, client, info)
        except ClientGoneError:
            return
        finally:
            feed.readers -= 1
            if feed.readers == 0 and self._feeds.get(key) is feed:
                del self._feeds[key]  # the last reader left: stop reading the runner
                if feed.pump is not None:
                    feed.pump.cancel()

    def _start_feed(self, key: tuple[str, str], start_id: int, info: RunInfo) -> RunFeed:
        feed = RunFeed(start_id, self._settings.feed_memory_events)
        self._feeds[key] = feed

        async def pump() -> None:
            try:
                await self.follow(key[0], key[1], start_id, feed, info)
            except KubeApiError as error:
                log.warning("feed of %s/%s stopped: %s", key[0], key[1], error)  # readers reconnect
            finally:
                if self._feeds.get(key) is feed:
                    del self._feeds[key]
                await feed.close()

        task = asyncio.create_task(pump())
        feed.pump = task
        self._pumps.add(task)
        task.add_done_callback(self._pumps.discard)
        return feed

    async def close(self) -> None:
        """Stop every feed's upstream connection (on shutdown)."""
        for task in list(self._pumps):
            task.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)

    async def follow(self, namespace: str, run: str, last_id: int, client: EventSink, info: RunInfo) -> None:
        """Relay until the run's ``finished`` event, the end of the run, or the reader leaving.

        A reader that reconnects after it saw the end gets nothing (the handler answers 204, which
        tells an EventSource to stop reconnecting)."""
        settings = self._settings
        delay = settings.reattach_initial_delay_seconds
        if not info.ended:
            await client.open()
        try:
            while True:
                idle = (
                    settings.ended_drain_seconds if info.ended else settings.upstream_idle_for(info.heartbeat_seconds)
                )
                attach = await self._attach(namespace, run, last_id, client, idle)
                last_id = attach.last_id
                if attach.finished:
                    return
                if info.ended:
                    await self._finish_ended(namespace, run, last_id, client, info)
                    return
                if attach.relayed:
                    delay = settings.reattach_initial_delay_seconds
                metrics.REATTACHES.inc()
                await asyncio.sleep(delay)
                delay = min(delay * 2, settings.reattach_max_delay_seconds)
                refreshed = await self._runs.get(namespace, run)
                if refreshed is None:
                    await client.deliver(final_event({"reason": "RunDeleted"}))
                    return
                info = refreshed
        except ClientGoneError:
            return

    async def _attach(self, namespace: str, run: str, last_id: int, client: EventSink, idle: float) -> _Attach:
        result = _Attach(last_id)
        token = await self._tokens.get(namespace, run)
        if token is None:
            return result
        url = self._settings.upstream_url.format(namespace=namespace, name=run)
        headers = {"Authorization": f"Bearer {token}", "Last-Event-ID": str(last_id), "Accept": "text/event-stream"}
        timeout = aiohttp.ClientTimeout(
            total=None, connect=self._settings.upstream_connect_timeout_seconds, sock_read=None
        )
        try:
            async with self._upstream.get(url, headers=headers, timeout=timeout) as response:
                if response.status == 401:
                    self._tokens.forget(namespace, run)
                if response.status != 200:
                    log.info("runner of %s/%s answered HTTP %d; re-attaching", namespace, run, response.status)
                    return result
                parser = SseParser(self._settings.upstream_max_event_bytes)
                while True:
                    chunk = await asyncio.wait_for(response.content.readany(), idle)
                    if not chunk:
                        return result  # the runner closed the stream (pod stopping, reader queue overflow)
                    too_large: SseTooLargeError | None = None
                    try:
                        events = parser.feed(chunk)
                    except SseTooLargeError as error:
                        events, too_large = error.complete, error
                    for event in events:
                        sequence = event.sequence
                        if sequence is None or sequence <= result.last_id:
                            continue  # already relayed: a restarted runner replays from its checkpoint
                        await client.deliver(event)
                        result.last_id = sequence
                        result.relayed += 1
                        if event.event == FINISHED:
                            result.finished = True
                            return result
                    if too_large is not None:
                        # Leaving the response unread closes this connection; the caller re-attaches after
                        # its backoff, so a runner stuck on such an event costs at most one buffer at a time.
                        metrics.UPSTREAM_TOO_LARGE.inc()
                        log.warning(
                            "runner of %s/%s sent %s after event %d (the limit is "
                            "AGENTRUN_GATEWAY_UPSTREAM_MAX_EVENT_BYTES); dropping the connection and re-attaching",
                            namespace,
                            run,
                            too_large,
                            result.last_id,
                        )
                        return result
        except TimeoutError:
            log.info("runner of %s/%s silent for %.0f s; re-attaching", namespace, run, idle)
        except (aiohttp.ClientError, OSError) as error:
            log.debug("runner of %s/%s unreachable: %s", namespace, run, error)
        return result

    async def _finish_ended(self, namespace: str, run: str, last_id: int, client: EventSink, info: RunInfo) -> None:
        """The run ended and its runner has nothing more: replay from the archive, then close."""
        replay = "complete"
        events = await self._archive.events_after(namespace, run, info.uid, last_id) if self._archive else None
        if events is None:
            replay = "unavailable" if last_id == 0 else "partial"
        for event in events or ():
            sequence = event.sequence
            if sequence is None or sequence <= last_id:
                continue
            await client.deliver(event)
            last_id = sequence
            if event.event == FINISHED:
                return
        if not client.prepared and last_id > 0:
            return  # a reader reconnecting after the end: nothing new (the handler answers 204)
        phase = info.phase.value if info.phase else None
        await client.deliver(final_event({"phase": phase, "reason": "RunEnded", "replay": replay}))
