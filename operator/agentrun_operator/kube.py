"""The operator's own requests to the API server, over the shared client (``agentrun_common.kube``).

kopf keeps its client private, so the operator talks to the API server through this one, with the same
credentials kopf logs in with. It knows exactly the kinds the operator touches, and nothing else, so every
request it can make is listed here.
"""

import base64
import dataclasses
import datetime
import os
from collections.abc import Callable, Mapping
from typing import Any, Final

import kopf

from agentrun_api import constants, mcpserver, throttlepool
from agentrun_common.kube import ApiError, Credentials
from agentrun_common.kube import KubeClient as _SharedClient
from agentrun_common.kube.credentials import token_expiry

__all__ = ["KINDS", "ApiError", "Kind", "KubeClient"]


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
    mcpserver.KIND: Kind(constants.API_VERSION, mcpserver.PLURAL),
}


class KubeClient(_SharedClient):
    """The operator's calls. ``credentials``: kopf's, fixed ones, or a loader called again on a 401."""

    def __init__(
        self,
        credentials: kopf.ConnectionInfo | Credentials | Callable[[], Credentials],
        *,
        timeout_seconds: float = 30.0,
    ) -> None:
        if isinstance(credentials, kopf.ConnectionInfo):
            credentials = from_connection_info(credentials)
        super().__init__(credentials, timeout_seconds=timeout_seconds)

    # The operator's writes do not read the object the server answers with (the watches bring it): it is not
    # decoded, which at admission is nine whole objects per run, managed fields and all.

    async def create(self, obj: Mapping[str, Any]) -> None:
        meta = obj["metadata"]
        kind = KINDS[obj["kind"]]
        await self.request(
            "POST",
            kind.collection(meta["namespace"]),
            body=obj,
            what=f"create {obj['kind']} {meta['namespace']}/{meta.get('name', '')}",
            decode=False,
        )

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        found: dict[str, Any] = await self.request(
            "GET", f"{KINDS[kind].collection(namespace)}/{name}", what=f"read {kind} {namespace}/{name}"
        )
        return found

    async def merge_patch(
        self, kind: str, namespace: str, name: str, patch: Mapping[str, Any], *, subresource: str = ""
    ) -> None:
        path = f"{KINDS[kind].collection(namespace)}/{name}" + (f"/{subresource}" if subresource else "")
        await self.request(
            "PATCH",
            path,
            body=patch,
            content_type="application/merge-patch+json",
            what=f"patch {kind} {namespace}/{name}" + (f" {subresource}" if subresource else ""),
            decode=False,
        )

    async def delete(self, kind: str, namespace: str, name: str, *, propagation: str = "Background") -> None:
        """Delete, treating an object already gone as deleted."""
        path = f"{KINDS[kind].collection(namespace)}/{name}"
        try:
            await self.request(
                "DELETE", path, body={"propagationPolicy": propagation}, what=f"delete {kind} {namespace}/{name}"
            )
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
            await self.request(
                "GET", f"/apis/storage.k8s.io/v1/storageclasses/{name}", what=f"read StorageClass {name}"
            )
        except ApiError as error:
            if error.not_found:
                return False
            raise
        return True


# kopf asks ``handlers.login`` again this long before the token it holds expires, by when the kubelet has
# rotated the token file (at 80% of the token's lifetime). kopf closes its connections when credentials expire,
# restarting its watches, so the expiry is the token's own, not a short fixed period.
TOKEN_RENEWAL_MARGIN: Final = datetime.timedelta(minutes=2)
# ... but never sooner than this, should the file still hold a token that is about to expire.
MIN_CREDENTIALS_LIFETIME: Final = datetime.timedelta(seconds=10)


def connection_info(credentials: Credentials) -> kopf.ConnectionInfo:
    """The credentials as kopf takes them, with the token read now and expiring before the token does."""
    token = credentials.current_token()
    expiry = token_expiry(token)
    now = datetime.datetime.now(datetime.UTC)
    return kopf.ConnectionInfo(
        server=credentials.server,
        ca_path=credentials.ca_file,
        ca_data=credentials.ca_data.encode() if credentials.ca_data else None,
        insecure=credentials.insecure,
        username=credentials.username,
        password=credentials.password,
        scheme=credentials.scheme,
        token=token,
        certificate_path=credentials.cert_file,
        certificate_data=credentials.cert_data.encode() if credentials.cert_data else None,
        private_key_path=credentials.key_file,
        private_key_data=credentials.key_data.encode() if credentials.key_data else None,
        default_namespace=credentials.default_namespace,
        expiration=None if expiry is None else max(expiry - TOKEN_RENEWAL_MARGIN, now + MIN_CREDENTIALS_LIFETIME),
    )


def from_connection_info(info: kopf.ConnectionInfo) -> Credentials:
    """kopf's credentials as the shared client takes them."""
    return Credentials(
        server=info.server.rstrip("/"),
        token=info.token,
        scheme=info.scheme or "Bearer",
        username=info.username,
        password=info.password,
        ca_file=_path(info.ca_path),
        ca_data=_text(info.ca_data),
        cert_file=_path(info.certificate_path),
        key_file=_path(info.private_key_path),
        cert_data=_text(info.certificate_data),
        key_data=_text(info.private_key_data),
        insecure=bool(info.insecure),
        default_namespace=info.default_namespace,
    )


def _path(value: str | bytes | os.PathLike[str] | os.PathLike[bytes] | None) -> str | None:
    return None if value is None else os.fsdecode(value)


def _text(data: str | bytes | None) -> str | None:
    return data.decode() if isinstance(data, bytes) else data
