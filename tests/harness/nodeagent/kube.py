"""A small asyncio client for the Kubernetes REST API, configured from a kubeconfig file.

The node agent and the tests talk to whatever API server the kubeconfig names (the test control plane or a
real cluster) in plain REST: list, get, create, merge-patch, delete, watch and the
status subresource. The official ``kubernetes`` package reads the kubeconfig (contexts, tokens,
client certificates, exec plugins); the requests themselves go over aiohttp.
"""

import json
import ssl
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Any, Self

import aiohttp
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

JsonObject = dict[str, Any]

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"


class ApiError(Exception):
    """A non-2xx answer from the API server."""

    def __init__(self, status: int, method: str, path: str, body: str) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {body[:500]}")
        self.status = status


class KubeClient:
    """REST access to one API server; use as ``async with KubeClient(kubeconfig) as kube``."""

    def __init__(self, kubeconfig: str, *, request_timeout_seconds: float = 10.0) -> None:
        configuration = k8s_client.Configuration()
        k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)  # type: ignore[no-untyped-call]
        _, context = k8s_config.list_kube_config_contexts(config_file=kubeconfig)  # type: ignore[no-untyped-call]
        # The context's namespace, as kubectl takes it: where this client's caller works unless it says otherwise.
        self.namespace: str = (context.get("context") or {}).get("namespace") or "default"
        self._base_url = configuration.host.rstrip("/")
        self._headers: dict[str, str] = {"Accept": "application/json"}
        token = configuration.api_key.get("authorization") or configuration.api_key.get("BearerToken")
        if token:
            self._headers["Authorization"] = token if token.startswith("Bearer ") else f"Bearer {token}"
        self._ssl: ssl.SSLContext | bool = True
        if self._base_url.startswith("https://"):
            context = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
            if configuration.cert_file:
                context.load_cert_chain(configuration.cert_file, configuration.key_file)
            if not configuration.verify_ssl:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            self._ssl = context
        self._timeout = aiohttp.ClientTimeout(total=request_timeout_seconds)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        self._session = aiohttp.ClientSession(headers=self._headers)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("KubeClient is used outside its `async with` block")
        return self._session

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        content_type: str = "application/json",
        params: Mapping[str, str] | None = None,
    ) -> JsonObject:
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if body is not None else {}
        async with self.session.request(
            method,
            self._base_url + path,
            data=data,
            headers=headers,
            params=params,
            ssl=self._ssl,
            timeout=self._timeout,
        ) as response:
            text = await response.text()
            if response.status >= 300:
                raise ApiError(response.status, method, path, text)
            parsed: JsonObject = json.loads(text) if text else {}
            return parsed

    async def request_text(self, path: str) -> str:
        """GET a non-JSON resource (a pod's log)."""
        async with self.session.get(self._base_url + path, ssl=self._ssl, timeout=self._timeout) as response:
            text = await response.text()
            if response.status >= 300:
                raise ApiError(response.status, "GET", path, text)
            return text

    async def evict(self, namespace: str, pod: str) -> None:
        """The Eviction API, as a node drain uses it: the API server marks the pod DisruptionTarget and deletes it
        gracefully."""
        eviction = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": pod, "namespace": namespace}}
        await self.create(namespaced_path("v1", "pods", namespace, pod) + "/eviction", eviction)

    async def list(self, path: str) -> list[JsonObject]:
        items: list[JsonObject] = (await self.request("GET", path)).get("items") or []
        return items

    async def get(self, path: str) -> JsonObject | None:
        try:
            return await self.request("GET", path)
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    async def create(self, path: str, body: Mapping[str, Any]) -> JsonObject:
        return await self.request("POST", path, body=body)

    async def merge_patch(
        self, path: str, body: Mapping[str, Any], *, content_type: str = MERGE_PATCH
    ) -> JsonObject | None:
        """Merge-patch an object (or, with ``content_type=STRATEGIC_MERGE_PATCH``, merge lists by their keys as
        built-in types declare them); None when it is gone (a patch racing a deletion is not an error here)."""
        try:
            return await self.request("PATCH", path, body=body, content_type=content_type)
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    async def delete(self, path: str, *, grace_period_seconds: int | None = None) -> None:
        body = None if grace_period_seconds is None else {"gracePeriodSeconds": grace_period_seconds}
        try:
            await self.request("DELETE", path, body=body)
        except ApiError as error:
            if error.status != 404:
                raise

    async def watch(self, path: str, *, resource_version: str = "") -> AsyncIterator[JsonObject]:
        """Yield watch events (from ``resource_version``, when given) until the server ends the stream; the caller
        re-lists and re-watches."""
        params = {"watch": "true", "allowWatchBookmarks": "false"}
        if resource_version:
            params["resourceVersion"] = resource_version
        async with self.session.get(
            self._base_url + path,
            params=params,
            ssl=self._ssl,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._timeout.total),
        ) as response:
            if response.status >= 300:
                raise ApiError(response.status, "WATCH", path, await response.text())
            async for line in response.content:
                if line.strip():
                    event: JsonObject = json.loads(line)
                    yield event


def namespaced_path(api: str, plural: str, namespace: str | None, name: str | None = None) -> str:
    """``/api/v1/namespaces/ns/pods/name``; cluster-wide listing when namespace is None."""
    base = "/api/v1" if api == "v1" else f"/apis/{api}"
    path = f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"
    return f"{path}/{name}" if name else path
