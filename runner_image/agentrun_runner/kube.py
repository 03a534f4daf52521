"""ConfigMap reads and writes against the Kubernetes API, on aiohttp.

Credentials come from the official client's config loaders: the file named by KUBECONFIG when it is
set (the local Job executor sets it), otherwise the pod's in-cluster service account (with token
rotation). The official client's generated API classes are not used: importing them costs seconds
at every pod start, for the four ConfigMap calls the runner makes.
"""

import asyncio
import os
import ssl
from typing import Any
from urllib.parse import quote

import aiohttp
from kubernetes import config
from kubernetes.client import Configuration

from agentrun_api import constants
from agentrun_api.contract import RunIdentity

MERGE_PATCH = "application/merge-patch+json"
# Statuses worth another attempt: the API server is busy or restarting.
_RETRYABLE = frozenset({429, 500, 502, 503, 504})
_ATTEMPTS = 4
_FIRST_BACKOFF_SECONDS = 0.5
_REQUEST_TIMEOUT_SECONDS = 30.0


class KubeError(Exception):
    """An API call failed; the message names the object and the API server's answer."""


def load_configuration() -> Configuration:
    configuration = Configuration()
    try:
        if os.environ.get("KUBECONFIG"):
            config.load_kube_config(config_file=os.environ["KUBECONFIG"], client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except config.ConfigException as error:
        raise KubeError(f"no Kubernetes API access (in-cluster service account or KUBECONFIG): {error}") from None
    return configuration


def _ssl_context(configuration: Configuration) -> ssl.SSLContext | bool:
    if not configuration.host.startswith("https"):
        return False
    context = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
    if configuration.cert_file:
        context.load_cert_chain(configuration.cert_file, configuration.key_file)
    if not configuration.verify_ssl:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def owner_reference(run: RunIdentity) -> dict[str, Any]:
    """An owner reference to the run's AgentRun. No blockOwnerDeletion: setting it needs rights on the
    AgentRun's finalizers, which a runner does not have."""
    return {"apiVersion": constants.API_VERSION, "kind": constants.KIND, "name": run.name, "uid": run.uid}


class ConfigMaps:
    """The few ConfigMap operations the runner needs, in one namespace."""

    def __init__(self, configuration: Configuration, namespace: str, owner: RunIdentity | None = None) -> None:
        self._configuration = configuration
        self._base = f"{configuration.host.rstrip('/')}/api/v1/namespaces/{quote(namespace)}/configmaps"
        self._ssl = _ssl_context(configuration)
        self._session: aiohttp.ClientSession | None = None
        self.namespace = namespace
        # ConfigMaps the runner creates belong to its AgentRun, so deleting the run collects them.
        self._owner_references = [owner_reference(owner)] if owner is not None else []

    async def _call(
        self, method: str, name: str | None, body: Any = None, content_type: str = "application/json"
    ) -> tuple[int, Any]:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=_REQUEST_TIMEOUT_SECONDS))
        url = self._base if name is None else f"{self._base}/{quote(name)}"
        headers = {"Accept": "application/json", "Content-Type": content_type}
        # The loader's hook rotates an expiring token before it is read.
        authorization = self._configuration.get_api_key_with_prefix("BearerToken")
        if authorization:
            headers["Authorization"] = authorization
        what = f"{method} ConfigMap {self.namespace}/{name or ''}"
        for attempt in range(_ATTEMPTS):
            try:
                async with self._session.request(
                    method,
                    url,
                    json=body,
                    headers=headers,
                    ssl=self._ssl,
                    server_hostname=self._configuration.tls_server_name,
                ) as response:
                    payload = await response.json(content_type=None) if response.content_length != 0 else None
                    if response.status not in _RETRYABLE:
                        return response.status, payload
                    problem = f"HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError, ValueError) as error:
                problem = f"{type(error).__name__}: {error}"
            if attempt + 1 < _ATTEMPTS:
                await asyncio.sleep(_FIRST_BACKOFF_SECONDS * 2**attempt)
        raise KubeError(f"{what} failed after {_ATTEMPTS} attempts: {problem}")

    @staticmethod
    def _fail(verb: str, namespace: str, name: str, status: int, payload: Any) -> KubeError:
        message = payload.get("message", "") if isinstance(payload, dict) else ""
        return KubeError(f"cannot {verb} ConfigMap {namespace}/{name}: HTTP {status} {message}".rstrip())

    async def get_data(self, name: str) -> dict[str, str] | None:
        """The ConfigMap's data, or None when it does not exist."""
        status, payload = await self._call("GET", name)
        if status == 404:
            return None
        if status != 200 or not isinstance(payload, dict):
            raise self._fail("read", self.namespace, name, status, payload)
        data = payload.get("data") or {}
        return {key: value for key, value in data.items() if isinstance(value, str)}

    async def create(self, name: str, data: dict[str, str], labels: dict[str, str]) -> bool:
        """Create it; False when it exists already."""
        metadata: dict[str, Any] = {"name": name, "labels": labels}
        if self._owner_references:
            metadata["ownerReferences"] = self._owner_references
        body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}
        status, payload = await self._call("POST", None, body)
        if status == 409:
            return False
        if status not in (200, 201):
            raise self._fail("create", self.namespace, name, status, payload)
        return True

    async def patch_data(self, name: str, data: dict[str, str | None]) -> bool:
        """Merge keys into its data (None removes a key); False when it does not exist."""
        status, payload = await self._call("PATCH", name, {"data": data}, MERGE_PATCH)
        if status == 404:
            return False
        if status != 200:
            raise self._fail("patch", self.namespace, name, status, payload)
        return True

    async def put_data(self, name: str, data: dict[str, str], labels: dict[str, str]) -> None:
        """Patch the keys in, creating the ConfigMap first if it is missing."""
        patch: dict[str, str | None] = dict(data)
        if await self.patch_data(name, patch):
            return
        if not await self.create(name, data, labels):
            await self.patch_data(name, patch)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
