"""Server-Sent Events on the wire: the one encoder and the one parser of the runner, the gateway and the plugin.

The format is the event-stream of the HTML standard: ``field: value`` lines, an empty line ends an event,
lines starting with ``:`` are comments (heartbeats), lines end in CRLF, LF or CR. The parser is incremental
(feed bytes as they arrive) and bounded: no sender can make a reader buffer without end.
"""

import re
from dataclasses import dataclass
from typing import Final

# The default bound on one line or one event a reader buffers. A runner writes each event's data as one JSON
# line; its largest events are tool calls carrying a model's arguments, far below this. What a sender sends
# past it is a fault, never a reason to grow memory.
DEFAULT_MAX_EVENT_BYTES: Final = 4 * 1024 * 1024

SSE_HEADERS: Final = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx: do not buffer this response
}
DEFAULT_EVENT_TYPE: Final = "message"

_LINE_END = re.compile(rb"\r\n|\r|\n")
_BYTE_ORDER_MARK: Final = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class SseEvent:
    """One event: its type, its data (lines joined by LF), and the id it carried, if any."""

    event: str = DEFAULT_EVENT_TYPE
    data: str = ""
    id: str | None = None

    @property
    def sequence(self) -> int | None:
        """The id as a non-negative integer, the form every event id of this project has; None otherwise."""
        if self.id is None or not self.id.isascii() or not self.id.isdigit():
            return None
        return int(self.id)

    def encode(self, *, retry_ms: int | None = None) -> bytes:
        """The event on the wire; ``retry_ms`` also tells the reader how long to wait before reconnecting."""
        return encode_event(self.event, self.data, id=self.id, retry_ms=retry_ms)


def encode_event(event: str, data: str, *, id: str | int | None = None, retry_ms: int | None = None) -> bytes:
    """One event on the wire. Data may hold any line ends (each line is its own ``data:`` field); the type
    and id are single lines, and an id never holds NUL (a reader would ignore it)."""
    event_id = None if id is None else str(id)
    for name, value in (("event", event), ("id", event_id or "")):
        if _LINE_END.search(value.encode()) or "\0" in value:
            raise ValueError(f"an SSE {name} must be one line without NUL, got {value!r}")
    if retry_ms is not None and retry_ms < 0:
        raise ValueError(f"an SSE retry is a non-negative number of milliseconds, got {retry_ms}")
    lines = [] if event_id is None else [f"id: {event_id}"]
    if event != DEFAULT_EVENT_TYPE:
        lines.append(f"event: {event}")
    if retry_ms is not None:
        lines.append(f"retry: {retry_ms}")
    lines.extend(f"data: {line}" for line in _lines(data))
    return ("\n".join(lines) + "\n\n").encode()


def _lines(text: str) -> list[str]:
    """The lines of a text, split on any end of line the event-stream format knows (CRLF, LF, CR)."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def encode_comment(text: str) -> bytes:
    """A comment block (``: text``): readers dispatch nothing, but every byte keeps idle timers from firing."""
    return "".join(f": {line}\n" for line in _lines(text)).encode() + b"\n"


def encode_retry(retry_ms: int) -> bytes:
    """A block that only tells the reader how many milliseconds to wait before reconnecting."""
    if retry_ms < 0:
        raise ValueError(f"an SSE retry is a non-negative number of milliseconds, got {retry_ms}")
    return f"retry: {retry_ms}\n\n".encode()


HEARTBEAT: Final = encode_comment("heartbeat")


class SseTooLargeError(ValueError):
    """A line or an event passed the parser's limit. ``complete`` holds the events completed before it
    in the same chunk, which are good to use."""

    def __init__(self, limit: int, complete: list[SseEvent]) -> None:
        super().__init__(f"a line or event of more than {limit} bytes")
        self.limit = limit
        self.complete = complete


class SseParser:
    """Incremental parser: feed bytes as they arrive, get complete events back.

    As the HTML standard dispatches: an event is dispatched only when it had a ``data`` field; its ``id`` is
    the id field of that event (``last_event_id`` keeps the last one seen, for a reconnect's Last-Event-ID);
    ``retry`` sets ``retry_ms``; comments and unknown fields produce nothing. Memory is bounded by
    ``max_event_bytes``: an unfinished line, or the field lines of an event not yet dispatched, that grow past
    it raise `SseTooLargeError`, and the parser is then spent.
    """

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        if max_event_bytes <= 0:
            raise ValueError(f"max_event_bytes must be a positive number of bytes, got {max_event_bytes}")
        self.max_event_bytes = max_event_bytes
        self.last_event_id: str | None = None
        self.retry_ms: int | None = None
        self._pending = bytearray()  # the start of a line whose end has not arrived
        self._started = False  # whether the stream's first bytes (and a byte order mark there) were seen
        self._event_bytes = 0  # bytes of the field lines of the event being assembled
        self._id: str | None = None
        self._event = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[SseEvent]:
        events: list[SseEvent] = []
        # What is pending holds no line end but perhaps a final CR: search only from there on.
        searched = len(self._pending) - 1 if self._pending.endswith(b"\r") else len(self._pending)
        self._pending += chunk
        if not self._started:
            if len(self._pending) < len(_BYTE_ORDER_MARK) and _BYTE_ORDER_MARK.startswith(bytes(self._pending)):
                return events
            self._started = True
            if self._pending.startswith(_BYTE_ORDER_MARK):
                del self._pending[: len(_BYTE_ORDER_MARK)]
                searched = 0
        line_start = 0
        for line_end, next_start in self._line_ends(max(searched, 0)):
            raw = bytes(self._pending[line_start:line_end])
            line_start = next_start
            if raw and not raw.startswith(b":"):  # comments are not kept, so they do not count
                self._event_bytes += len(raw) + 1
                if self._event_bytes > self.max_event_bytes:
                    raise self._too_large(events)
            event = self._line(raw.decode("utf-8", errors="replace"))
            if event is not None:
                events.append(event)
        del self._pending[:line_start]
        if self._event_bytes + len(self._pending) > self.max_event_bytes:
            raise self._too_large(events)
        return events

    def _line_ends(self, searched: int) -> list[tuple[int, int]]:
        """Where each complete line from ``searched`` on ends, and where the next begins."""
        pending = self._pending
        if pending.find(b"\r", searched) < 0:  # LF only, as every sender here writes: the fast path
            ends = []
            newline = pending.find(b"\n", searched)
            while newline >= 0:
                ends.append((newline, newline + 1))
                newline = pending.find(b"\n", newline + 1)
            return ends
        ends = [(end.start(), end.end()) for end in _LINE_END.finditer(pending, searched)]
        if ends and ends[-1][0] == len(pending) - 1 and pending.endswith(b"\r"):
            ends.pop()  # a CR last in the chunk may be the first half of a CRLF: decide once more bytes are here
        return ends

    def _too_large(self, complete: list[SseEvent]) -> SseTooLargeError:
        self._pending.clear()
        self._data = []
        return SseTooLargeError(self.max_event_bytes, complete)

    def _line(self, line: str) -> SseEvent | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "id" and "\0" not in value:
            self._id = self.last_event_id = value
        elif name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry_ms = int(value)
        return None

    def _dispatch(self) -> SseEvent | None:
        self._event_bytes = 0
        event = None
        if self._data:
            event = SseEvent(event=self._event or DEFAULT_EVENT_TYPE, data="\n".join(self._data), id=self._id)
        self._id, self._event, self._data = None, "", []
        return event
