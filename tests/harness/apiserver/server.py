"""Starting the emulated apiserver: `EmulatedApiServer`, an async context manager serving on 127.0.0.1."""

from __future__ import annotations

import asyncio
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import aiohttp.test_utils
import aiohttp.web
import kmock
import yaml

from tests.harness.apiserver.accounting import RequestLog
from tests.harness.apiserver.admission import AdmissionFactory, crd_admission
from tests.harness.apiserver.faults import Faults
from tests.harness.apiserver.handler import ApiServerHandler, AuthorizationPolicy, HandlerSettings, allow_all
from tests.harness.apiserver.resources import Registry, builtin_types, kopf_peering_crds
from tests.harness.apiserver.store import Store

T = TypeVar("T")
TOKEN = "emulated-apiserver-token"  # a fixed, meaningless test credential written into the kubeconfig


@dataclass
class ApiServerSettings:
    """How the emulated apiserver behaves; every field has a default fit for tests."""

    # Port to listen on (127.0.0.1 only); 0 picks a free ephemeral port.
    port: int = 0
    # Watch events kept for resuming watches; a watch from an older resourceVersion gets 410 Gone (etcd compaction).
    history_limit: int = 1000
    # Seconds between BOOKMARK events on watches with allowWatchBookmarks=true.
    bookmark_interval_seconds: float = 1.0
    # Longest watch without timeoutSeconds, in seconds.
    max_watch_seconds: float = 1800.0
    # Also serve kopf's peering CRDs (kopf.dev KopfPeering/ClusterKopfPeering), so kopf finds them at start-up.
    kopf_peering: bool = True
    # Namespaces created at start besides default, kube-system, kube-public and kube-node-lease.
    namespaces: Sequence[str] = ()
    # Where the kubeconfig is written; None makes a temporary directory removed on exit.
    kubeconfig_path: Path | None = None
    handler: HandlerSettings = field(default_factory=HandlerSettings)


MAX_REQUEST_BYTES = 3 * 1024 * 1024  # the apiserver's request body limit (aiohttp's default is 1 MiB)


def _request_factory(
    message: Any, payload: Any, protocol: Any, writer: Any, task: asyncio.Task[None]
) -> aiohttp.web.BaseRequest:
    return aiohttp.web.BaseRequest(
        message, payload, protocol, writer, task, asyncio.get_running_loop(), client_max_size=MAX_REQUEST_BYTES
    )


class _ApiServerTestServer(aiohttp.test_utils.RawTestServer):
    """kmock's HTTP server class, taking request bodies as large as the apiserver does."""

    async def _make_runner(self, debug: bool = True, **kwargs: Any) -> aiohttp.web.ServerRunner:
        server = aiohttp.web.Server(self._handler, debug=debug, request_factory=_request_factory, **kwargs)
        return aiohttp.web.ServerRunner(server, debug=debug, **kwargs)


def load_crds(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """The CustomResourceDefinitions in YAML files (multi-document files allowed; other kinds skipped)."""
    crds = []
    for path in paths:
        for document in yaml.safe_load_all(Path(path).read_text()):
            if isinstance(document, dict) and document.get("kind") == "CustomResourceDefinition":
                crds.append(document)
    return crds


def kubeconfig(url: str, *, namespace: str = "default") -> dict[str, Any]:
    """A kubeconfig with one cluster (the emulator), one token user and one current context."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulated", "cluster": {"server": url}}],
        "users": [{"name": "emulated-user", "user": {"token": TOKEN}}],
        "contexts": [
            {"name": "emulated", "context": {"cluster": "emulated", "user": "emulated-user", "namespace": namespace}}
        ],
        "current-context": "emulated",
    }


class EmulatedApiServer:
    """An emulated kube-apiserver on 127.0.0.1, with CRDs installed from `crd_paths`.

    Exposes `.url`, `.kubeconfig_path`, `.store`, `.faults`, `.requests` (the request log) and `.registry`.
    """

    def __init__(
        self,
        crd_paths: Iterable[str | Path] = (),
        *,
        settings: ApiServerSettings | None = None,
        admission_factory: AdmissionFactory | None = crd_admission,
        authorization_policy: AuthorizationPolicy = allow_all,
    ) -> None:
        self.settings = settings or ApiServerSettings()
        self.registry = Registry()
        for rt in builtin_types():
            self.registry.add(rt)
        self.store = Store(
            self.registry, history_limit=self.settings.history_limit, admission_factory=admission_factory
        )
        self.faults = Faults()
        self.requests = RequestLog()
        self.handler = ApiServerHandler(
            registry=self.registry,
            store=self.store,
            faults=self.faults,
            log=self.requests,
            settings=HandlerSettings(
                bookmark_interval_seconds=self.settings.bookmark_interval_seconds,
                max_watch_seconds=self.settings.max_watch_seconds,
            ),
            authorization_policy=authorization_policy,
        )
        crd_type = self.registry.find("customresourcedefinitions")
        crds = list(load_crds(crd_paths)) + (kopf_peering_crds() if self.settings.kopf_peering else [])
        for crd in crds:
            self.store.create(crd_type, None, crd)
        namespace_type = self.registry.find("namespaces")
        for namespace in self.settings.namespaces:
            self.store.create(namespace_type, None, {"metadata": {"name": namespace}})
        self._server: kmock.Server | None = None
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self.kubeconfig_path: Path = Path()

    @property
    def pod_logs(self) -> dict[tuple[str, str], str]:
        """Text served at pods/<name>/log, keyed by (namespace, pod)."""
        return self.handler.pod_logs

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the emulated apiserver is not running")
        return str(self._server.url).rstrip("/")

    async def __aenter__(self) -> EmulatedApiServer:
        await self.handler.__aenter__()
        self._server = kmock.Server(
            self.handler, host="127.0.0.1", port=self.settings.port or None, server_cls=_ApiServerTestServer
        )
        await self._server.__aenter__()
        if self.settings.kubeconfig_path is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="emulated-apiserver-")
            self.kubeconfig_path = Path(self._tmpdir.name) / "kubeconfig.yaml"
        else:
            self.kubeconfig_path = self.settings.kubeconfig_path
        self.kubeconfig_path.write_text(yaml.safe_dump(kubeconfig(self.url)))
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Open watches would hold the shutdown; end them first.
        self.faults.drop_watches()
        await asyncio.sleep(0)
        try:
            if self._server is not None:
                await self._server.__aexit__(exc_type, exc, tb)
        finally:
            self._server = None
            await self.handler.__aexit__(exc_type, exc, tb)
            if self._tmpdir is not None:
                self._tmpdir.cleanup()
                self._tmpdir = None


class ThreadedApiServer:
    """The emulated apiserver on its own event loop in a background thread, for synchronous tests and tools.

    `with ThreadedApiServer(crd_paths) as server:` gives `.url` and `.kubeconfig_path`; `server.call(fn)` runs
    `fn(apiserver)` on the server's loop (the store is not thread-safe) and returns its result.
    """

    def __init__(self, crd_paths: Iterable[str | Path] = (), **kwargs: Any) -> None:
        self._factory: Callable[[], EmulatedApiServer] = lambda: EmulatedApiServer(crd_paths, **kwargs)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="emulated-apiserver", daemon=True)
        self._server: EmulatedApiServer | None = None

    def __enter__(self) -> ThreadedApiServer:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        return self

    async def _start(self) -> EmulatedApiServer:
        server = self._factory()
        return await server.__aenter__()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if self._server is not None:
                asyncio.run_coroutine_threadsafe(self._server.__aexit__(None, None, None), self._loop).result(
                    timeout=30
                )
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
            self._loop.close()

    @property
    def server(self) -> EmulatedApiServer:
        if self._server is None:
            raise RuntimeError("the emulated apiserver is not running")
        return self._server

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def kubeconfig_path(self) -> Path:
        return self.server.kubeconfig_path

    def call(self, fn: Callable[[EmulatedApiServer], T]) -> T:
        """Run `fn(server)` on the server's loop, e.g. `server.call(lambda s: s.store.all_of("Job"))`."""

        async def run() -> T:
            return fn(self.server)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=30)
