"""A stand-in for the runner's SSE stream, for the stream gateway's tests and benchmark.

It behaves as the runner's stream does (contract in the brief): ``GET /events`` with a bearer token,
events with dense integer ids from 1, replay after ``Last-Event-ID``, heartbeat comments, and the
stream ends after the ``finished`` event. Its event log outlives ``kill()`` the way the runner's log
outlives a pod (it is part of the checkpoint), and ``start()`` serves again on the same port, as a
replacement pod behind the same Service would.
"""

import asyncio
import contextlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from agentrun_common.sse import HEARTBEAT, SSE_HEADERS, encode_event


@dataclass(frozen=True)
class LoggedEvent:
    id: int
    type: str
    data: dict[str, Any]
    emitted_at: float = field(compare=False, default=0.0)  # time.monotonic() when emitted, for lag measurements

    def encode(self) -> bytes:
        return encode_event(self.type, json.dumps(self.data), id=self.id)


class FakeStreamRunner:
    def __init__(self, token: str, heartbeat_seconds: float = 0.5) -> None:
        self.token = token
        self.heartbeat_seconds = heartbeat_seconds
        self.log: list[LoggedEvent] = []
        self.port = 0
        self.connections = 0  # requests served, across restarts
        self.open_streams = 0  # streams being served right now
        # When set, the stream starts after this id whatever Last-Event-ID says, as a replacement pod
        # that replays from its last checkpoint would: the reader must drop what it already has.
        self.replay_from: int | None = None
        self._runner: web.AppRunner | None = None
        self._changed = asyncio.Condition()

    @property
    def alive(self) -> bool:
        return self._runner is not None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/events", self._serve)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.05)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def kill(self) -> None:
        """Stop abruptly: open streams are cut mid-way, as when the runner's pod is killed."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def emit(self, type_: str, data: dict[str, Any]) -> LoggedEvent:
        event = LoggedEvent(len(self.log) + 1, type_, data, time.monotonic())
        self.log.append(event)
        async with self._changed:
            self._changed.notify_all()
        return event

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(presented.encode(), self.token.encode()):
            return web.json_response({"error": "bad token"}, status=401)
        self.connections += 1
        last_id = int(request.headers.get("Last-Event-ID") or 0)
        if self.replay_from is not None:
            last_id = min(last_id, self.replay_from)
        response = web.StreamResponse(headers=SSE_HEADERS)
        await response.prepare(request)
        self.open_streams += 1
        try:
            with contextlib.suppress(ConnectionError):  # the reader (the gateway) went away
                await self._stream(response, last_id)
        finally:
            self.open_streams -= 1
        return response

    def _beyond(self, last_id: int) -> Callable[[], bool]:
        return lambda: len(self.log) > last_id

    async def _stream(self, response: web.StreamResponse, last_id: int) -> None:
        while True:
            for event in self.log[last_id:]:
                await response.write(event.encode())
                last_id = event.id
                if event.type == "finished":
                    return
            async with self._changed:
                try:
                    await asyncio.wait_for(self._changed.wait_for(self._beyond(last_id)), self.heartbeat_seconds)
                except TimeoutError:
                    await response.write(HEARTBEAT)
