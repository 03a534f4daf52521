"""The stream gateway's HTTP server: GET /runs/<namespace>/<name>/events, the watch page, /healthz, /metrics."""

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractResolver
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agentrun_api.names import is_dns_label, is_dns_subdomain
from agentrun_common.kube import Credentials, KubeClient
from agentrun_gateway import metrics, responses_api, runs_api, watch_page
from agentrun_gateway.archive import RunArchive
from agentrun_gateway.auth import Authenticator, Decision, StreamTokens
from agentrun_gateway.kube import READER_RETRY, KubeApi, KubeApiError, RunInfo
from agentrun_gateway.relay import ClientStream, EventArchive, Relay, RunDirectory
from agentrun_gateway.settings import IN_CLUSTER_CA_FILE, GatewaySettings
from agentrun_gateway.watch_session import COOKIE_NAME as WATCH_COOKIE

log = logging.getLogger(__name__)


@dataclass
class _Parts:
    kube: KubeApi
    upstream_session: aiohttp.ClientSession
    auth: Authenticator
    runs: RunDirectory
    relay: Relay


PARTS = web.AppKey("parts", _Parts)
SETTINGS = web.AppKey("settings", GatewaySettings)
ARCHIVE = web.AppKey("archive", EventArchive)
RESOLVER = web.AppKey("resolver", AbstractResolver)


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers or None)


async def _events(request: web.Request) -> web.StreamResponse:
    namespace, run = request.match_info["namespace"], request.match_info["name"]
    if not is_dns_label(namespace) or not is_dns_subdomain(run):
        return _error(400, "namespace and run name must be Kubernetes object names")
    raw_last = request.headers.get("Last-Event-ID") or request.query.get("lastEventId") or "0"
    if not raw_last.isdigit():
        return _error(400, f"Last-Event-ID {raw_last[:32]!r} is not an event id (a non-negative integer)")
    last_id = int(raw_last)
    parts = request.app[PARTS]
    try:
        authorization, watch_cookie = request.headers.get("Authorization"), request.cookies.get(WATCH_COOKIE)
        decision = await parts.auth.decide(namespace, run, authorization, watch_cookie)
        info = await parts.runs.get(namespace, run) if decision is Decision.ALLOWED else None
    except KubeApiError as error:
        log.warning("Kubernetes API unavailable: %s", error)
        return _error(503, "the Kubernetes API is unavailable; retry shortly", **{"Retry-After": "2"})
    if decision is Decision.UNAUTHENTICATED:
        metrics.AUTH_REJECTIONS.labels("unauthenticated").inc()
        return _error(
            401, "send the run's stream token or a Kubernetes token as a Bearer token", **{"WWW-Authenticate": "Bearer"}
        )
    if decision is Decision.FORBIDDEN:
        metrics.AUTH_REJECTIONS.labels("forbidden").inc()
        return _error(403, f"this identity may not get agentruns/{run} in namespace {namespace}")
    if info is None:
        return _error(404, f"no AgentRun {run} in namespace {namespace}")
    return await _relay(request, parts, namespace, run, last_id, info)


async def _relay(
    request: web.Request, parts: _Parts, namespace: str, run: str, last_id: int, info: RunInfo
) -> web.StreamResponse:
    client = ClientStream(request, info.heartbeat_seconds)
    metrics.READERS.inc()
    try:
        await parts.relay.serve(namespace, run, last_id, client, info)
    except KubeApiError as error:
        log.warning("Kubernetes API unavailable during a relay: %s", error)  # the client resumes elsewhere
    finally:
        metrics.READERS.dec()
        await client.close()
    if not client.prepared:
        return web.Response(status=204)  # the run ended and the reader has seen all of it: stop reconnecting
    return client.response


async def _authorized_relay(request: web.Request, namespace: str, run: str) -> web.StreamResponse:
    """A run's stream for a reader another door has authorized (the runs API); 404 when the run is gone."""
    raw_last = request.headers.get("Last-Event-ID") or request.query.get("lastEventId") or "0"
    parts = request.app[PARTS]
    info = await parts.runs.get(namespace, run) if raw_last.isdigit() else None
    if info is None:
        return _error(404, f"no AgentRun {run} in namespace {namespace}")
    return await _relay(request, parts, namespace, run, int(raw_last), info)


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _metrics(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def _kube_credentials(settings: GatewaySettings) -> Credentials:
    """The gateway's own: its token file read again at every request (projected tokens rotate); none when the
    file is absent (an API server reached without a token, as in some tests)."""
    settings.kube_tls_context()  # a clear error for an unreadable CA bundle
    ca_file = settings.kube_ca_file or (IN_CLUSTER_CA_FILE if Path(IN_CLUSTER_CA_FILE).is_file() else None)
    token_file = Path(settings.kube_token_file) if settings.kube_token_file else None
    return Credentials(
        server=settings.kube_api_url.rstrip("/"),
        token_file=token_file if token_file is not None and token_file.is_file() else None,
        ca_file=ca_file,
    )


async def _start(app: web.Application) -> None:
    settings = app[SETTINGS]
    kube = KubeApi(
        KubeClient(_kube_credentials(settings), timeout_seconds=10, retry=READER_RETRY),
        settings.default_heartbeat_seconds,
    )
    # No connection cap: each reader holds one upstream stream; the pool's idle time sits below the
    # runner's keep-alive (see stream_timeouts.runner_server_timeouts).
    upstream_session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            limit=0, keepalive_timeout=settings.upstream_pool_idle_seconds, resolver=app.get(RESOLVER)
        )
    )
    tokens = StreamTokens(kube, settings.auth_cache_seconds)
    runs = RunDirectory(kube, settings.run_cache_seconds)
    # Ended runs whose runner is gone are replayed from what it left in ConfigMaps unless a test passes its own archive.
    relay = Relay(settings, upstream_session, runs, tokens, app.get(ARCHIVE) or RunArchive(kube))
    app[PARTS] = _Parts(kube, upstream_session, Authenticator(kube, tokens, settings.auth_cache_seconds), runs, relay)


async def _stop(app: web.Application) -> None:
    parts = app[PARTS]
    await parts.relay.close()
    await asyncio.gather(parts.kube.close(), parts.upstream_session.close())


def create_app(
    settings: GatewaySettings, archive: EventArchive | None = None, resolver: AbstractResolver | None = None
) -> web.Application:
    """``resolver``: how upstream host names resolve (default: the system's, as in a pod)."""
    app = web.Application()
    app[SETTINGS] = settings
    if archive is not None:
        app[ARCHIVE] = archive
    if resolver is not None:
        app[RESOLVER] = resolver
    app.router.add_get("/runs/{namespace}/{name}/events", _events)
    watch_page.add_routes(app, lambda started: started[PARTS], settings.watch_session_seconds)
    runs_api.register(app, settings, lambda: _kube_credentials(settings), _authorized_relay)
    responses_api.register(app, lambda started: started[PARTS])
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", _metrics)
    app.on_startup.append(_start)
    app.on_cleanup.append(_stop)
    return app


def create_runner(app: web.Application, settings: GatewaySettings) -> web.AppRunner:
    """An AppRunner with the keep-alive and shutdown timeouts from the settings."""
    return web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        # A reader that disconnects cancels its handler at once, so an idle run's relay does not
        # linger until the next write fails (and a shared feed stops with its last reader).
        handler_cancellation=True,
        keepalive_timeout=settings.keep_alive_seconds,
        shutdown_timeout=settings.shutdown_timeout_seconds,
    )
