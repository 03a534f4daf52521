"""``python -m agentrun_gateway``: serve the stream gateway until SIGTERM."""

import asyncio
import logging
import signal
import sys

from aiohttp import web

from agentrun_common.settings import SettingsError
from agentrun_gateway.server import create_app, create_runner
from agentrun_gateway.settings import GatewaySettings

log = logging.getLogger("agentrun_gateway")


async def serve(settings: GatewaySettings) -> None:
    runner = create_runner(create_app(settings), settings)
    await runner.setup()
    await web.TCPSite(runner, settings.host, settings.port).start()
    log.info(
        "stream gateway on %s:%d (keep-alive %.0f s, behind %s)",
        settings.host,
        settings.port,
        settings.keep_alive_seconds,
        settings.controller,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await runner.cleanup()  # open streams are cut after shutdown_timeout; clients resume on another replica


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        settings = GatewaySettings.from_env()
        asyncio.run(serve(settings))
    except SettingsError as error:  # from the environment, or a CA bundle that cannot be loaded at startup
        print(f"agentrun-gateway: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
