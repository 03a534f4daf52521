"""ConfigMap reads and writes against the Kubernetes API, on aiohttp.

Credentials: in a pod, the in-cluster service account, read here from its mounted files (the token
is re-read at every request, so kubelet's rotation needs nothing more); when KUBECONFIG is set (a runner
started outside a pod, as some tests and benchmarks do), the official client's kubeconfig loader, imported only then. Importing
the ``kubernetes`` package costs about a second at every pod start (it loads all its generated API
classes), which was most of a resumed pod's time before its first model call.
"""

import asyncio
import dataclasses
import json
import os
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

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


# Where kubelet mounts a pod's service account credentials.
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclasses.dataclass(frozen=True)
class ApiAccess:
    """How to reach the API server: its URL, TLS settings and the Authorization header (read per request)."""

    host: str
    authorization: Callable[[], str | None]
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    verify_tls: bool = True
    tls_server_name: str | None = None


def load_configuration() -> ApiAccess:
    if os.environ.get("KUBECONFIG"):
        return _from_kubeconfig(os.environ["KUBECONFIG"])
    return _in_cluster(os.environ, SERVICE_ACCOUNT_DIR)


def _in_cluster(environ: Any, account_dir: Path) -> ApiAccess:
    """The pod's service account, as the official client's in-cluster loader reads it."""
    host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT")
    token_file = account_dir / "token"
    if not host or not port or not token_file.is_file():
        raise KubeError(
            "no Kubernetes API access (in-cluster service account or KUBECONFIG): "
            "KUBERNETES_SERVICE_HOST/PORT or the service account token is missing"
        )
    server = f"[{host}]" if ":" in host else host  # an IPv6 service address

    def bearer() -> str:
        return f"Bearer {token_file.read_text().strip()}"

    return ApiAccess(host=f"https://{server}:{port}", authorization=bearer, ca_file=str(account_dir / "ca.crt"))


def _from_kubeconfig(path: str) -> ApiAccess:
    from kubernetes import config  # only off-cluster: the package takes about a second to import
    from kubernetes.client import Configuration

    configuration = Configuration()
    try:
        config.load_kube_config(config_file=path, client_configuration=configuration)  # type: ignore[no-untyped-call]
    except config.ConfigException as error:
        raise KubeError(f"no Kubernetes API access (in-cluster service account or KUBECONFIG): {error}") from None
    return ApiAccess(
        host=configuration.host,
        # The loader's hook refreshes an expiring token before it is read.
        authorization=lambda: configuration.get_api_key_with_prefix("BearerToken"),
        ca_file=configuration.ssl_ca_cert,
        cert_file=configuration.cert_file,
        key_file=configuration.key_file,
        verify_tls=configuration.verify_ssl,
        tls_server_name=configuration.tls_server_name,
    )


def _ssl_context(access: ApiAccess) -> ssl.SSLContext | bool:
    if not access.host.startswith("https"):
        return False
    context = ssl.create_default_context(cafile=access.ca_file)
    if access.cert_file:
        context.load_cert_chain(access.cert_file, access.key_file)
    if not access.verify_tls:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def owner_reference(run: RunIdentity) -> dict[str, Any]:
    """An owner reference to the run's AgentRun. No blockOwnerDeletion: setting it needs rights on the
    AgentRun's finalizers, which a runner does not have."""
    return {"apiVersion": constants.API_VERSION, "kind": constants.KIND, "name": run.name, "uid": run.uid}


class ConfigMaps:
    """The few ConfigMap operations the runner needs, in one namespace."""

    def __init__(self, access: ApiAccess, namespace: str, owner: RunIdentity | None = None) -> None:
        self._access = access
        self._base = f"{access.host.rstrip('/')}/api/v1/namespaces/{quote(namespace)}/configmaps"
        self._ssl = _ssl_context(access)
        self._session: aiohttp.ClientSession | None = None
        self.namespace = namespace
        # ConfigMaps the runner creates belong to its AgentRun, so deleting the run collects them.
        self._owner_references = [owner_reference(owner)] if owner is not None else []
        self.owner_uid = owner.uid if owner is not None else None

    async def _call(
        self,
        method: str,
        name: str | None,
        body: Any = None,
        content_type: str = "application/json",
        *,
        read_object: bool = False,
    ) -> tuple[int, Any]:
        """(HTTP status, decoded body). A successful answer's body is the whole ConfigMap, up to about 1 MiB
        of checkpoint log, so it is decoded only when ``read_object`` asks for it: decoding it after every
        checkpoint write cost more than the rest of an iteration. Errors are always decoded, for their message."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=_REQUEST_TIMEOUT_SECONDS))
        url = self._base if name is None else f"{self._base}/{quote(name)}"
        headers = {"Accept": "application/json", "Content-Type": content_type}
        authorization = self._access.authorization()
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
                    server_hostname=self._access.tls_server_name,
                ) as response:
                    raw = await response.read()
                    wanted = read_object or response.status >= 300
                    payload = json.loads(raw) if wanted and raw else None
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
        found = await self.get_owned_data(name)
        return None if found is None else found[0]

    async def get_owned_data(self, name: str) -> tuple[dict[str, str], set[str]] | None:
        """The ConfigMap's data and the uids of its owners, or None when it does not exist."""
        status, payload = await self._call("GET", name, read_object=True)
        if status == 404:
            return None
        if status != 200 or not isinstance(payload, dict):
            raise self._fail("read", self.namespace, name, status, payload)
        data = payload.get("data") or {}
        owners = {str(ref.get("uid")) for ref in payload.get("metadata", {}).get("ownerReferences") or []}
        return {key: value for key, value in data.items() if isinstance(value, str)}, owners

    async def claim(self, name: str, labels: dict[str, str]) -> None:
        """Make an existing ConfigMap this client's owner's, emptied of its data: one left by a deleted
        run of the same name, or planted by someone else, must not be read or extended."""
        body = {"metadata": {"labels": labels, "ownerReferences": self._owner_references}, "data": None}
        status, payload = await self._call("PATCH", name, body, MERGE_PATCH)
        if status not in (200, 404):
            raise self._fail("claim", self.namespace, name, status, payload)

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
