"""The proxy: plain HTTP on 127.0.0.1 toward the client under test, verified HTTPS toward the real API server,
with every request recorded and faults injected before forwarding."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import aiohttp.web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from tests.harness.apiproxy.accounting import RequestLog, RequestRecord
from tests.harness.apiproxy.discovery import DiscoveryError, KindResolver
from tests.harness.apiproxy.faults import Faults, InjectedError
from tests.harness.apiproxy.kubeconfig import write_kubeconfig
from tests.harness.apiproxy.requestinfo import RequestInfo, parse_request_info
from tests.harness.apiproxy.status import status_response

LOOPBACK = "127.0.0.1"

# Headers that describe one connection, not the message (RFC 9110 §7.6.1), so they are not relayed; Host and
# Content-Length are the proxy's own to set on each side.
HOP_BY_HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
NOT_FORWARDED_REQUEST_HEADERS = HOP_BY_HOP_HEADERS | {"host", "content-length", "expect"}
# aiohttp would add these when the client sent none; a transparent proxy sends only what the client sent.
CLIENT_DEFAULT_HEADERS = frozenset({"Accept", "Accept-Encoding", "User-Agent", "Content-Type"})

# A discovery document is small and the request that waits for it is held meanwhile.
DISCOVERY_TIMEOUT_SECONDS = 10.0

# Larger than kube-apiserver's own request body limit (3 MiB), so the server under test is the one that refuses.
MAX_REQUEST_BODY_BYTES = 16 * 1024 * 1024


def _without_hop_by_hop(headers: Mapping[str, str], also: frozenset[str]) -> CIMultiDict[str]:
    # A Connection header may name more headers that belong to this hop only.
    named_by_connection = {
        token.strip().lower() for value in _all_values(headers, "Connection") for token in value.split(",")
    }
    kept: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        lowered = name.lower()
        if lowered not in also and lowered not in named_by_connection:
            kept.add(name, value)
    return kept


def _all_values(headers: Mapping[str, str], name: str) -> list[str]:
    if isinstance(headers, CIMultiDictProxy | CIMultiDict):
        return list(headers.getall(name, []))
    value = headers.get(name)
    return [value] if value is not None else []


def forwarded_request_headers(headers: Mapping[str, str]) -> CIMultiDict[str]:
    """The client's headers as sent upstream: Authorization, Content-Type, Accept, User-Agent, Impersonate-* and
    the rest, less the hop-by-hop ones."""
    return _without_hop_by_hop(headers, NOT_FORWARDED_REQUEST_HEADERS)


def relayed_response_headers(headers: Mapping[str, str]) -> CIMultiDict[str]:
    """The API server's response headers as sent to the client, less the hop-by-hop ones (Content-Length kept:
    the body is relayed byte for byte, compressed or not)."""
    return _without_hop_by_hop(headers, HOP_BY_HOP_HEADERS)


def is_upgrade(headers: Mapping[str, str]) -> bool:
    """A protocol switch (exec, attach, port-forward over SPDY or WebSocket), which this proxy does not relay."""
    connection = {token.strip().lower() for value in _all_values(headers, "Connection") for token in value.split(",")}
    return "upgrade" in connection


def record_for(request: aiohttp.web.BaseRequest, info: RequestInfo) -> RequestRecord:
    """The log's record of a request; non-resource URLs have an empty verb, as the RequestLog counts them."""
    record = RequestRecord(
        method=request.method, path=request.path_qs, verb="", user_agent=request.headers.get("User-Agent", "")
    )
    if info.is_resource_request:
        record.verb = info.verb
        record.group, record.version = info.group, info.version
        record.resource, record.subresource = info.resource, info.subresource
        record.namespace, record.name = info.namespace, info.name
    return record


class ApiProxy:
    """A fault-injecting, request-recording reverse proxy in front of a real kube-apiserver.

    `async with ApiProxy("https://127.0.0.1:6443", ca_file=ca) as proxy:` listens on 127.0.0.1 (`proxy.url`,
    plain HTTP) and relays to the upstream over HTTPS verified with `ca_file`. `proxy.requests` records every
    request; `proxy.faults` fails, delays or cuts them. Clients authenticate upstream with their own
    Authorization header; a request without one is sent with `client_cert`/`client_key` when given.
    """

    def __init__(
        self,
        upstream_url: str,
        *,
        ca_file: str | Path,
        client_cert: str | Path | None = None,
        client_key: str | Path | None = None,
        port: int = 0,
        max_request_seconds: float = 3600.0,
        connect_timeout_seconds: float = 10.0,
        discovery_refresh_seconds: float = 1.0,
        shutdown_timeout_seconds: float = 2.0,
    ) -> None:
        upstream = URL(upstream_url)
        if upstream.scheme != "https" or not upstream.host:
            raise ValueError(f"the upstream API server must be an https:// URL, not {upstream_url!r}")
        if (client_cert is None) != (client_key is None):
            raise ValueError("a client certificate needs its key, and a key its certificate")
        self.upstream_url = str(upstream).rstrip("/")
        self.ca_file = Path(ca_file)
        self.client_cert = Path(client_cert) if client_cert is not None else None
        self.client_key = Path(client_key) if client_key is not None else None
        self.port = port
        # Upper bound of any one relayed request, watches included (kube-apiserver ends its watches within
        # --min-request-timeout * 2 = 3600 s by default), so no relay outlives a stuck upstream forever.
        self.max_request_seconds = max_request_seconds
        self.connect_timeout_seconds = connect_timeout_seconds
        self.shutdown_timeout_seconds = shutdown_timeout_seconds
        self.requests = RequestLog()
        self.faults = Faults()
        # Why requests could not be relayed (unreachable upstream, failed TLS verification), oldest first.
        self.upstream_errors: list[BaseException] = []
        # Exceptions of the proxy itself (or of a fault's `match` predicate) while serving; tests assert none.
        self.internal_errors: list[BaseException] = []
        self.kinds = KindResolver(self._fetch_discovery, refresh_seconds=discovery_refresh_seconds)
        self._runner: aiohttp.web.ServerRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._cert_session: aiohttp.ClientSession | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        """`http://127.0.0.1:<port>`, the address clients under test use in place of the API server's."""
        if self._url is None:
            raise RuntimeError("the API proxy is not running")
        return self._url

    @property
    def discovery_errors(self) -> list[BaseException]:
        """Why discovery documents could not be read; records of their resources then have an empty kind."""
        return self.kinds.errors

    def write_kubeconfig(self, path: str | Path, token: str, *, namespace: str = "default") -> Path:
        """A kubeconfig at `path` whose one context reaches the upstream through this proxy as `token`'s user."""
        return write_kubeconfig(path, self.url, token, namespace=namespace)

    async def __aenter__(self) -> ApiProxy:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("the API proxy is already running")
        self._session = self._client_session()
        if self.client_cert is not None and self.client_key is not None:
            self._cert_session = self._client_session(client_cert=(self.client_cert, self.client_key))
        server = aiohttp.web.Server(
            self._handle,
            request_factory=self._make_request,
            # A client that hangs up cancels its relay, so a watch nobody reads does not hold the upstream.
            handler_cancellation=True,
        )
        self._runner = aiohttp.web.ServerRunner(server, shutdown_timeout=self.shutdown_timeout_seconds)
        try:
            await self._runner.setup()
            site = aiohttp.web.TCPSite(self._runner, LOOPBACK, self.port)
            await site.start()
            sockets = self._runner.addresses
            port = sockets[0][1]
            self._url = f"http://{LOOPBACK}:{port}"
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        # Open watches would hold the shutdown until its timeout; cut them first, as a proxy going away does.
        self.faults.drop_watches()
        await asyncio.sleep(0)
        try:
            if self._runner is not None:
                await self._runner.cleanup()
        finally:
            self._runner = None
            self._url = None
            for session in (self._session, self._cert_session):
                if session is not None:
                    await session.close()
            self._session = self._cert_session = None

    def _client_session(self, *, client_cert: tuple[Path, Path] | None = None) -> aiohttp.ClientSession:
        # Verification is never turned off: the upstream must present a certificate for its address from this CA.
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_file))
        if client_cert is not None:
            certificate, key = client_cert
            context.load_cert_chain(str(certificate), str(key))
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=context, limit=0),
            # Bodies are relayed as the server encoded them; the client decodes.
            auto_decompress=False,
            # Cookies of one client must not reach the API server on another client's request.
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            timeout=aiohttp.ClientTimeout(total=self.max_request_seconds, sock_connect=self.connect_timeout_seconds),
        )

    def _make_request(
        self,
        message: Any,
        payload: Any,
        protocol: Any,
        writer: Any,
        task: asyncio.Task[None],
    ) -> aiohttp.web.BaseRequest:
        return aiohttp.web.BaseRequest(
            message, payload, protocol, writer, task, asyncio.get_running_loop(), client_max_size=MAX_REQUEST_BODY_BYTES
        )

    def _session_for(self, headers: Mapping[str, str]) -> aiohttp.ClientSession:
        # A client certificate would win over the client's bearer token in the API server's authenticator chain,
        # so it is presented only on requests that carry no Authorization of their own.
        session = self._session
        if "Authorization" not in headers and self._cert_session is not None:
            session = self._cert_session
        if session is None:
            raise RuntimeError("the API proxy is not running")
        return session

    async def _fetch_discovery(self, path: str, headers: Mapping[str, str]) -> Any:
        discovery_headers = {"Accept": "application/json"}
        if "Authorization" in headers:
            discovery_headers["Authorization"] = headers["Authorization"]
        session = self._session_for(discovery_headers)
        async with session.get(
            URL(self.upstream_url + path, encoded=True),
            headers=discovery_headers,
            timeout=aiohttp.ClientTimeout(total=DISCOVERY_TIMEOUT_SECONDS),
        ) as response:
            body = await response.read()
            if response.status != 200:
                raise DiscoveryError(f"GET {path} answered {response.status}: {body[:200]!r}")
            encoding = response.headers.get("Content-Encoding", "")
            if encoding:
                raise DiscoveryError(f"GET {path} answered with Content-Encoding {encoding}, not asked for")
            return json.loads(body)

    async def _handle(self, request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        arrived = time.monotonic()
        info = parse_request_info(request.method, request.path, request.query_string)
        record = record_for(request, info)
        self.requests.add(record)
        try:
            return await self._serve(request, info, record, arrived)
        except Exception as exc:
            if isinstance(exc, ConnectionResetError) and (request.transport is None or request.transport.is_closing()):
                # The client went away before its answer was written (a process killed mid-request, as a test's
                # leader is): nobody to answer, and not the proxy's failure. 499 as proxies log it.
                record.code = 499
                raise
            self.internal_errors.append(exc)
            if request.writer.output_size > 0:
                # The answer's head is already out; the client can only be told by a broken connection.
                if request.transport is not None:
                    request.transport.close()
                raise
            record.code = 500
            return status_response(500, "InternalError", f"the API proxy failed: {exc!r}")

    async def _serve(
        self, request: aiohttp.web.BaseRequest, info: RequestInfo, record: RequestRecord, arrived: float
    ) -> aiohttp.web.StreamResponse:
        if info.is_resource_request and info.resource:
            # Before faults are applied: their `match` predicates select by kind.
            record.kind = await self.kinds.kind_of(info.group, info.version, info.resource, request.headers)
        if is_upgrade(request.headers):
            record.code = 501
            return status_response(
                501, "NotImplemented", "the API proxy does not relay protocol upgrades (exec, attach, port-forward)"
            )
        body = await request.read()
        record.body_bytes = len(body)
        try:
            await self.faults.apply(record)
        except InjectedError as failure:
            record.code = failure.code
            return failure.response()
        return await self._forward(request, body, record, info, arrived)

    async def _forward(
        self,
        request: aiohttp.web.BaseRequest,
        body: bytes,
        record: RequestRecord,
        info: RequestInfo,
        arrived: float,
    ) -> aiohttp.web.StreamResponse:
        headers = forwarded_request_headers(request.headers)
        session = self._session_for(headers)
        # The path and query exactly as the client encoded them (field selectors, escaped names).
        url = URL(self.upstream_url + request.raw_path, encoded=True)
        try:
            upstream = await session.request(
                request.method,
                url,
                headers=headers,
                data=body if body else None,
                allow_redirects=False,
                skip_auto_headers=CLIENT_DEFAULT_HEADERS,
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.upstream_errors.append(exc)
            record.code = 502
            return status_response(502, "InternalError", f"the API proxy could not reach the API server: {exc}")
        async with upstream:
            record.code = upstream.status
            if not record.kind and info.resource and 200 <= upstream.status < 300:
                # The server serves the resource, so discovery read before this request arrived is out of date
                # (a CRD installed since). Settled before the client has its answer, so the record is complete
                # when the client goes on.
                record.kind = await self.kinds.kind_of(
                    info.group, info.version, info.resource, request.headers, stale_before=arrived
                )
            response = aiohttp.web.StreamResponse(
                status=upstream.status, reason=upstream.reason, headers=relayed_response_headers(upstream.headers)
            )
            await response.prepare(request)
            if record.verb == "watch":
                completed = await self._relay_watch(upstream, response, record)
            else:
                completed = await self._relay(upstream, response)
            if not completed:
                # The stream broke (or was dropped): end the client's connection without a clean end of body,
                # so the client sees the same truncated stream a dying server would give it.
                if request.transport is not None:
                    request.transport.close()
                return response
            await response.write_eof()
            return response

    async def _relay(self, upstream: aiohttp.ClientResponse, response: aiohttp.web.StreamResponse) -> bool:
        """Relay the body chunk by chunk as it arrives; False when the upstream broke off mid-body."""
        try:
            async for chunk in upstream.content.iter_any():
                try:
                    await response.write(chunk)
                except ConnectionResetError:
                    # The client hung up; its side is gone, and the upstream response is released by the caller.
                    return False
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as exc:
            self.upstream_errors.append(exc)
            return False
        return True

    async def _relay_watch(
        self, upstream: aiohttp.ClientResponse, response: aiohttp.web.StreamResponse, record: RequestRecord
    ) -> bool:
        """Relay a watch stream until it ends or `faults.drop_watches` cuts it; False when it did not end cleanly."""
        dropped = self.faults.watch_opened(record)
        relay = asyncio.ensure_future(self._relay(upstream, response))
        drop = asyncio.ensure_future(dropped.wait())
        try:
            done, _ = await asyncio.wait({relay, drop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.faults.watch_closed(dropped)
            for task in (relay, drop):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        if relay in done and not relay.cancelled():
            return relay.result()
        # Dropped: the upstream connection goes too, as it would behind a dead load balancer.
        upstream.close()
        return False
