"""The run's Server-Sent Events stream: GET /events on the runner's stream port.

Each reader gets the events after its ``Last-Event-ID`` from the log, then live events through a
bounded queue; a reader that falls behind the queue is disconnected (and resumes with
``Last-Event-ID``), so no reader ever slows the agent. Heartbeat comments keep idle connections
open through proxies. After the run's ``finished`` event a reader's stream ends.
"""

import asyncio
import hmac
import logging

from aiohttp import web

from agentrun_common.eventlog.events import Event, format_event
from agentrun_common.sse import HEARTBEAT, SSE_HEADERS
from agentrun_runner.events import EventLog

log = logging.getLogger(__name__)


class StreamServer:
    def __init__(
        self,
        events: EventLog,
        *,
        token: str,
        heartbeat_seconds: float,
        client_queue_size: int,
        host: str,
        port: int,
        keep_alive_seconds: float,
    ) -> None:
        if not token:
            raise ValueError("the stream needs a token (AGENTRUN_STREAM_TOKEN)")
        self._events = events
        self._token = token.encode()
        self._heartbeat = heartbeat_seconds
        self._queue_size = client_queue_size
        self._host = host
        self._port = port
        self._keep_alive = keep_alive_seconds
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()
        self.port = port
        self.readers = 0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/events", self._serve)
        # Readers end at `finished`; a short shutdown timeout cuts the ones still waiting for it.
        self._runner = web.AppRunner(
            app, handle_signals=False, access_log=None, shutdown_timeout=1.0, keepalive_timeout=self._keep_alive
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        self.port = self._runner.addresses[0][1]  # the real port when asked for port 0

    async def stop(self) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        # compare_digest takes the same time wherever the first difference is.
        return scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), self._token)

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return web.json_response(
                {"error": "missing or wrong bearer token"}, status=401, headers={"WWW-Authenticate": "Bearer"}
            )
        raw_last = request.headers.get("Last-Event-ID", request.query.get("lastEventId", "0")) or "0"
        try:
            last_id = int(raw_last)
        except ValueError:
            return web.json_response({"error": f"Last-Event-ID {raw_last!r} is not an event id"}, status=400)

        response = web.StreamResponse(status=200, headers=SSE_HEADERS)
        await response.prepare(request)
        # Subscribe before reading the backlog so nothing emitted in between is missed.
        subscription = self._events.subscribe(self._queue_size)
        self.readers += 1
        try:
            for event in self._events.after(last_id):
                await response.write(format_event(event))
                last_id = event.id
                if event.type == "finished":
                    return response
            await self._follow(response, subscription.queue, subscription.overflowed, last_id)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            subscription.close()
            self.readers -= 1
        return response

    async def _follow(
        self, response: web.StreamResponse, queue: asyncio.Queue[Event], overflowed: asyncio.Event, last_id: int
    ) -> None:
        while not self._closing.is_set():
            if overflowed.is_set():
                log.info("stream reader fell %d events behind; disconnecting it", self._queue_size)
                return
            try:
                event = await asyncio.wait_for(queue.get(), timeout=self._heartbeat)
            except TimeoutError:
                await response.write(HEARTBEAT)
                continue
            if event.id <= last_id:
                continue  # already sent from the backlog
            await response.write(format_event(event))
            last_id = event.id
            if event.type == "finished":
                return
