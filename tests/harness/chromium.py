"""Headless Chromium (Debian's ``chromium``) driven over the Chrome DevTools Protocol from Python.

Why this and not playwright or selenium: the few commands a test needs (open a tab, load a page, evaluate a
script, read what it reported) are four protocol methods over one websocket, which aiohttp (a dependency
already) speaks; Debian's chromium speaks the protocol itself, so no driver binary, no Node process, and no
browser build pinned to a client library's version (playwright-core supports only its own Chromium revision).
"""

import asyncio
import contextlib
import itertools
import json
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

CHROMIUM = "/usr/bin/chromium"


def needs_chromium() -> None:
    if shutil.which(CHROMIUM) is None:
        pytest.skip(f"needs headless Chromium at {CHROMIUM}: run `make browser` (Debian's chromium package)")


class PageError(Exception):
    """A script evaluated in the page threw."""


class Tab:
    """One tab, attached through the browser's connection (flattened session)."""

    def __init__(self, browser: "Chromium", session_id: str) -> None:
        self._browser = browser
        self._session = session_id
        self.errors: list[str] = []  # the page's uncaught exceptions, console errors and policy (CSP) violations

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        return await self._browser.send(method, session_id=self._session, **params)

    async def navigate(self, url: str) -> None:
        await self.send("Page.navigate", url=url)

    async def evaluate(self, expression: str) -> Any:
        """The JSON value of ``expression`` (awaited when it is a promise)."""
        answer = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in answer:
            raise PageError(json.dumps(answer["exceptionDetails"])[:2000])
        return answer["result"].get("value")

    async def wait_for(self, expression: str, what: str, timeout: float = 30.0) -> Any:
        """Until ``expression``'s JSON value is truthy in Python (so not a DOM node, which comes back as ``{}``) in the
        current document, across navigations; that value."""
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            with contextlib.suppress(PageError):  # the document is being replaced
                value = await self.evaluate(expression)
                if value:
                    return value
            await asyncio.sleep(0.1)
        shown = ""
        with contextlib.suppress(PageError):
            shown = await self.evaluate("location.href + '\\n' + (document.body?.innerText ?? '').slice(-3000)")
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; the page shows:\n{shown}\n{self.errors}")

    def _on_event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Runtime.exceptionThrown":
            self.errors.append(json.dumps(params["exceptionDetails"])[:2000])
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            self.errors.append(" ".join(str(arg.get("value", arg.get("description"))) for arg in params["args"]))
        elif (
            method == "Log.entryAdded"
            and params["entry"].get("level") == "error"
            and params["entry"].get("source") != "network"
        ):
            # Network errors are the test's own doing (a 401 before signing in, a connection cut on purpose).
            self.errors.append(str(params["entry"].get("text")))


class Chromium:
    """``async with Chromium() as browser: tab = await browser.new_tab()``."""

    def __init__(self) -> None:
        self._process: asyncio.subprocess.Process | None = None
        self._profile = Path(tempfile.mkdtemp(prefix="chromium-"))
        self._http: aiohttp.ClientSession | None = None
        self._socket: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._tabs: dict[str, Tab] = {}

    async def __aenter__(self) -> "Chromium":
        self._process = await asyncio.create_subprocess_exec(
            CHROMIUM,
            "--headless=new",
            "--no-sandbox",  # tests run as root here, where Chromium's sandbox refuses to start
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            f"--user-data-dir={self._profile}",
            "about:blank",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        active_port = self._profile / "DevToolsActivePort"
        async with asyncio.timeout(30):
            while not active_port.exists() or len(active_port.read_text().splitlines()) < 2:
                if self._process.returncode is not None:
                    raise AssertionError(f"chromium exited with {self._process.returncode} at start")
                await asyncio.sleep(0.05)
        port, path = active_port.read_text().splitlines()[:2]
        self._http = aiohttp.ClientSession()
        self._socket = await self._http.ws_connect(f"ws://127.0.0.1:{port}{path}", max_msg_size=0)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._socket is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.send("Browser.close"), 5)
            await self._socket.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
        if self._process is not None and self._process.returncode is None:
            self._process.kill()
            await self._process.wait()
        shutil.rmtree(self._profile, ignore_errors=True)

    async def _read(self) -> None:
        assert self._socket is not None
        async for message in self._socket:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            payload = json.loads(message.data)
            if "id" in payload:
                future = self._waiting.pop(payload["id"], None)
                if future is not None and not future.done():
                    if "error" in payload:
                        future.set_exception(PageError(json.dumps(payload["error"])))
                    else:
                        future.set_result(payload.get("result", {}))
            elif (tab := self._tabs.get(payload.get("sessionId", ""))) is not None:
                tab._on_event(payload["method"], payload.get("params", {}))
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(ConnectionError("the browser's DevTools connection closed"))

    async def send(self, method: str, *, session_id: str | None = None, **params: Any) -> dict[str, Any]:
        assert self._socket is not None, "use Chromium as an async context manager"
        message_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[message_id] = future
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params}
        if session_id is not None:
            message["sessionId"] = session_id
        await self._socket.send_str(json.dumps(message))
        return await asyncio.wait_for(future, 30)

    async def new_tab(self) -> Tab:
        target = await self.send("Target.createTarget", url="about:blank")
        attached = await self.send("Target.attachToTarget", targetId=target["targetId"], flatten=True)
        tab = Tab(self, attached["sessionId"])
        self._tabs[attached["sessionId"]] = tab
        for domain in ("Page.enable", "Runtime.enable", "Log.enable"):
            await tab.send(domain)
        return tab


@contextlib.asynccontextmanager
async def chromium_tab() -> AsyncIterator[Tab]:
    """A tab of a fresh headless Chromium; skips when Chromium is not installed."""
    needs_chromium()
    async with Chromium() as browser:
        yield await browser.new_tab()
