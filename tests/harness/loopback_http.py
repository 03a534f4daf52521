"""An aiohttp server on 127.0.0.1 at a free port: the base of the test doubles that stand at a network boundary
(tool servers, a runner's HTTP tools)."""

from types import TracebackType
from typing import Self

from aiohttp import web


class LoopbackServer:
    """``async with`` serves the routes a subclass adds in ``add_routes`` until the block ends."""

    port = 0
    _runner: web.AppRunner | None = None

    def add_routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        app = web.Application()
        self.add_routes(app)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
