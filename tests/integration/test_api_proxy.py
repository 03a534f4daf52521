"""The API proxy against a real HTTPS upstream on 127.0.0.1: a small Kubernetes-shaped server with its own CA."""

from __future__ import annotations

import asyncio
import json
import signal
import ssl
import stat
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import aiohttp.web
import pytest
import yaml
from aiohttp.typedefs import Handler
from multidict import CIMultiDictProxy
from yarl import URL

from tests.harness.apiproxy import ApiProxy, Faults, RequestInfo, RequestRecord, ThreadedApiProxy, parse_request_info
from tests.harness.controlplane.pki import CertificateAuthority, CertificatePair

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
TOKEN = "proxy-test-token"  # a meaningless credential the fake upstream only echoes back
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CONFIGMAPS = "/api/v1/namespaces/default/configmaps"
READ_TIMEOUT_SECONDS = 5.0


# ----- a CA and certificates for the upstream, made fresh for the module (the control plane's PKI code) -----


@dataclass
class Pki:
    trusted: CertificateAuthority
    untrusted: CertificateAuthority
    server: tuple[Path, Path]
    untrusted_server: tuple[Path, Path]
    client: tuple[Path, Path]


def _pair(certificate: CertificatePair) -> tuple[Path, Path]:
    return certificate.cert, certificate.key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    trusted = CertificateAuthority(directory / "trusted", "trusted")
    untrusted = CertificateAuthority(directory / "untrusted", "untrusted")
    loopback = {"dns_names": ("localhost",), "ip_addresses": ("127.0.0.1",), "server": True}
    return Pki(
        trusted=trusted,
        untrusted=untrusted,
        server=_pair(trusted.issue("apiserver", "apiserver", **loopback)),
        untrusted_server=_pair(untrusted.issue("impostor", "impostor", **loopback)),
        client=_pair(trusted.issue("proxy-client", "system:proxy-client", client=True)),
    )


# ----- the upstream: a few Kubernetes-shaped endpoints over HTTPS -----


def resource_list(group_version: str, resources: dict[str, str]) -> dict[str, Any]:
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": [{"name": name, "kind": kind, "namespaced": True} for name, kind in resources.items()],
    }


def configmap(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default"}}


def watch_line(event_type: str, obj: dict[str, Any]) -> bytes:
    return json.dumps({"type": event_type, "object": obj}).encode() + b"\n"


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class FakeApiServer:
    """A Kubernetes-shaped HTTPS server: discovery, a ConfigMap list and watch, a create, and an echo for the rest."""

    certificate: tuple[Path, Path]
    client_ca: Path
    discovery: dict[str, dict[str, str]] = field(
        default_factory=lambda: {
            "/api/v1": {
                "configmaps": "ConfigMap",
                "secrets": "Secret",
                "pods": "Pod",
                "pods/log": "Pod",
                "pods/status": "Pod",
                "serviceaccounts": "ServiceAccount",
                "serviceaccounts/token": "TokenRequest",
                "namespaces": "Namespace",
                "namespaces/finalize": "Namespace",
            },
            "/apis/batch/v1": {"jobs": "Job", "jobs/status": "Job"},
            "/apis/agentrun.dev/v1alpha1": {"agentruns": "AgentRun", "agentruns/status": "AgentRun"},
        }
    )
    received: list[Received] = field(default_factory=list)
    # Events for the open watch after its first; None ends the stream cleanly.
    watch_events: asyncio.Queue[dict[str, Any] | None] = field(default_factory=asyncio.Queue)
    watches_cancelled: int = 0
    url: str = ""
    _runner: aiohttp.web.AppRunner | None = None

    def paths_received(self) -> list[str]:
        return [request.path for request in self.received]

    async def __aenter__(self) -> FakeApiServer:
        app = aiohttp.web.Application(middlewares=[self._remember])
        app.router.add_get("/api/v1", self._discovery)
        app.router.add_get("/apis/{group}/{version}", self._discovery)
        app.router.add_get(CONFIGMAPS, self._configmaps)
        app.router.add_post(CONFIGMAPS, self._create_configmap)
        app.router.add_route("*", "/{tail:.*}", self._echo)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*map(str, self.certificate))
        context.load_verify_locations(cafile=str(self.client_ca))
        # Optional, as kube-apiserver asks: a client certificate authenticates, a bearer token does as well.
        context.verify_mode = ssl.CERT_OPTIONAL
        # The watch handler learns of a proxy that cut its connection by being cancelled.
        self._runner = aiohttp.web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0)
        await self._runner.setup()
        site = aiohttp.web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        self.url = f"https://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @aiohttp.web.middleware
    async def _remember(self, request: aiohttp.web.Request, handler: Handler) -> aiohttp.web.StreamResponse:
        self.received.append(Received(request.method, request.raw_path, dict(request.headers)))
        return await handler(request)

    async def _discovery(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        resources = self.discovery.get(request.path)
        if resources is None:
            return aiohttp.web.json_response(
                {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404},
                status=404,
            )
        return aiohttp.web.json_response(
            resource_list(request.path.removeprefix("/apis/").removeprefix("/api/"), resources)
        )

    async def _configmaps(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        if request.query.get("watch") in ("true", "1"):
            return await self._watch(request)
        response = aiohttp.web.json_response(
            {"kind": "ConfigMapList", "apiVersion": "v1", "metadata": {}, "items": [configmap("a")]},
            headers={"Audit-Id": "audit-1", "X-Upstream": "fake"},
        )
        response.headers.add("Warning", '299 - "first"')
        response.headers.add("Warning", '299 - "second"')
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            response.enable_compression(aiohttp.web.ContentCoding.gzip)
        return response

    async def _watch(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(watch_line("ADDED", configmap("first")))
        try:
            while (event := await self.watch_events.get()) is not None:
                await response.write(watch_line("MODIFIED", event))
        except asyncio.CancelledError:
            self.watches_cancelled += 1
            raise
        await response.write_eof()
        return response

    async def _create_configmap(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        body = await request.json()
        return aiohttp.web.json_response(body, status=201, headers={"Audit-Id": "audit-2"})

    async def _echo(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        common_name = None
        if peer:
            common_name = next(value for rdn in peer["subject"] for key, value in rdn if key == "commonName")
        return aiohttp.web.json_response(
            {
                "method": request.method,
                "path": request.raw_path,
                "headers": [[name, value] for name, value in request.headers.items()],
                "body": (await request.read()).decode(),
                "clientCertificate": common_name,
            }
        )


@pytest.fixture
async def upstream(pki: Pki) -> AsyncIterator[FakeApiServer]:
    async with FakeApiServer(pki.server, pki.trusted.cert) as server:
        yield server


@pytest.fixture
async def proxy(upstream: FakeApiServer, pki: Pki) -> AsyncIterator[ApiProxy]:
    async with ApiProxy(upstream.url, ca_file=pki.trusted.cert) as running:
        yield running
    assert running.internal_errors == []


@pytest.fixture
async def client(proxy: ApiProxy) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=proxy.url, headers=AUTH) as session:
        yield session


@dataclass
class Answer:
    """A response read whole, so its connection goes back to the pool at once."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def call(session: aiohttp.ClientSession, method: str, url: str | URL, **kwargs: Any) -> Answer:
    async with session.request(method, url, **kwargs) as response:
        return Answer(response.status, response.headers, await response.read())


# ----- request info: the API server's rules, as a table -----

REQUEST_INFO_TABLE: list[tuple[str, str, RequestInfo]] = [
    # (method, path with query, expected request info)
    ("GET", "/readyz", RequestInfo(False, "get")),
    ("GET", "/version", RequestInfo(False, "get")),
    ("POST", "/readyz", RequestInfo(False, "post")),
    ("GET", "/", RequestInfo(False, "get")),
    ("GET", "/healthz/etcd", RequestInfo(False, "get")),
    ("GET", "/openapi/v3/apis/batch/v1", RequestInfo(False, "get")),
    ("GET", "/api", RequestInfo(False, "get")),
    ("GET", "/api/v1", RequestInfo(False, "get")),
    ("GET", "/apis", RequestInfo(False, "get")),
    ("GET", "/apis/batch", RequestInfo(False, "get")),
    ("GET", "/apis/batch/v1", RequestInfo(False, "get")),
    ("GET", f"{CONFIGMAPS}", RequestInfo(True, "list", "api", "", "v1", "default", "configmaps")),
    ("GET", f"{CONFIGMAPS}/", RequestInfo(True, "list", "api", "", "v1", "default", "configmaps")),
    ("GET", f"{CONFIGMAPS}?watch=true", RequestInfo(True, "watch", "api", "", "v1", "default", "configmaps")),
    ("GET", f"{CONFIGMAPS}?watch=1", RequestInfo(True, "watch", "api", "", "v1", "default", "configmaps")),
    ("GET", f"{CONFIGMAPS}?watch=False", RequestInfo(True, "list", "api", "", "v1", "default", "configmaps")),
    ("GET", f"{CONFIGMAPS}?watch=0", RequestInfo(True, "list", "api", "", "v1", "default", "configmaps")),
    ("GET", f"{CONFIGMAPS}/cm", RequestInfo(True, "get", "api", "", "v1", "default", "configmaps", name="cm")),
    ("HEAD", f"{CONFIGMAPS}/cm", RequestInfo(True, "get", "api", "", "v1", "default", "configmaps", name="cm")),
    ("POST", CONFIGMAPS, RequestInfo(True, "create", "api", "", "v1", "default", "configmaps")),
    ("PUT", f"{CONFIGMAPS}/cm", RequestInfo(True, "update", "api", "", "v1", "default", "configmaps", name="cm")),
    ("PATCH", f"{CONFIGMAPS}/cm", RequestInfo(True, "patch", "api", "", "v1", "default", "configmaps", name="cm")),
    ("DELETE", f"{CONFIGMAPS}/cm", RequestInfo(True, "delete", "api", "", "v1", "default", "configmaps", name="cm")),
    ("DELETE", CONFIGMAPS, RequestInfo(True, "deletecollection", "api", "", "v1", "default", "configmaps")),
    ("GET", "/api/v1/configmaps", RequestInfo(True, "list", "api", "", "v1", "", "configmaps")),
    # A field selector pinning metadata.name names the object of a list or watch (single-object informers).
    (
        "GET",
        f"{CONFIGMAPS}?fieldSelector=metadata.name%3Dcm&watch=true",
        RequestInfo(True, "watch", "api", "", "v1", "default", "configmaps", name="cm"),
    ),
    (
        "GET",
        f"{CONFIGMAPS}?fieldSelector=status.phase%3DRunning,metadata.name%3D%3Dcm",
        RequestInfo(True, "list", "api", "", "v1", "default", "configmaps", name="cm"),
    ),
    (
        "GET",
        f"{CONFIGMAPS}?fieldSelector=metadata.name%3Da%5C%2Cb",
        RequestInfo(True, "list", "api", "", "v1", "default", "configmaps", name="a,b"),
    ),
    (
        "GET",
        f"{CONFIGMAPS}?fieldSelector=metadata.name!%3Dcm",
        RequestInfo(True, "list", "api", "", "v1", "default", "configmaps"),
    ),
    (
        "GET",
        f"{CONFIGMAPS}?fieldSelector=metadata.name",
        RequestInfo(True, "list", "api", "", "v1", "default", "configmaps"),
    ),
    # The legacy path verb: /watch/ before the resource.
    (
        "GET",
        "/api/v1/watch/namespaces/default/configmaps",
        RequestInfo(True, "watch", "api", "", "v1", "default", "configmaps"),
    ),
    (
        "GET",
        "/api/v1/watch/namespaces/default/configmaps/cm",
        RequestInfo(True, "watch", "api", "", "v1", "default", "configmaps", name="cm"),
    ),
    ("GET", "/api/v1/watch", RequestInfo(True, "", "api", "", "v1")),
    # Subresources.
    (
        "GET",
        "/api/v1/namespaces/default/pods/p/log?follow=true&container=runner",
        RequestInfo(True, "get", "api", "", "v1", "default", "pods", "log", "p"),
    ),
    (
        "PATCH",
        "/api/v1/namespaces/default/pods/p/status",
        RequestInfo(True, "patch", "api", "", "v1", "default", "pods", "status", "p"),
    ),
    (
        "POST",
        "/api/v1/namespaces/agents/serviceaccounts/runner/token",
        RequestInfo(True, "create", "api", "", "v1", "agents", "serviceaccounts", "token", "runner"),
    ),
    (
        "GET",
        "/api/v1/namespaces/default/services/svc:http/proxy/metrics/x",
        RequestInfo(True, "get", "api", "", "v1", "default", "services", "proxy", "svc:http"),
    ),
    (
        "GET",
        "/api/v1/proxy/namespaces/default/services/svc/metrics",
        RequestInfo(True, "proxy", "api", "", "v1", "default", "services", "", "svc"),
    ),
    # Namespaces are cluster-scoped, and their own namespace; status and finalize are their subresources.
    ("GET", "/api/v1/namespaces", RequestInfo(True, "list", "api", "", "v1", "", "namespaces")),
    (
        "GET",
        "/api/v1/namespaces/team-a",
        RequestInfo(True, "get", "api", "", "v1", "team-a", "namespaces", name="team-a"),
    ),
    (
        "PUT",
        "/api/v1/namespaces/team-a/finalize",
        RequestInfo(True, "update", "api", "", "v1", "team-a", "namespaces", "finalize", "team-a"),
    ),
    (
        "GET",
        "/api/v1/namespaces/team-a/status",
        RequestInfo(True, "get", "api", "", "v1", "team-a", "namespaces", "status", "team-a"),
    ),
    ("GET", "/api/v1/nodes/node-1", RequestInfo(True, "get", "api", "", "v1", "", "nodes", name="node-1")),
    # Named groups.
    (
        "GET",
        "/apis/batch/v1/namespaces/default/jobs",
        RequestInfo(True, "list", "apis", "batch", "v1", "default", "jobs"),
    ),
    ("GET", "/apis/batch/v1/jobs?watch=true", RequestInfo(True, "watch", "apis", "batch", "v1", "", "jobs")),
    (
        "PATCH",
        "/apis/agentrun.dev/v1alpha1/namespaces/default/agentruns/r1/status",
        RequestInfo(True, "patch", "apis", "agentrun.dev", "v1alpha1", "default", "agentruns", "status", "r1"),
    ),
    (
        "GET",
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/agentruns.agentrun.dev",
        RequestInfo(
            True,
            "get",
            "apis",
            "apiextensions.k8s.io",
            "v1",
            "",
            "customresourcedefinitions",
            name="agentruns.agentrun.dev",
        ),
    ),
    (
        "POST",
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        RequestInfo(True, "create", "apis", "authorization.k8s.io", "v1", "", "selfsubjectaccessreviews"),
    ),
    (
        "DELETE",
        "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases",
        RequestInfo(True, "deletecollection", "apis", "coordination.k8s.io", "v1", "kube-system", "leases"),
    ),
]


@pytest.mark.parametrize(
    ("method", "url", "expected"), REQUEST_INFO_TABLE, ids=[f"{method} {url}" for method, url, _ in REQUEST_INFO_TABLE]
)
def test_request_info_follows_the_api_servers_rules(method: str, url: str, expected: RequestInfo) -> None:
    path, _, query = url.partition("?")
    assert parse_request_info(method, path, query) == expected


# ----- relaying -----


async def test_status_headers_and_body_pass_through(
    proxy: ApiProxy, client: aiohttp.ClientSession, upstream: FakeApiServer
) -> None:
    listed = await call(client, "GET", CONFIGMAPS)
    assert listed.status == 200
    assert listed.headers["Audit-Id"] == "audit-1"
    assert listed.headers["X-Upstream"] == "fake"
    assert listed.headers.getall("Warning") == ['299 - "first"', '299 - "second"']
    # Compressed by the upstream and relayed as such; the client, not the proxy, decodes it.
    assert listed.headers["Content-Encoding"] == "gzip"
    assert listed.json() == {
        "kind": "ConfigMapList",
        "apiVersion": "v1",
        "metadata": {},
        "items": [configmap("a")],
    }

    created = await call(client, "POST", CONFIGMAPS, json=configmap("b"))
    assert (created.status, created.headers["Audit-Id"], created.json()) == (201, "audit-2", configmap("b"))

    missing = await call(client, "GET", "/apis/example.dev/v1")
    assert missing.status == 404
    assert missing.json()["reason"] == "NotFound"
    assert [record.code for record in proxy.requests] == [200, 201, 404]


async def test_client_headers_path_and_body_reach_the_upstream(
    proxy: ApiProxy, client: aiohttp.ClientSession, upstream: FakeApiServer
) -> None:
    path = "/api/v1/namespaces/default/pods?fieldSelector=metadata.name%3Dp%2Cspec.nodeName%3Dn&limit=5"
    answer = await call(
        client,
        "PATCH",
        # Sent as written: the proxy must relay the client's own encoding of path and query.
        URL(proxy.url + path, encoded=True),
        data=b'{"metadata":{"labels":{"a":"b"}}}',
        headers={
            "Content-Type": "application/merge-patch+json",
            "Accept": "application/json;as=Table;v=v1;g=meta.k8s.io",
            "User-Agent": "agentrun-operator/test",
            "Impersonate-User": "alice",
            "Impersonate-Group": "team-a",
            "Connection": "X-Only-This-Hop",
            "X-Only-This-Hop": "1",
            "Proxy-Authorization": "Basic c2VjcmV0",
        },
    )
    echoed = answer.json()
    headers = dict(echoed["headers"])
    assert echoed["method"] == "PATCH"
    assert echoed["path"] == path
    assert echoed["body"] == '{"metadata":{"labels":{"a":"b"}}}'
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert headers["Content-Type"] == "application/merge-patch+json"
    assert headers["Accept"] == "application/json;as=Table;v=v1;g=meta.k8s.io"
    assert headers["User-Agent"] == "agentrun-operator/test"
    assert (headers["Impersonate-User"], headers["Impersonate-Group"]) == ("alice", "team-a")
    # Hop-by-hop headers belong to the client's connection with the proxy.
    assert "X-Only-This-Hop" not in headers
    assert "Proxy-Authorization" not in headers
    # A client with a token of its own does not borrow the proxy's certificate (there is none here anyway).
    assert echoed["clientCertificate"] is None


async def test_a_request_without_a_token_is_sent_with_the_client_certificate(upstream: FakeApiServer, pki: Pki) -> None:
    certificate, key = pki.client
    async with (
        ApiProxy(upstream.url, ca_file=pki.trusted.cert, client_cert=certificate, client_key=key) as proxy,
        aiohttp.ClientSession(base_url=proxy.url) as session,
    ):
        anonymous = (await call(session, "GET", "/api/v1/namespaces/default/secrets/s")).json()
        with_token = (await call(session, "GET", "/api/v1/namespaces/default/secrets/s", headers=AUTH)).json()
    assert anonymous["clientCertificate"] == "system:proxy-client"
    assert "Authorization" not in dict(anonymous["headers"])
    # The API server would take a certificate over the token; a client with a token must stay itself.
    assert with_token["clientCertificate"] is None
    assert dict(with_token["headers"])["Authorization"] == f"Bearer {TOKEN}"


# ----- records -----


async def test_records_describe_each_request_with_its_kind_from_discovery(
    proxy: ApiProxy, client: aiohttp.ClientSession, upstream: FakeApiServer
) -> None:
    started = time.time()
    calls: list[tuple[str, str, tuple[str, str, str, str, str, str, str]]] = [
        # (method, path, (verb, group, resource, subresource, namespace, name, kind))
        ("GET", "/readyz", ("", "", "", "", "", "", "")),
        ("GET", "/version", ("", "", "", "", "", "", "")),
        ("GET", CONFIGMAPS, ("list", "", "configmaps", "", "default", "", "ConfigMap")),
        ("GET", f"{CONFIGMAPS}/cm", ("get", "", "configmaps", "", "default", "cm", "ConfigMap")),
        (
            "DELETE",
            "/api/v1/namespaces/default/secrets",
            ("deletecollection", "", "secrets", "", "default", "", "Secret"),
        ),
        ("GET", "/api/v1/namespaces/default/pods/p/log", ("get", "", "pods", "log", "default", "p", "Pod")),
        ("PATCH", "/api/v1/namespaces/default/pods/p/status", ("patch", "", "pods", "status", "default", "p", "Pod")),
        (
            "POST",
            "/api/v1/namespaces/default/serviceaccounts/runner/token",
            ("create", "", "serviceaccounts", "token", "default", "runner", "ServiceAccount"),
        ),
        ("GET", "/api/v1/namespaces/team-a", ("get", "", "namespaces", "", "team-a", "team-a", "Namespace")),
        ("GET", "/apis/batch/v1/jobs", ("list", "batch", "jobs", "", "", "", "Job")),
        ("PUT", "/apis/batch/v1/namespaces/default/jobs/j", ("update", "batch", "jobs", "", "default", "j", "Job")),
        (
            "PATCH",
            "/apis/agentrun.dev/v1alpha1/namespaces/default/agentruns/r1/status",
            ("patch", "agentrun.dev", "agentruns", "status", "default", "r1", "AgentRun"),
        ),
        ("GET", "/apis/example.dev/v1/widgets", ("list", "example.dev", "widgets", "", "", "", "")),
    ]
    for method, path, _ in calls:
        answer = await call(client, method, path, headers={"User-Agent": f"tester/{method}"})
        assert answer.status == 200, path

    described = [(r.verb, r.group, r.resource, r.subresource, r.namespace, r.name, r.kind) for r in proxy.requests]
    assert described == [expected for _, _, expected in calls]
    assert [(r.method, r.path, r.code, r.user_agent) for r in proxy.requests] == [
        (method, path, 200, f"tester/{method}") for method, path, _ in calls
    ]
    assert all(started <= record.at <= time.time() for record in proxy.requests)
    assert proxy.requests.count(kind="Pod") == 2
    assert proxy.requests.count(verb="patch", kind="AgentRun", subresource="status") == 1
    assert proxy.requests.by_kind_and_verb()[("Job", "list")] == 1
    # Each group version's discovery document was read once, however many requests it answered for, with the
    # credentials of the request that needed it.
    assert upstream.paths_received().count("/api/v1") == 1
    assert upstream.paths_received().count("/apis/batch/v1") == 1
    core_discovery = next(request for request in upstream.received if request.path == "/api/v1")
    assert core_discovery.headers["Authorization"] == f"Bearer {TOKEN}"
    # A group the server does not list has no kind, and says why.
    assert any("/apis/example.dev/v1" in str(error) for error in proxy.discovery_errors)


async def test_a_resource_installed_after_discovery_was_read_gets_its_kind(
    proxy: ApiProxy, client: aiohttp.ClientSession, upstream: FakeApiServer
) -> None:
    pools = "/apis/agentrun.dev/v1alpha1/throttlepools"
    assert (await call(client, "GET", pools)).status == 200
    # As when a CRD is installed: the group version's document now lists the new resource.
    upstream.discovery["/apis/agentrun.dev/v1alpha1"]["throttlepools"] = "ThrottlePool"
    assert (await call(client, "GET", pools)).status == 200
    assert [record.kind for record in proxy.requests] == ["", "ThrottlePool"]
    assert proxy.requests.count(kind="ThrottlePool", verb="list") == 1


# ----- faults -----


def is_configmap_create(record: RequestRecord) -> bool:
    return record.kind == "ConfigMap" and record.verb == "create"


async def test_injected_500s_are_answered_by_the_proxy_and_never_forwarded(
    proxy: ApiProxy, client: aiohttp.ClientSession, upstream: FakeApiServer
) -> None:
    fault = proxy.faults.inject(500, count=2, match=is_configmap_create)
    failed = [await call(client, "POST", CONFIGMAPS, json=configmap(f"x{n}")) for n in range(2)]
    listed = await call(client, "GET", CONFIGMAPS)
    created = await call(client, "POST", CONFIGMAPS, json=configmap("x2"))

    assert [answer.status for answer in failed] == [500, 500]
    status = failed[0].json()
    assert (status["kind"], status["status"], status["reason"], status["code"]) == (
        "Status",
        "Failure",
        "InternalError",
        500,
    )
    assert (listed.status, created.status) == (200, 201)
    assert fault.hits == 2
    assert proxy.faults.pending == []
    assert [r.method for r in upstream.received if r.path == CONFIGMAPS] == ["GET", "POST"]
    assert [(r.verb, r.code) for r in proxy.requests] == [
        ("create", 500),
        ("create", 500),
        ("list", 200),
        ("create", 201),
    ]


async def test_injected_429_carries_retry_after_in_header_and_status(
    proxy: ApiProxy, client: aiohttp.ClientSession, upstream: FakeApiServer
) -> None:
    proxy.faults.inject(429, retry_after=1.5, match=lambda record: record.kind == "Secret")
    throttled = await call(client, "GET", "/api/v1/namespaces/default/secrets/token")
    status = throttled.json()
    assert throttled.status == 429
    assert throttled.headers["Retry-After"] == "2"
    assert status == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "Too many requests, please try again later.",
        "reason": "TooManyRequests",
        "details": {"retryAfterSeconds": 2},
        "code": 429,
    }
    assert "/api/v1/namespaces/default/secrets/token" not in upstream.paths_received()
    assert (await call(client, "GET", "/api/v1/namespaces/default/secrets/token")).status == 200


async def test_injected_delay_holds_the_request_then_forwards_it(
    proxy: ApiProxy, client: aiohttp.ClientSession, upstream: FakeApiServer
) -> None:
    proxy.faults.inject(delay=0.4, match=lambda record: record.verb == "list")
    began = time.monotonic()
    slow = await call(client, "GET", CONFIGMAPS)
    slow_seconds = time.monotonic() - began
    began = time.monotonic()
    fast = await call(client, "GET", CONFIGMAPS)
    fast_seconds = time.monotonic() - began
    assert (slow.status, fast.status) == (200, 200)
    assert slow_seconds >= 0.4
    assert fast_seconds < 0.4
    assert upstream.paths_received().count(CONFIGMAPS) == 2


async def test_a_fault_predicate_that_raises_is_reported_as_the_proxys_error(
    proxy: ApiProxy, client: aiohttp.ClientSession, upstream: FakeApiServer
) -> None:
    def broken(record: RequestRecord) -> bool:
        raise KeyError(record.resource)

    proxy.faults.inject(500, match=broken)
    answer = await call(client, "GET", CONFIGMAPS)
    assert answer.status == 500
    assert "the API proxy failed: KeyError('configmaps')" in answer.json()["message"]
    assert [repr(error) for error in proxy.internal_errors] == ["KeyError('configmaps')"]
    assert [(record.verb, record.code) for record in proxy.requests] == [("list", 500)]
    assert CONFIGMAPS not in upstream.paths_received()
    proxy.internal_errors.clear()


def test_a_fault_needs_a_status_or_a_delay() -> None:
    with pytest.raises(ValueError, match="a status, a delay"):
        Faults().inject()
    with pytest.raises(ValueError, match="HTTP error code"):
        Faults().inject(200)


# ----- watches -----


async def read_line(stream: aiohttp.StreamReader) -> dict[str, Any]:
    async with asyncio.timeout(READ_TIMEOUT_SECONDS):
        line = await stream.readline()
    assert line.endswith(b"\n"), line
    event: dict[str, Any] = json.loads(line)
    return event


async def test_a_watch_is_relayed_event_by_event_while_the_upstream_streams(
    proxy: ApiProxy, client: aiohttp.ClientSession, upstream: FakeApiServer
) -> None:
    async with client.get(CONFIGMAPS, params={"watch": "true"}) as watch:
        # The first event arrives while the upstream's stream is still open: nothing waits for the whole body.
        assert await read_line(watch.content) == {"type": "ADDED", "object": configmap("first")}
        assert [(r.verb, r.kind) for r in proxy.faults.open_watches] == [("watch", "ConfigMap")]
        await upstream.watch_events.put(configmap("second"))
        assert await read_line(watch.content) == {"type": "MODIFIED", "object": configmap("second")}
        await upstream.watch_events.put(None)
        async with asyncio.timeout(READ_TIMEOUT_SECONDS):
            rest = await watch.content.read()
    assert rest == b""
    assert proxy.faults.open_watches == []
    assert proxy.upstream_errors == []


async def test_drop_watches_cuts_a_live_watch_on_both_sides(
    proxy: ApiProxy, client: aiohttp.ClientSession, upstream: FakeApiServer
) -> None:
    async with client.get(CONFIGMAPS, params={"watch": "1"}) as watch:
        assert (await read_line(watch.content))["type"] == "ADDED"
        assert proxy.faults.drop_watches(match=lambda record: record.kind == "Pod") == 0
        assert proxy.faults.drop_watches(match=lambda record: record.kind == "ConfigMap") == 1
        # The stream ends without its last chunk, as behind a dying load balancer.
        with pytest.raises(aiohttp.ClientPayloadError):
            async with asyncio.timeout(READ_TIMEOUT_SECONDS):
                await watch.content.read()
    assert proxy.faults.open_watches == []
    assert proxy.faults.drop_watches() == 0
    async with asyncio.timeout(READ_TIMEOUT_SECONDS):
        while upstream.watches_cancelled == 0:
            await asyncio.sleep(0.01)
    assert upstream.watches_cancelled == 1


async def test_a_client_that_hangs_up_ends_its_watch_upstream(
    proxy: ApiProxy, client: aiohttp.ClientSession, upstream: FakeApiServer
) -> None:
    async with client.get(CONFIGMAPS, params={"watch": "true"}) as watch:
        assert (await read_line(watch.content))["type"] == "ADDED"
        watch.close()
    async with asyncio.timeout(READ_TIMEOUT_SECONDS):
        while upstream.watches_cancelled == 0 or proxy.faults.open_watches:
            await asyncio.sleep(0.01)
    assert upstream.watches_cancelled == 1
    assert proxy.faults.open_watches == []


async def test_stopping_the_proxy_ends_its_open_watches_at_once(upstream: FakeApiServer, pki: Pki) -> None:
    proxy = ApiProxy(upstream.url, ca_file=pki.trusted.cert, shutdown_timeout_seconds=30)
    await proxy.start()
    url = proxy.url
    try:
        async with (
            aiohttp.ClientSession(base_url=url, headers=AUTH) as session,
            session.get(CONFIGMAPS, params={"watch": "true"}) as watch,
        ):
            assert (await read_line(watch.content))["type"] == "ADDED"
            began = time.monotonic()
            await proxy.stop()
            stopped_seconds = time.monotonic() - began
            with pytest.raises(aiohttp.ClientPayloadError):
                async with asyncio.timeout(READ_TIMEOUT_SECONDS):
                    await watch.content.read()
    finally:
        await proxy.stop()
    # Far below the shutdown timeout: the watch did not hold the proxy's shutdown.
    assert stopped_seconds < 5
    with pytest.raises(RuntimeError, match="not running"):
        _ = proxy.url
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectionError):
            await call(session, "GET", url + "/readyz")


async def test_protocol_upgrades_are_refused_not_forwarded(
    proxy: ApiProxy, client: aiohttp.ClientSession, upstream: FakeApiServer
) -> None:
    exec_path = "/api/v1/namespaces/default/pods/p/exec"
    answer = await call(
        client, "GET", exec_path + "?command=sh", headers={"Connection": "Upgrade", "Upgrade": "websocket"}
    )
    assert answer.status == 501
    assert answer.json()["reason"] == "NotImplemented"
    assert not any(path.startswith(exec_path) for path in upstream.paths_received())
    assert [(r.verb, r.kind, r.subresource, r.code) for r in proxy.requests] == [("get", "Pod", "exec", 501)]


# ----- verification of the upstream -----


async def test_an_upstream_with_a_certificate_from_an_unknown_ca_is_refused(pki: Pki) -> None:
    async with (
        FakeApiServer(pki.untrusted_server, pki.trusted.cert) as impostor,
        ApiProxy(impostor.url, ca_file=pki.trusted.cert) as proxy,
        aiohttp.ClientSession(base_url=proxy.url, headers=AUTH) as session,
    ):
        answer = await call(session, "GET", CONFIGMAPS)
        status = answer.json()
    assert answer.status == 502
    assert (status["kind"], status["code"]) == ("Status", 502)
    assert len(proxy.upstream_errors) == 1
    assert isinstance(proxy.upstream_errors[0], aiohttp.ClientConnectorCertificateError)
    # The handshake failed, so no request (and no token) reached the impostor.
    assert impostor.received == []
    assert [(r.verb, r.code) for r in proxy.requests] == [("list", 502)]


def test_the_upstream_must_be_https(pki: Pki) -> None:
    with pytest.raises(ValueError, match="https://"):
        ApiProxy("http://127.0.0.1:6443", ca_file=pki.trusted.cert)


# ----- from synchronous code and other processes -----


async def test_threaded_proxy_serves_synchronous_clients_with_a_kubeconfig(
    upstream: FakeApiServer, pki: Pki, tmp_path: Path
) -> None:
    def synchronous_client() -> tuple[int, int, dict[str, Any], int, list[str]]:
        with ThreadedApiProxy(upstream.url, ca_file=pki.trusted.cert) as proxy:
            config_path = proxy.write_kubeconfig(tmp_path / "kube" / "config", TOKEN, namespace="agents")
            config = yaml.safe_load(config_path.read_text())
            request = urllib.request.Request(proxy.url + CONFIGMAPS, headers=AUTH)
            with urllib.request.urlopen(request, timeout=READ_TIMEOUT_SECONDS) as answer:
                served = answer.status
            proxy.faults.inject(503, match=lambda record: record.kind == "ConfigMap")
            try:
                urllib.request.urlopen(request, timeout=READ_TIMEOUT_SECONDS)
                failed = 0
            except urllib.error.HTTPError as error:
                failed = error.code
                error.close()
            kinds = [record.kind for record in proxy.requests]
        return served, failed, config, stat.S_IMODE(config_path.stat().st_mode), kinds

    served, failed, config, mode, kinds = await asyncio.to_thread(synchronous_client)
    assert (served, failed) == (200, 503)
    assert kinds == ["ConfigMap", "ConfigMap"]
    assert config["clusters"][0]["cluster"]["server"].startswith("http://127.0.0.1:")
    assert config["users"][0]["user"] == {"token": TOKEN}
    assert config["contexts"][0]["context"]["namespace"] == "agents"
    assert mode == 0o600


async def test_the_command_line_proxy_prints_its_url_and_a_summary(
    upstream: FakeApiServer, pki: Pki, tmp_path: Path
) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.harness.apiproxy",
        "--upstream",
        upstream.url,
        "--ca-file",
        str(pki.trusted.cert),
        "--port",
        "0",
        "--kubeconfig",
        str(tmp_path / "kubeconfig"),
        "--token",
        TOKEN,
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(30):
            url = (await process.stdout.readline()).decode().strip()
            kubeconfig_line = (await process.stdout.readline()).decode().strip()
        assert url.startswith("http://127.0.0.1:")
        assert kubeconfig_line == f"kubeconfig: {tmp_path / 'kubeconfig'}"
        async with aiohttp.ClientSession(headers=AUTH) as session:
            assert (await call(session, "GET", url + CONFIGMAPS)).status == 200
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            output, _ = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0
    assert "ConfigMap" in output.decode()
    assert "list" in output.decode()
