"""A small async Kubernetes API client for the operator's own requests.

kopf keeps its client private, so the operator talks to the API server through this one, with the
same credentials kopf logs in with (``kopf.ConnectionInfo``). It knows exactly the kinds the
operator touches, and nothing else, so every request it can make is listed here.
"""

import base64
import dataclasses
import json
import ssl
import tempfile
from collections.abc import Mapping
from typing import Any, Final

import aiohttp
import kopf

from agentrun_api import constants, throttlepool


@dataclasses.dataclass(frozen=True)
class Kind:
    api_version: str
    plural: str

    def collection(self, namespace: str) -> str:
        prefix = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        return f"{prefix}/namespaces/{namespace}/{self.plural}"


KINDS: Final[Mapping[str, Kind]] = {
    "ServiceAccount": Kind("v1", "serviceaccounts"),
    "ConfigMap": Kind("v1", "configmaps"),
    "Secret": Kind("v1", "secrets"),
    "Service": Kind("v1", "services"),
    "PersistentVolumeClaim": Kind("v1", "persistentvolumeclaims"),
    "Pod": Kind("v1", "pods"),
    "Role": Kind("rbac.authorization.k8s.io/v1", "roles"),
    "RoleBinding": Kind("rbac.authorization.k8s.io/v1", "rolebindings"),
    "Job": Kind("batch/v1", "jobs"),
    # A run's own stream route (spec.streaming.ingress), by controller.
    "Ingress": Kind("networking.k8s.io/v1", "ingresses"),
    "HTTPRoute": Kind("gateway.networking.k8s.io/v1", "httproutes"),
    "HTTPProxy": Kind("projectcontour.io/v1", "httpproxies"),
    "VirtualService": Kind("networking.istio.io/v1", "virtualservices"),
    "GCPBackendPolicy": Kind("networking.gke.io/v1", "gcpbackendpolicies"),
    "ServersTransport": Kind("traefik.io/v1alpha1", "serverstransports"),
    constants.KIND: Kind(constants.API_VERSION, constants.PLURAL),
    throttlepool.KIND: Kind(constants.API_VERSION, throttlepool.PLURAL),
}


class ApiError(Exception):
    """The API server answered with an error status."""

    def __init__(self, status: int, reason: str, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.retry_after = retry_after  # seconds, from a 429's Retry-After header

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409


class KubeClient:
    """Requests to the API server over one aiohttp session. Close it with ``close()``."""

    def __init__(self, info: kopf.ConnectionInfo, *, timeout_seconds: float = 30.0) -> None:
        self._server = info.server.rstrip("/")
        headers: dict[str, str] = {"Accept": "application/json"}
        if info.token:
            headers["Authorization"] = f"{info.scheme or 'Bearer'} {info.token}"
        elif info.username and info.password:
            headers["Authorization"] = aiohttp.BasicAuth(info.username, info.password).encode()
        connector = aiohttp.TCPConnector(ssl=_ssl_context(info) if self._server.startswith("https") else False)
        self._session = aiohttp.ClientSession(
            headers=headers, connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_seconds)
        )

    async def close(self) -> None:
        await self._session.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if data is not None else {}
        async with self._session.request(
            method, self._server + path, data=data, params=params, headers=headers
        ) as response:
            text = await response.text()
            if response.status >= 400:
                retry_after = response.headers.get("Retry-After", "")
                wait = float(retry_after) if retry_after.replace(".", "", 1).isdigit() else None
                try:
                    detail = json.loads(text)
                except ValueError:
                    raise ApiError(response.status, response.reason or "", text[:500], retry_after=wait) from None
                raise ApiError(
                    response.status, str(detail.get("reason", "")), str(detail.get("message", text)), retry_after=wait
                )
            parsed: dict[str, Any] = json.loads(text) if text else {}
            return parsed

    async def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        kind = KINDS[obj["kind"]]
        return await self.request("POST", kind.collection(obj["metadata"]["namespace"]), body=obj)

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        return await self.request("GET", f"{KINDS[kind].collection(namespace)}/{name}")

    async def merge_patch(
        self, kind: str, namespace: str, name: str, patch: Mapping[str, Any], *, subresource: str = ""
    ) -> dict[str, Any]:
        path = f"{KINDS[kind].collection(namespace)}/{name}" + (f"/{subresource}" if subresource else "")
        return await self.request("PATCH", path, body=patch, content_type="application/merge-patch+json")

    async def delete(self, kind: str, namespace: str, name: str, *, propagation: str = "Background") -> None:
        """Delete, treating an object already gone as deleted."""
        path = f"{KINDS[kind].collection(namespace)}/{name}"
        try:
            await self.request("DELETE", path, body={"propagationPolicy": propagation})
        except ApiError as error:
            if not error.not_found:
                raise

    async def read_secret_key(self, namespace: str, name: str, key: str) -> bytes | None:
        """The decoded value of one key, or None when the Secret or the key is missing."""
        try:
            secret = await self.get("Secret", namespace, name)
        except ApiError as error:
            if error.not_found:
                return None
            raise
        encoded = (secret.get("data") or {}).get(key)
        return None if encoded is None else base64.b64decode(encoded)

    async def storage_class_exists(self, name: str) -> bool:
        try:
            await self.request("GET", f"/apis/storage.k8s.io/v1/storageclasses/{name}")
        except ApiError as error:
            if error.not_found:
                return False
            raise
        return True


def _ssl_context(info: kopf.ConnectionInfo) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if info.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if info.ca_path:
        context.load_verify_locations(cafile=info.ca_path)
    elif info.ca_data:
        data = info.ca_data.encode() if isinstance(info.ca_data, str) else info.ca_data
        context.load_verify_locations(cadata=base64.b64decode(data).decode())
    if info.certificate_path and info.private_key_path:
        context.load_cert_chain(info.certificate_path, info.private_key_path)
    elif info.certificate_data and info.private_key_data:
        # The ssl module loads client certificates only from files.
        with tempfile.NamedTemporaryFile("wb") as cert, tempfile.NamedTemporaryFile("wb") as key:
            cert.write(_decoded(info.certificate_data))
            key.write(_decoded(info.private_key_data))
            cert.flush()
            key.flush()
            context.load_cert_chain(cert.name, key.name)
    return context


def _decoded(data: str | bytes) -> bytes:
    return base64.b64decode(data.encode() if isinstance(data, str) else data)
