"""The tests' SSE reader drops what a browser would not dispatch: a heartbeat after an event with an id."""

import httpx
import pytest
from httpx_sse import aconnect_sse

from tests.harness.sse_client import dispatched_events

pytestmark = pytest.mark.unit

STREAM = (
    b": heartbeat\n\n"
    b'id: 1\nevent: iteration\ndata: {"n": 1}\n\n'
    b": heartbeat\n\n"
    b"id: 2\nevent: finished\ndata: {}\n\n"
    b": heartbeat\n\n"
)


def serve(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, headers={"Content-Type": "text/event-stream"}, content=STREAM)


async def test_heartbeats_between_events_with_ids_are_not_events() -> None:
    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(serve)) as client,
        aconnect_sse(client, "GET", "http://runner.test/events") as source,
    ):
        events = [(event.id, event.event, event.data) async for event in dispatched_events(source)]
    assert events == [("1", "iteration", '{"n": 1}'), ("2", "finished", "{}")]


async def test_the_library_alone_would_dispatch_them() -> None:
    # Why the helper exists: should httpx-sse stop dispatching these, the helper can go.
    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(serve)) as client,
        aconnect_sse(client, "GET", "http://runner.test/events") as source,
    ):
        events = [(event.id, event.data) async for event in source.aiter_sse()]
    assert ("1", "") in events
