"""A runner-like Server-Sent Events endpoint on 127.0.0.1, for testing stream clients over real HTTP.

It numbers its events 1..n, replays from the request's Last-Event-ID, sends heartbeat comments, and can drop
the first connection part-way, as a runner pod replaced mid-run would.
"""

import http.server
import threading
from types import TracebackType
from typing import Any

from agentrun_common.sse import HEARTBEAT, SSE_HEADERS, encode_event, encode_retry


class SseServer:
    """Serve `events` ((type, data) pairs) at any path; `requests` records each request's headers."""

    def __init__(
        self,
        events: list[tuple[str, str]],
        *,
        drop_first_after: int | None = None,
        status: int = 200,
        retry_ms: int | None = None,
    ) -> None:
        self.events = events
        self.drop_first_after = drop_first_after
        self.status = status
        self.retry_ms = retry_ms
        self.requests: list[dict[str, str]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(dict(self.headers.items()))
                self.send_response(server.status)
                if server.status != 200:
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                for name, value in SSE_HEADERS.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(server.body(self.headers.get("Last-Event-ID"), first=len(server.requests) == 1))
                self.close_connection = True

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: tests assert on what the client saw."""

        self._http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._http.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._http.server_address[1]}/events"

    def body(self, last_event_id: str | None, *, first: bool) -> bytes:
        after = int(last_event_id or 0)
        end = len(self.events)
        if first and self.drop_first_after is not None:
            end = min(end, self.drop_first_after)
        blocks = [encode_retry(self.retry_ms)] if self.retry_ms is not None else []
        blocks.append(HEARTBEAT)
        for number in range(after + 1, end + 1):
            event, data = self.events[number - 1]
            blocks.append(encode_event(event, data, id=number))
        return b"".join(blocks)

    def __enter__(self) -> "SseServer":
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._http.shutdown()
        self._http.server_close()
