"""A stand-in for the runner's ``<run>-stream`` Service: the gateway's upstream URL points here, and each request
is forwarded to the run's current runner pod (the newest Running one with an IP), as kube-proxy would send it to
the Service's ready endpoint. A pod that dies ends the forwarded response, so the gateway re-attaches and reaches
the replacement pod."""

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from agentrun_api.contract import STREAM_PORT
from tests.harness.agentruns import runner_pods
from tests.harness.nodeagent.kube import KubeClient

FORWARDED_HEADERS = ("Authorization", "Last-Event-ID", "Accept")


async def _current_pod_ip(kube: KubeClient, run: str) -> str | None:
    pods = [p for p in await runner_pods(kube, run) if p["status"].get("phase") == "Running"]
    pods = [p for p in pods if p["status"].get("podIP")]
    pods.sort(key=lambda p: p["metadata"]["creationTimestamp"])
    return pods[-1]["status"]["podIP"] if pods else None


@dataclass
class RunnerRouter:
    port: int
    positions: list[int] = field(default_factory=list)
    """The Last-Event-ID of each request forwarded (0 without one), in order: where each (re)attach resumed."""


@contextlib.asynccontextmanager
async def runner_router(kube: KubeClient) -> AsyncIterator[RunnerRouter]:
    """Serve on a loopback port for the runs of ``kube``'s namespace: ``/events?run=<namespace>/<name>``."""
    router = RunnerRouter(port=0)
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, connect=2, sock_read=None))

    async def forward(request: web.Request) -> web.StreamResponse:
        _, _, run = request.query.get("run", "").partition("/")
        ip = await _current_pod_ip(kube, run)
        if ip is None:
            return web.Response(status=503, text="no runner pod is running")
        headers = {name: request.headers[name] for name in FORWARDED_HEADERS if name in request.headers}
        router.positions.append(int(headers.get("Last-Event-ID", "0")))
        response = web.StreamResponse()
        try:
            async with session.get(f"http://{ip}:{STREAM_PORT}/events", headers=headers) as upstream:
                response.set_status(upstream.status)
                response.content_type = upstream.content_type
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
        except (aiohttp.ClientError, ConnectionError):
            if not response.prepared:
                return web.Response(status=502, text="the runner pod did not answer")
        return response

    app = web.Application()
    app.router.add_get("/events", forward)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    router.port = runner.addresses[0][1]
    try:
        yield router
    finally:
        await runner.cleanup()
        await session.close()
