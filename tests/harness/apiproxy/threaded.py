"""The proxy on its own event loop in a background thread, for synchronous tests and tools."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from tests.harness.apiproxy.accounting import RequestLog
from tests.harness.apiproxy.faults import Faults
from tests.harness.apiproxy.proxy import ApiProxy

T = TypeVar("T")
START_STOP_TIMEOUT_SECONDS = 30.0


class ThreadedApiProxy:
    """`with ThreadedApiProxy(upstream_url, ca_file=...) as proxy:` gives `.url`, `.requests` and `.faults`.

    `faults.inject`, `faults.drop_watches` and reading `requests` are safe from the calling thread;
    `call(fn)` runs `fn(proxy)` on the proxy's loop for anything else. Takes ApiProxy's arguments.
    """

    def __init__(self, upstream_url: str, **kwargs: Any) -> None:
        self._factory: Callable[[], ApiProxy] = lambda: ApiProxy(upstream_url, **kwargs)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="api-proxy", daemon=True)
        self._proxy: ApiProxy | None = None

    def __enter__(self) -> ThreadedApiProxy:
        self._thread.start()
        try:
            self._proxy = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(
                timeout=START_STOP_TIMEOUT_SECONDS
            )
        except BaseException:
            self._stop_loop()
            raise
        return self

    async def _start(self) -> ApiProxy:
        proxy = self._factory()
        return await proxy.__aenter__()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if self._proxy is not None:
                asyncio.run_coroutine_threadsafe(self._proxy.stop(), self._loop).result(
                    timeout=START_STOP_TIMEOUT_SECONDS
                )
        finally:
            self._proxy = None
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=START_STOP_TIMEOUT_SECONDS)
        if not self._thread.is_alive():
            self._loop.close()

    @property
    def proxy(self) -> ApiProxy:
        if self._proxy is None:
            raise RuntimeError("the API proxy is not running")
        return self._proxy

    @property
    def url(self) -> str:
        return self.proxy.url

    @property
    def requests(self) -> RequestLog:
        return self.proxy.requests

    @property
    def faults(self) -> Faults:
        return self.proxy.faults

    @property
    def upstream_errors(self) -> list[BaseException]:
        return self.proxy.upstream_errors

    def write_kubeconfig(self, path: str | Path, token: str, *, namespace: str = "default") -> Path:
        return self.proxy.write_kubeconfig(path, token, namespace=namespace)

    def call(self, fn: Callable[[ApiProxy], T]) -> T:
        """Run `fn(proxy)` on the proxy's loop and return its result."""

        async def run() -> T:
            return fn(self.proxy)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=START_STOP_TIMEOUT_SECONDS)
