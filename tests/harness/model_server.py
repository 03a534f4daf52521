"""A scripted OpenAI-compatible chat completions server for tests, benches and demos.

Real HTTP (aiohttp on 127.0.0.1, port 0 by default), so the client side is the real ``openai``
SDK. Each request to ``POST /v1/chat/completions`` is answered by a *script*: a function from the
request to a reply. Replies: ``Answer`` (text and/or tool calls, optionally slow), ``Failure``
(an HTTP error, optionally with Retry-After), ``Hang`` (never answers) and ``Page`` (any body with
any Content-Type, as a web server behind a wrong base URL would answer). Streaming requests
(``"stream": true``) get SSE chunks, with a usage chunk when ``stream_options.include_usage`` is set.
With ``refuses_max_tokens`` the server acts as a reasoning model: a request that caps its answer with
the deprecated ``max_tokens`` (instead of ``max_completion_tokens``) gets OpenAI's 400.

    async with ModelServer(by_turn([Answer(tool_calls=[call("list_files")]), Answer("done")])) as server:
        client = AsyncOpenAI(base_url=server.base_url, api_key="k")

Scripts that pick the reply by the conversation (``by_turn``) answer a repeated request the same
way, which is what a resumed runner needs; ``in_order`` picks by request count.

CLI: ``python -m tests.harness.model_server --port 0 --script research`` prints the base URL.
"""

import argparse
import asyncio
import contextlib
import dataclasses
import json
import signal
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

DEFAULT_MODEL = "scripted-model"
# What OpenAI's reasoning models answer to a request that sets max_tokens.
UNSUPPORTED_MAX_TOKENS = {
    "error": {
        "message": "Unsupported parameter: 'max_tokens' is not supported with this model. "
        "Use 'max_completion_tokens' instead.",
        "type": "invalid_request_error",
        "param": "max_tokens",
        "code": "unsupported_parameter",
    }
}


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


def call(name: str, **arguments: Any) -> ToolCall:
    return ToolCall(name, arguments)


@dataclass(frozen=True)
class Answer:
    content: str | None = None
    tool_calls: Sequence[ToolCall] = ()
    delay: float = 0.0  # seconds before the answer (or before the first chunk when streaming)
    chunk_delay: float = 0.0  # seconds between streamed chunks


@dataclass(frozen=True)
class Failure:
    status: int
    retry_after: str | None = None  # value of the Retry-After header
    message: str = "scripted failure"
    delay: float = 0.0


@dataclass(frozen=True)
class Hang:
    """Accept the request and never answer (until the server stops)."""


@dataclass(frozen=True)
class Page:
    """Answer with this body and Content-Type, whatever the request asked for (streaming or not)."""

    body: str
    content_type: str = "text/html; charset=utf-8"
    status: int = 200
    delay: float = 0.0


Reply = Answer | Failure | Hang | Page


@dataclass(frozen=True)
class ChatRequest:
    body: dict[str, Any]
    headers: dict[str, str]
    index: int  # 0-based count of requests before this one
    received_at: float  # the server's clock (time.monotonic() unless given another)
    size: int  # bytes of the request body
    raw: bytes = b""  # the request body as sent

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages", []))

    @property
    def turn(self) -> int:
        """Assistant messages already in the conversation: 0 for the first model call of a run."""
        return sum(1 for m in self.messages if m.get("role") == "assistant")


@dataclass(frozen=True)
class CallSpan:
    """One request's time in flight at the server: from arrival until its answer was sent, or until the
    client went away (hung up, timed out, was killed) before getting one."""

    started_at: float  # the server's clock, as ChatRequest.received_at
    ended_at: float
    answered: bool  # False: the client went away first (or the server stopped)
    request: ChatRequest | None  # None when the client went away before its body arrived


Script = Callable[[ChatRequest], Reply]


def in_order(replies: Sequence[Reply], *, then: Reply | None = None) -> Script:
    """The n-th request gets the n-th reply; past the end, ``then`` (default: the last reply)."""

    def script(request: ChatRequest) -> Reply:
        if request.index < len(replies):
            return replies[request.index]
        return then if then is not None else replies[-1]

    return script


def by_turn(replies: Sequence[Reply], *, then: Reply | None = None) -> Script:
    """Reply by the conversation's turn (assistant messages so far), so a repeated request gets the same answer."""

    def script(request: ChatRequest) -> Reply:
        if request.turn < len(replies):
            return replies[request.turn]
        return then if then is not None else replies[-1]

    return script


def research_script(fetch_urls: Sequence[str] = (), delay: float = 0.0) -> Script:
    """The demo agent: fetch sources (in parallel), take notes, write a report, answer."""
    turns: list[Reply] = [Answer(tool_calls=[call("list_files")], delay=delay)]
    if fetch_urls:
        turns.append(Answer(tool_calls=[call("http_fetch", url=url) for url in fetch_urls], delay=delay))
    turns += [
        Answer(
            content="Taking notes first.",
            tool_calls=[call("write_file", path="notes.md", content="# Notes\n- three vendors compared\n")],
            delay=delay,
        ),
        Answer(tool_calls=[call("read_file", path="notes.md")], delay=delay),
        Answer(
            tool_calls=[
                call("write_file", path="report.md", content="# Report\nVendor B is cheapest; vendor A is fastest.\n")
            ],
            delay=delay,
        ),
        Answer(content="The report is in report.md: vendor B is cheapest, vendor A is fastest.", delay=delay),
    ]
    return by_turn(turns)


def stepwise_script(steps: int = 10, delay: float = 0.0) -> Script:
    """An agent that answers at exactly its ``steps``-th model call (e.g. maxIterations, so PROGRESS
    reaches N/N): it lists its files, then alternately writes and reads back notes, writes a report, and
    answers. By turn, so a resumed runner gets the answers the lost pod would have had."""
    tool_turns: list[Reply] = [Answer(tool_calls=[call("list_files")], delay=delay)]
    for step in range(1, steps - 2):
        if step % 2:
            notes = "# Notes\n" + "".join(f"- finding {n}\n" for n in range(1, step // 2 + 2))
            tool_turns.append(Answer(tool_calls=[call("write_file", path="notes.md", content=notes)], delay=delay))
        else:
            tool_turns.append(Answer(tool_calls=[call("read_file", path="notes.md")], delay=delay))
    report = "# Report\nJobs run batch work to completion, retry failed pods, and clean up after a TTL.\n"
    tool_turns.append(Answer(tool_calls=[call("write_file", path="report.md", content=report)], delay=delay))
    answer = Answer(
        content="Three uses of Kubernetes Jobs: database migrations before a release; nightly batch reports; "
        "one-off data backfills that must finish even if a node fails.",
        delay=delay,
    )
    return by_turn([*tool_turns[: steps - 1], answer])


def paced(script: Script, delay_of: Callable[[ChatRequest], float]) -> Script:
    """``script``, with each answer's delay set by ``delay_of(request)``: calls of chosen lengths, for
    tests that need calls to overlap (or not) whatever the answers say."""

    def script_with_delays(request: ChatRequest) -> Reply:
        reply = script(request)
        return reply if isinstance(reply, Hang) else dataclasses.replace(reply, delay=delay_of(request))

    return script_with_delays


SCRIPTS: dict[str, Callable[[], Script]] = {
    "research": research_script,
    "stepwise": stepwise_script,
    "answer": lambda: by_turn([Answer("Done.")]),
    "forever-tools": lambda: by_turn([Answer(tool_calls=[call("list_files")])]),
}


def _usage(request: ChatRequest, completion_text: str) -> dict[str, int]:
    # Deterministic stand-in for tokenization: about four bytes of request a token.
    prompt = request.size // 4 + 1
    completion = len(completion_text) // 4 + 1
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def most_in_window(times: Sequence[float], seconds: float) -> int:
    """The most of ``times`` that fall in any half-open window ``[t, t + seconds)``: what a provider's
    "N requests per minute" limit counts."""
    ordered = sorted(times)
    most, first = 0, 0
    for last, at in enumerate(ordered):
        while ordered[first] <= at - seconds:
            first += 1
        most = max(most, last - first + 1)
    return most


class ModelServer:
    """The server; ``requests`` records every chat request in arrival order, ``spans`` every finished
    request's time in flight, and ``max_in_flight`` the most requests it was answering at once (what a
    throttle pool must bound). A request whose client goes away stops counting as in flight then, as
    at a provider: its handler is cancelled."""

    def __init__(
        self,
        script: Script,
        *,
        port: int = 0,
        model: str = DEFAULT_MODEL,
        clock: Callable[[], float] = time.monotonic,
        tls: ssl.SSLContext | None = None,
        refuses_max_tokens: bool = False,
    ) -> None:
        """``clock`` stamps arrivals and spans: the event loop's, for tests on a fast-forwarded loop (looptime)."""
        self.script = script
        self.refuses_max_tokens = refuses_max_tokens
        self._tls = tls  # serve https with this server context
        self.model = model
        self._clock = clock
        self.requests: list[ChatRequest] = []
        self.spans: list[CallSpan] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.handling_seconds: dict[int, float] = {}  # by request index
        self.cpu_marks: dict[int, tuple[float, float]] = {}  # by request index: (at arrival, at answer)
        self._port = port
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"{'https' if self._tls else 'http'}://127.0.0.1:{self.port}/v1"

    async def start(self) -> "ModelServer":
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(
            app, handle_signals=False, access_log=None, shutdown_timeout=0.5, handler_cancellation=True
        )
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self._port, ssl_context=self._tls).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> "ModelServer":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _chat(self, http: web.Request) -> web.StreamResponse:
        started_at = self._clock()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        request: ChatRequest | None = None
        answered = False
        try:
            raw = await http.read()
            request = ChatRequest(
                body=json.loads(raw),
                headers=dict(http.headers),
                index=len(self.requests),
                received_at=started_at,
                size=len(raw),
                raw=raw,
            )
            self.requests.append(request)
            response = await self._answer(http, request)
            answered = True
            return response
        finally:
            self.in_flight -= 1
            self.spans.append(CallSpan(started_at, self._clock(), answered, request))

    async def _answer(self, http: web.Request, request: ChatRequest) -> web.StreamResponse:
        received_at, received_cpu = time.monotonic(), time.process_time()
        try:
            return await self._reply(http, request)
        finally:
            self.handling_seconds[request.index] = time.monotonic() - received_at
            self.cpu_marks[request.index] = (received_cpu, time.process_time())

    async def _reply(self, http: web.Request, request: ChatRequest) -> web.StreamResponse:
        if self.refuses_max_tokens and "max_tokens" in request.body:
            return web.json_response(UNSUPPORTED_MAX_TOKENS, status=400)
        reply = self.script(request)
        if isinstance(reply, Hang):
            await self._stopping.wait()
            raise web.HTTPServiceUnavailable()
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if isinstance(reply, Page):
            return web.Response(
                status=reply.status, body=reply.body.encode(), headers={"Content-Type": reply.content_type}
            )
        if isinstance(reply, Failure):
            headers = {"Retry-After": reply.retry_after} if reply.retry_after is not None else {}
            error = {"error": {"message": reply.message, "type": "scripted", "code": str(reply.status)}}
            return web.json_response(error, status=reply.status, headers=headers)
        if request.body.get("stream"):
            return await self._stream(http, request, reply)
        return web.json_response(self._completion(request, reply))

    def _tool_calls(self, request: ChatRequest, reply: Answer) -> list[dict[str, Any]]:
        return [
            {
                "id": f"call_{request.turn}_{index}",
                "type": "function",
                "function": {"name": tc.name, "arguments": json.dumps(tc.arguments, sort_keys=True)},
            }
            for index, tc in enumerate(reply.tool_calls)
        ]

    def _completion(self, request: ChatRequest, reply: Answer) -> dict[str, Any]:
        calls = self._tool_calls(request, reply)
        message: dict[str, Any] = {"role": "assistant", "content": reply.content}
        if calls:
            message["tool_calls"] = calls
        text = (reply.content or "") + "".join(c["function"]["arguments"] for c in calls)
        return {
            "id": f"chatcmpl-{request.index}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if calls else "stop"}],
            "usage": _usage(request, text),
        }

    async def _stream(self, http: web.Request, request: ChatRequest, reply: Answer) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(http)
        base = {"id": f"chatcmpl-{request.index}", "object": "chat.completion.chunk", "created": 0, "model": self.model}

        async def send(delta: dict[str, Any], finish: str | None = None) -> None:
            chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            if reply.chunk_delay:
                await asyncio.sleep(reply.chunk_delay)

        await send({"role": "assistant", "content": ""})
        for word in (reply.content or "").split(" ") if reply.content else []:
            await send({"content": word + " "})
        calls = self._tool_calls(request, reply)
        for index, tool_call in enumerate(calls):
            function = tool_call["function"]
            await send(
                {
                    "tool_calls": [
                        {
                            "index": index,
                            "id": tool_call["id"],
                            "type": "function",
                            "function": {"name": function["name"], "arguments": ""},
                        }
                    ]
                }
            )
            arguments = function["arguments"]
            for start in range(0, len(arguments), 16):
                await send({"tool_calls": [{"index": index, "function": {"arguments": arguments[start : start + 16]}}]})
        await send({}, "tool_calls" if calls else "stop")
        if (request.body.get("stream_options") or {}).get("include_usage"):
            text = (reply.content or "") + "".join(c["function"]["arguments"] for c in calls)
            usage_chunk = {**base, "choices": [], "usage": _usage(request, text)}
            await response.write(f"data: {json.dumps(usage_chunk)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


async def _serve(port: int, script_name: str) -> None:
    server = await ModelServer(SCRIPTS[script_name](), port=port).start()
    print(server.base_url, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="Scripted OpenAI-compatible chat completions server.")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--script", choices=sorted(SCRIPTS), default="research", help="the scripted agent")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.port, args.script))


if __name__ == "__main__":
    main()
