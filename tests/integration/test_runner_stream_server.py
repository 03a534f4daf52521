"""The SSE server on its own: auth, headers, replay, several readers, a slow reader cut off.

Real HTTP on loopback; events are read with httpx-sse, not a parser of our own.
"""

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from httpx_sse import ServerSentEvent, aconnect_sse

from agentrun_common.eventlog.events import EventType
from agentrun_runner.events import EventLog
from agentrun_runner.stream import StreamServer
from tests.harness.sse_client import dispatched_events

pytestmark = pytest.mark.integration

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def log() -> EventLog:
    return EventLog()


def publish(log: EventLog, type_: EventType, data: dict[str, Any]) -> None:
    """Emit an event and mark it checkpointed, as the agent does after a checkpoint write."""
    event = log.emit(type_, data)
    log.publish(event.id)


async def start(log: EventLog, queue_size: int = 64, heartbeat: float = 30.0, keep_alive: float = 50.0) -> StreamServer:
    server = StreamServer(
        log,
        token=TOKEN,
        heartbeat_seconds=heartbeat,
        client_queue_size=queue_size,
        host="127.0.0.1",
        port=0,
        keep_alive_seconds=keep_alive,
    )
    await server.start()
    return server


@pytest.fixture
async def server(log: EventLog) -> AsyncIterator[StreamServer]:
    server = await start(log)
    yield server
    await server.stop()


async def read(url: str, headers: dict[str, str], until: int | None = None) -> list[ServerSentEvent]:
    """Events until the stream ends, or until ``until`` events were read."""
    seen: list[ServerSentEvent] = []
    async with httpx.AsyncClient(timeout=10) as client, aconnect_sse(client, "GET", url, headers=headers) as source:
        async for event in dispatched_events(source):
            seen.append(event)
            if until is not None and len(seen) == until:
                break
    return seen


def url(server: StreamServer) -> str:
    return f"http://127.0.0.1:{server.port}/events"


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}, {"Authorization": TOKEN}]
)
async def test_requests_without_the_right_bearer_token_get_401(server: StreamServer, headers: dict[str, str]) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.get(url(server), headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert TOKEN not in response.text


async def test_stream_headers_and_events_with_monotonic_ids(server: StreamServer, log: EventLog) -> None:
    publish(log, "iteration", {"iteration": 1})
    publish(log, "tool_call", {"key": "u:1:0"})
    publish(log, "finished", {"outcome": "Succeeded"})
    async with httpx.AsyncClient() as client, client.stream("GET", url(server), headers=AUTH) as response:
        assert response.headers["Content-Type"] == "text/event-stream"
        assert response.headers["Cache-Control"] == "no-cache"
        assert response.headers["X-Accel-Buffering"] == "no"
    events = await read(url(server), AUTH)
    assert [(e.id, e.event) for e in events] == [("1", "iteration"), ("2", "tool_call"), ("3", "finished")]
    assert events[2].json() == {"outcome": "Succeeded"}


async def test_reconnect_with_last_event_id_replays_what_came_after(server: StreamServer, log: EventLog) -> None:
    for i in range(10):
        publish(log, "token", {"text": str(i)})
    first = await read(url(server), AUTH, until=4)
    assert first[-1].id == "4"

    async def later() -> None:
        await asyncio.sleep(0.1)
        publish(log, "finished", {"outcome": "Succeeded"})

    emitter = asyncio.create_task(later())
    rest = await read(url(server), {**AUTH, "Last-Event-ID": first[-1].id})
    await emitter
    assert [int(e.id) for e in rest] == list(range(5, 12))
    assert [e.json()["text"] for e in rest[:-1]] == [str(i) for i in range(4, 10)]
    assert rest[-1].event == "finished"


async def test_several_readers_follow_live_at_once(server: StreamServer, log: EventLog) -> None:
    readers = [asyncio.create_task(read(url(server), AUTH)) for _ in range(3)]
    while server.readers < 3:
        await asyncio.sleep(0.01)
    for i in range(20):
        publish(log, "token", {"text": str(i)})
        await asyncio.sleep(0)
    publish(log, "finished", {})
    results = await asyncio.gather(*readers)
    for events in results:
        assert [int(e.id) for e in events] == list(range(1, 22))


async def test_a_reader_too_far_behind_is_cut_off_and_resumes(log: EventLog) -> None:
    server = await start(log, queue_size=5)
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            async with aconnect_sse(client, "GET", url(server), headers=AUTH) as source:
                while server.readers < 1:
                    await asyncio.sleep(0.01)
                # The agent emits a burst without waiting for anyone: more than the reader's queue.
                for i in range(50):
                    publish(log, "token", {"text": str(i)})
                got = [e async for e in dispatched_events(source)]
            assert len(got) < 50, "the stream ended before the reader saw everything"
            assert server.readers == 0
            publish(log, "finished", {})
            rest = await read(url(server), {**AUTH, "Last-Event-ID": got[-1].id if got else "0"})
        ids = [int(e.id) for e in got + rest]
        assert ids == list(range(1, 52))
    finally:
        await server.stop()


async def test_idle_stream_gets_heartbeat_comments(log: EventLog) -> None:
    server = await start(log, heartbeat=1.0)
    try:
        async with httpx.AsyncClient(timeout=10) as client, client.stream("GET", url(server), headers=AUTH) as response:
            lines = response.aiter_lines()
            assert await asyncio.wait_for(anext(lines), timeout=5) == ": heartbeat"
    finally:
        await server.stop()


async def test_bad_last_event_id_is_a_400(server: StreamServer) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.get(url(server), headers={**AUTH, "Last-Event-ID": "abc"})
    assert response.status_code == 400
    assert "Last-Event-ID" in response.text


async def test_events_not_yet_written_to_a_checkpoint_are_held_back(server: StreamServer, log: EventLog) -> None:
    publish(log, "iteration", {"iteration": 1})
    log.emit("token", {"text": "held"})
    log.emit("token", {"text": "held too"})
    assert [int(e.id) for e in await read(url(server), AUTH, until=1)] == [1]
    reader = asyncio.create_task(read(url(server), {**AUTH, "Last-Event-ID": "1"}))
    while server.readers < 1:
        await asyncio.sleep(0.01)
    publish(log, "finished", {})
    assert [e.json().get("text") for e in await reader] == ["held", "held too", None]


async def test_an_idle_keep_alive_connection_is_closed_after_the_configured_keep_alive(log: EventLog) -> None:
    server = await start(log, keep_alive=0.5)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        # A refused request (no token) leaves a reusable keep-alive connection behind.
        writer.write(b"GET /events HTTP/1.1\r\nHost: runner\r\n\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 401")
        length = int(
            next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
        )
        await reader.readexactly(length)
        # The server, not the client, ends the idle connection once the keep-alive has passed.
        assert await asyncio.wait_for(reader.read(1), 10) == b""
        writer.close()
    finally:
        await server.stop()
