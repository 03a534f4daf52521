"""Server-Sent Events on the wire: parsing what a runner sends, and writing what a client reads."""

import json
from dataclasses import dataclass
from typing import Any

# The default bound on one line or one event read from a runner (AGENTRUN_GATEWAY_UPSTREAM_MAX_EVENT_BYTES).
# A runner writes each event's data as one JSON line; its largest events are tool calls carrying a model's
# arguments, far below this. What a runner sends past it is a fault, never a reason to grow memory.
DEFAULT_MAX_EVENT_BYTES = 4 * 1024 * 1024

SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx: do not buffer this response
}
HEARTBEAT = b": heartbeat\n\n"


@dataclass(frozen=True)
class SseEvent:
    id: int | None
    event: str
    data: str

    def encode(self) -> bytes:
        lines = [] if self.id is None else [f"id: {self.id}"]
        lines.append(f"event: {self.event}")
        lines.extend(f"data: {line}" for line in self.data.split("\n"))
        return ("\n".join(lines) + "\n\n").encode()


def final_event(payload: dict[str, Any]) -> SseEvent:
    """The gateway's own closing event, when the run ended without the runner's ``finished`` reaching us.
    It has no id, so a client's Last-Event-ID stays on the runner's last event."""
    return SseEvent(id=None, event="finished", data=json.dumps(payload, separators=(",", ":")))


class SseTooLargeError(ValueError):
    """A line or an event passed the parser's limit. ``complete`` holds the events completed before it
    in the same chunk, which are good to relay."""

    def __init__(self, limit: int, complete: list[SseEvent]) -> None:
        super().__init__(f"a line or event of more than {limit} bytes")
        self.limit = limit
        self.complete = complete


class SseParser:
    """Incremental parser: feed bytes as they arrive, get complete events back.

    Comment lines (heartbeats) produce no event but are reported, since any byte proves the runner alive.
    Memory is bounded by ``max_event_bytes``: an unfinished line, or the field lines of an event not yet
    dispatched, that grow past it raise `SseTooLargeError`; the parser is then spent.
    """

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._max_event_bytes = max_event_bytes
        self._pending = bytearray()  # the start of a line whose end has not arrived
        self._event_bytes = 0  # bytes of the field lines of the event being assembled
        self._id: str | None = None
        self._event = "message"
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[SseEvent]:
        events: list[SseEvent] = []
        searched = len(self._pending)  # the pending bytes hold no line end: search only what is new
        self._pending += chunk
        line_start = 0
        newline = self._pending.find(b"\n", searched)
        while newline >= 0:
            raw = bytes(self._pending[line_start:newline]).rstrip(b"\r")
            line_start = newline + 1
            newline = self._pending.find(b"\n", line_start)
            if raw and not raw.startswith(b":"):  # comments are not kept, so they do not count
                self._event_bytes += len(raw) + 1
                if self._event_bytes > self._max_event_bytes:
                    raise self._too_large(events)
            event = self._line(raw.decode("utf-8", errors="replace"))
            if event is not None:
                events.append(event)
        del self._pending[:line_start]
        if self._event_bytes + len(self._pending) > self._max_event_bytes:
            raise self._too_large(events)
        return events

    def _too_large(self, complete: list[SseEvent]) -> SseTooLargeError:
        self._pending.clear()
        self._data = []
        return SseTooLargeError(self._max_event_bytes, complete)

    def _line(self, line: str) -> SseEvent | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "id":
            self._id = value
        elif name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        return None  # "retry" and unknown fields are ignored, as the SSE spec says

    def _dispatch(self) -> SseEvent | None:
        self._event_bytes = 0
        if not self._data and self._id is None:
            self._event = "message"
            return None
        try:
            event_id = int(self._id) if self._id is not None else None
        except ValueError:
            event_id = None
        event = SseEvent(id=event_id, event=self._event, data="\n".join(self._data))
        self._id, self._event, self._data = None, "message", []
        return event
