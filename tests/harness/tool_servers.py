"""The far sides of MCP and HTTP tools, for tests: a third-party MCP server run as a real server, a
recording proxy in front of it that counts tools/call requests per idempotency key, and an HTTP service
that executes each Idempotency-Key once.

- ``EverythingServer``: the reference ``@modelcontextprotocol/server-everything`` (npm, installed by
  ``make mcp-servers`` under tests/mcp_servers), serving streamable HTTP on a loopback port.
- ``RecordingMCPProxy``: forwards every request to that server unchanged (streamed answers included)
  and records each tools/call: its key from ``_meta``, the ``Idempotency-Key`` header beside it, and the
  ``Authorization`` header. It can hold the first call of a tool for each run, so a test can kill the
  runner while the call is in flight.
- ``TicketService``: an internal HTTP API behind an HTTP tool; POST /queues/{queue}/tickets opens a
  ticket once per Idempotency-Key and answers a repeat with the first answer.
"""

import asyncio
import collections
import json
import os
import shutil
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiohttp
import pytest
from aiohttp import web

from agentrun_api.mcpserver import IDEMPOTENCY_META_KEY
from tests.harness.local_cluster import free_port
from tests.harness.loopback_http import LoopbackServer

REPO_ROOT = Path(__file__).resolve().parents[2]
EVERYTHING = REPO_ROOT / "tests/mcp_servers/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
_HOP_BY_HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}


def needs_everything_server() -> None:
    if shutil.which("node") is None:
        pytest.skip("needs Node.js to run @modelcontextprotocol/server-everything")
    if not EVERYTHING.exists():
        pytest.skip("@modelcontextprotocol/server-everything is not installed: run `make mcp-servers`")


class EverythingServer:
    """``node .../server-everything streamableHttp`` on a free loopback port."""

    def __init__(self) -> None:
        self.port = 0
        self._process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    async def __aenter__(self) -> Self:
        needs_everything_server()
        self.port = free_port()
        self._process = await asyncio.create_subprocess_exec(
            "node",
            str(EVERYTHING),
            "streamableHttp",
            env={**os.environ, "PORT": str(self.port)},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while loop.time() < deadline:
            if self._process.returncode is not None:
                raise RuntimeError(f"server-everything exited with {self._process.returncode}")
            try:
                _reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.1)
                continue
            writer.close()
            return self
        raise RuntimeError("server-everything did not listen within 30 s")

    async def __aexit__(self, *exc: object) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.terminate()
            await self._process.wait()


class RecordingMCPProxy(LoopbackServer):
    """Forwards ``/mcp`` to an MCP server and counts its tools/call requests per idempotency key."""

    def __init__(self, upstream: str, *, hold_first_call: dict[str, float] | None = None) -> None:
        self.upstream = upstream
        self.hold_first_call = hold_first_call or {}  # tool name -> seconds its first call of each run waits
        self.deliveries: collections.Counter[str] = collections.Counter()
        self.header_mismatches: list[tuple[str | None, str | None]] = []
        self.authorizations: set[str] = set()
        self.holding: set[str] = set()  # keys whose call is being held now: a kill then lands mid-call
        self.tools_of_key: dict[str, str] = {}
        self._held: set[tuple[str, str]] = set()
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def keys_of(self, uid: str) -> dict[str, int]:
        return {key: n for key, n in self.deliveries.items() if key.startswith(f"{uid}:")}

    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/mcp", self._forward)

    async def __aenter__(self) -> Self:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_read=None))
        return await super().__aenter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await super().__aexit__(exc_type, exc, tb)
        if self._session is not None:
            await self._session.close()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        body = await request.read()
        key = self._record(request, body)
        if key is not None:
            tool = self.tools_of_key[key]
            run = key.split(":", 1)[0]
            hold = self.hold_first_call.get(tool)
            if hold and (run, tool) not in self._held:
                self._held.add((run, tool))
                self.holding.add(key)
                try:
                    await asyncio.sleep(hold)
                finally:
                    self.holding.discard(key)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        async with self._session.request(request.method, self.upstream, headers=headers, data=body) as upstream:
            response = web.StreamResponse(status=upstream.status)
            for name, value in upstream.headers.items():
                if name.lower() not in _HOP_BY_HOP and name.lower() != "content-encoding":
                    response.headers[name] = value
            await response.prepare(request)
            try:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
            except ConnectionResetError:
                pass  # the caller (a killed runner) is gone; the server has executed the call all the same
            return response

    def _record(self, request: web.Request, body: bytes) -> str | None:
        if request.method != "POST":
            return None
        try:
            message = json.loads(body)
        except ValueError:
            return None
        if not isinstance(message, dict) or message.get("method") != "tools/call":
            return None
        params: dict[str, Any] = message.get("params") or {}
        key = (params.get("_meta") or {}).get(IDEMPOTENCY_META_KEY)
        header = request.headers.get("Idempotency-Key")
        if key is None or key != header:
            self.header_mismatches.append((key, header))
        self.authorizations.add(request.headers.get("Authorization", ""))
        if key is None:
            return None
        self.deliveries[key] += 1
        self.tools_of_key[key] = str(params.get("name"))
        return str(key)


class TicketService(LoopbackServer):
    """POST /queues/{queue}/tickets: opens one ticket per Idempotency-Key; a repeat gets the first answer.
    Requires ``X-Api-Key: api_key``. ``hold_first_call`` seconds: the first call of each run waits."""

    def __init__(self, api_key: str, *, hold_first_call: float = 0.0, hold_queue: str = "") -> None:
        self.api_key = api_key
        self.hold_first_call = hold_first_call
        self.hold_queue = hold_queue
        self.deliveries: collections.Counter[str] = collections.Counter()
        self.executions: collections.Counter[str] = collections.Counter()
        self.unauthorized = 0
        self.holding: set[str] = set()  # keys whose call is being held now: a kill then lands mid-call
        self._answers: dict[str, dict[str, Any]] = {}
        # A repeat that arrives while its first delivery is still being served waits for that answer.
        self._serving: collections.defaultdict[str, asyncio.Lock] = collections.defaultdict(asyncio.Lock)
        self._held: set[str] = set()

    def url_template(self) -> str:
        return f"http://127.0.0.1:{self.port}/queues/{{queue}}/tickets"

    def keys_of(self, uid: str) -> dict[str, int]:
        return {key: n for key, n in self.deliveries.items() if key.startswith(f"{uid}:")}

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/queues/{queue}/tickets", self._open)

    async def _open(self, request: web.Request) -> web.Response:
        if request.headers.get("X-Api-Key") != self.api_key:
            self.unauthorized += 1
            return web.json_response({"error": "bad api key"}, status=401)
        key = request.headers.get("Idempotency-Key")
        if not key:
            return web.json_response({"error": "Idempotency-Key required"}, status=400)
        self.deliveries[key] += 1
        fields = await request.json()
        queue = request.match_info["queue"]
        run = key.split(":", 1)[0]
        async with self._serving[key]:
            return await self._open_once(fields, key, queue, run)

    async def _open_once(self, fields: dict[str, Any], key: str, queue: str, run: str) -> web.Response:
        # Held before executing: a caller killed meanwhile has sent the whole request, which still executes.
        if self.hold_first_call and queue == self.hold_queue and run not in self._held:
            self._held.add(run)
            self.holding.add(key)
            try:
                await asyncio.sleep(self.hold_first_call)
            finally:
                self.holding.discard(key)
        if key not in self._answers:
            self.executions[key] += 1
            self._answers[key] = {"ticket": f"{queue}/{fields.get('title', '')}", "opened": True}
        return web.json_response(self._answers[key], status=201)
