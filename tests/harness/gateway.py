"""The stream gateway for tests and benchmarks: served in-process or as its own process on loopback, reaching the
API server as its ServiceAccount would (tests.harness.identities), and readers of the SSE streams of the gateway
and of a real runner process."""

import asyncio
import base64
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
from aiohttp import web
from aiohttp.abc import AbstractResolver
from aiohttp.typedefs import Handler
from httpx_sse import ServerSentEvent, aconnect_sse

from agentrun_api import contract
from agentrun_gateway.server import create_app, create_runner
from agentrun_gateway.settings import GatewaySettings
from tests.harness.identities import gateway_identity
from tests.harness.local_cluster import free_port
from tests.harness.runner import RunnerProcess
from tests.harness.source_roots import GATEWAY_IMAGE_FOLDERS, pythonpath
from tests.harness.sse_client import dispatched_events
from tests.harness.testbed import KubeTestbed


@dataclass(frozen=True)
class ApiEndpoint:
    """How the gateway reaches the API server, as its settings take it: the URL, a file holding its bearer token
    and the CA bundle that signs the server's certificate ("": none, plain HTTP)."""

    url: str
    token_file: str = ""
    ca_file: str = ""


def gateway_endpoint(testbed: KubeTestbed, namespace: str, directory: Path) -> ApiEndpoint:
    """The gateway's ServiceAccount with the chart's rules granted in ``namespace``, and a real token of it in a
    file, as a projected volume holds it."""
    identity = gateway_identity(testbed.control_plane)
    identity.grant(namespace)
    token_file = directory / "gateway-token"
    token_file.write_text(identity.token())
    token_file.chmod(0o600)
    return ApiEndpoint(testbed.control_plane.url, str(token_file), str(testbed.control_plane.ca_file))


def runner_events_url(port: int) -> str:
    """The gateway's upstream URL template for a runner listening on ``port`` of 127.0.0.1."""
    return f"http://127.0.0.1:{port}/events?run={{namespace}}/{{name}}"


def fast_settings(api: ApiEndpoint, upstream_port: int | None, **overrides: Any) -> GatewaySettings:
    """Gateway settings with short delays and caches, so a test sees in seconds what takes minutes; any
    field may be overridden. ``upstream_port``: a runner on that port of 127.0.0.1; None: the gateway's default
    upstream, each run's stream Service by its cluster DNS name (serve it with a ``ClusterResolver``)."""
    upstream = {} if upstream_port is None else {"upstream_url": runner_events_url(upstream_port)}
    fields: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        **upstream,
        "kube_api_url": api.url,
        "kube_token_file": api.token_file,
        "kube_ca_file": api.ca_file,
        "reattach_initial_delay_seconds": 0.05,
        "reattach_max_delay_seconds": 0.2,
        "ended_drain_seconds": 0.3,
        "run_cache_seconds": 0.05,
        "shutdown_timeout_seconds": 0.1,
    }
    return GatewaySettings(**{**fields, **overrides})


class Gateway:
    """The gateway served in-process on a loopback port; restart() serves again on the same port. ``resolver``:
    how it resolves its upstream's host names (a ``ClusterResolver`` for the default, Service-name upstream)."""

    def __init__(
        self, settings: GatewaySettings, namespace: str, run: str, resolver: AbstractResolver | None = None
    ) -> None:
        self.settings = settings
        self.namespace = namespace
        self.run = run
        self.resolver = resolver
        self.port = 0
        self.resumed_from: list[int] = []
        """The Last-Event-ID of each request for an event stream (0 without one), in order: where each of the
        readers' (re)connections resumed."""
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """The run's event stream on this gateway."""
        return f"http://127.0.0.1:{self.port}/runs/{self.namespace}/{self.run}/events"

    async def start(self) -> None:
        app = create_app(self.settings, resolver=self.resolver)
        app.middlewares.append(self._record_resume_position)
        self._runner = create_runner(app, self.settings)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()
        self.port = self._runner.addresses[0][1]

    @web.middleware
    async def _record_resume_position(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        position = request.headers.get("Last-Event-ID", "0")
        if request.path.endswith("/events") and position.isascii() and position.isdigit():  # the gateway refuses others
            self.resumed_from.append(int(position))
        return await handler(request)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def __aenter__(self) -> "Gateway":
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


@contextlib.asynccontextmanager
async def gateway_process(
    api: ApiEndpoint,
    upstream_port: int | None,
    *,
    stderr: int | IO[Any] | None,
    wrap: Callable[[list[str], dict[str, str]], list[str]] | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    """`python -m agentrun_gateway` as its own process, configured from env as in its image; yields the
    process and its port once /healthz answers, and terminates it on exit unless it has ended.

    ``upstream_port``: a runner process on that port of 127.0.0.1; None: the gateway's own default, each run's
    stream Service by its cluster DNS name, which needs ``wrap`` to give the process the cluster's DNS
    (``KubeTestbed.with_cluster_dns``)."""
    port = free_port()
    upstream = {} if upstream_port is None else {"AGENTRUN_GATEWAY_UPSTREAM_URL": runner_events_url(upstream_port)}
    env = {
        **os.environ,
        "AGENTRUN_GATEWAY_HOST": "127.0.0.1",
        "AGENTRUN_GATEWAY_PORT": str(port),
        **upstream,
        "AGENTRUN_GATEWAY_KUBE_API_URL": api.url,
        "AGENTRUN_GATEWAY_KUBE_TOKEN_FILE": api.token_file,
        "AGENTRUN_GATEWAY_KUBE_CA_FILE": api.ca_file,
        # What the gateway image holds (gateway/Dockerfile): neither the operator's nor the runner's package.
        "PYTHONPATH": pythonpath(GATEWAY_IMAGE_FOLDERS),
        **(extra_env or {}),
    }
    argv = [sys.executable, "-m", "agentrun_gateway"]
    if wrap is not None:
        argv = wrap(argv, env)
    process = await asyncio.create_subprocess_exec(*argv, env=env, stderr=stderr)
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            deadline = time.monotonic() + 15
            while True:
                try:
                    await client.get(f"http://127.0.0.1:{port}/healthz")
                    break
                except httpx.ConnectError:
                    if time.monotonic() > deadline:
                        raise AssertionError("the gateway did not start listening") from None
                    await asyncio.sleep(0.1)
        yield process, port
    finally:
        if process.returncode is None:
            process.terminate()
            await process.wait()


def stream_token_secret(namespace: str, run: str, token: str) -> dict[str, Any]:
    """The run's `<run>-stream-token` Secret, as the operator creates it."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": contract.stream_token_secret_name(run), "namespace": namespace},
        "data": {"token": base64.b64encode(token.encode()).decode()},
    }


@contextlib.asynccontextmanager
async def gateway_after_the_runner(api: ApiEndpoint, namespace: str, run: str) -> AsyncIterator[str]:
    """The URL of an in-process gateway for a run whose runner is gone: nothing listens upstream (port 9,
    discard), so every event it serves comes from what the run left behind."""
    async with Gateway(fast_settings(api, upstream_port=9), namespace, run) as gateway:
        yield gateway.url


async def read_until_finished(url: str, token: str, last_id: int | None = None) -> tuple[int, list[ServerSentEvent]]:
    """One connection: the HTTP status and, when it is 200, the events up to and with `finished`."""
    headers = {"Authorization": f"Bearer {token}"}
    if last_id is not None:
        headers["Last-Event-ID"] = str(last_id)
    events: list[ServerSentEvent] = []
    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(15.0)) as client,
        aconnect_sse(client, "GET", url, headers=headers) as source,
    ):
        if source.response.status_code != 200:
            return source.response.status_code, events
        async for event in dispatched_events(source):
            events.append(event)
            if event.event == "finished":
                break
    return 200, events


async def read_runner_stream_to_end(
    env: dict[str, str], token: str, output: list[str] | None = None
) -> list[ServerSentEvent]:
    """Start the real runner process with ``env``, read its own stream to `finished`, and require that it
    then exits 0; returns the events that reader received, and adds the runner's log lines to ``output``."""
    runner = await RunnerProcess(env).start()
    try:
        port = await runner.stream_port()
        status, events = await read_until_finished(f"http://127.0.0.1:{port}/events", token)
        assert status == 200
        assert await runner.wait() == 0, runner.output
    finally:
        await runner.close()
        if output is not None:
            output.extend(runner.log)
    return events


def as_log(events: list[ServerSentEvent]) -> list[tuple[int, str, Any]]:
    """Events as (id, type, decoded data), comparable with a runner's event log."""
    return [(int(e.id), e.event, json.loads(e.data)) for e in events]
