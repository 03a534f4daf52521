"""Server-Sent Events on the wire: parsing what a runner sends, and writing what a client reads."""

import json
from dataclasses import dataclass
from typing import Any

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


class SseParser:
    """Incremental parser: feed bytes as they arrive, get complete events back.

    Comment lines (heartbeats) produce no event but are reported, since any byte proves the runner alive.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._id: str | None = None
        self._event = "message"
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[SseEvent]:
        self._buffer += chunk
        events: list[SseEvent] = []
        while True:
            newline = self._buffer.find(b"\n")
            if newline < 0:
                return events
            raw, self._buffer = self._buffer[:newline], self._buffer[newline + 1 :]
            event = self._line(raw.rstrip(b"\r").decode("utf-8", errors="replace"))
            if event is not None:
                events.append(event)

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
