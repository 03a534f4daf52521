"""Read Server-Sent Events as a browser's EventSource dispatches them.

httpx-sse (0.4.3) dispatches an empty event for a comment block, such as a heartbeat, that follows an
event with an id: it counts the sticky last event id as content (httpx-sse issue #35). The WHATWG
"dispatch the event" steps drop every block whose data is empty, and so does this reader. A test
that went by httpx-sse alone would fail whenever a heartbeat landed between two events.
"""

from collections.abc import AsyncIterator

from httpx_sse import EventSource, ServerSentEvent


async def dispatched_events(source: EventSource) -> AsyncIterator[ServerSentEvent]:
    """The events of ``source`` that an EventSource would dispatch, in order."""
    async for event in source.aiter_sse():
        if event.data:
            yield event
