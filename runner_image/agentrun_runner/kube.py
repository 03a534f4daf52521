"""The runner's ConfigMap reads and writes, over the shared client (``agentrun_common.kube``).

Credentials: in a pod, the in-cluster service account, its token read again at every request (the kubelet
rotates it); with KUBECONFIG set (a runner started outside a pod, as some tests and benchmarks do), that
kubeconfig. Neither imports the ``kubernetes`` package, which costs most of a second at every pod start (it
loads all its generated API classes); see docs/performance.md for the figures.
"""

from typing import Any
from urllib.parse import quote

from agentrun_api import constants
from agentrun_api.contract import RunIdentity
from agentrun_common.kube import ApiError, Credentials, CredentialsError, KubeClient
from agentrun_common.kube import credentials as _credentials
from agentrun_common.kube.client import UNREACHABLE

MERGE_PATCH = "application/merge-patch+json"
_REQUEST_TIMEOUT_SECONDS = 30.0

# The one error type of an API call; the message names the object and the API server's answer.
KubeError = ApiError


def load_configuration() -> Credentials:
    try:
        return _credentials.load()
    except CredentialsError as error:
        raise KubeError(UNREACHABLE, "NoCredentials", str(error), what="Kubernetes API access") from None


def owner_reference(run: RunIdentity) -> dict[str, Any]:
    """An owner reference to the run's AgentRun. No blockOwnerDeletion: setting it needs rights on the
    AgentRun's finalizers, which a runner does not have."""
    return {"apiVersion": constants.API_VERSION, "kind": constants.KIND, "name": run.name, "uid": run.uid}


class ConfigMaps:
    """The few ConfigMap operations the runner needs, in one namespace."""

    def __init__(self, access: Credentials, namespace: str, owner: RunIdentity | None = None) -> None:
        self._client = KubeClient(access, timeout_seconds=_REQUEST_TIMEOUT_SECONDS)
        self._base = f"/api/v1/namespaces/{quote(namespace)}/configmaps"
        self.namespace = namespace
        # ConfigMaps the runner creates belong to its AgentRun, so deleting the run collects them.
        self._owner_references = [owner_reference(owner)] if owner is not None else []
        self.owner_uid = owner.uid if owner is not None else None

    async def _call(
        self, method: str, name: str | None, verb: str, body: Any = None, *, content_type: str = "application/json"
    ) -> Any:
        """The decoded answer of a read. A write's answer is the whole ConfigMap, up to about 1 MiB of checkpoint
        log, so it is not decoded: decoding it after every checkpoint write cost more than the rest of an
        iteration."""
        path = self._base if name is None else f"{self._base}/{quote(name)}"
        return await self._client.request(
            method,
            path,
            body=body,
            content_type=content_type,
            what=f"cannot {verb} ConfigMap {self.namespace}/{name or ''}",
            decode=method == "GET",
        )

    async def get_data(self, name: str) -> dict[str, str] | None:
        """The ConfigMap's data, or None when it does not exist."""
        found = await self.get_owned_data(name)
        return None if found is None else found[0]

    async def get_owned_data(self, name: str) -> tuple[dict[str, str], set[str]] | None:
        """The ConfigMap's data and the uids of its owners, or None when it does not exist."""
        try:
            payload = await self._call("GET", name, "read")
        except ApiError as error:
            if error.not_found:
                return None
            raise
        data = (payload or {}).get("data") or {}
        owners = {str(ref.get("uid")) for ref in (payload or {}).get("metadata", {}).get("ownerReferences") or []}
        return {key: value for key, value in data.items() if isinstance(value, str)}, owners

    async def claim(self, name: str, labels: dict[str, str]) -> None:
        """Make an existing ConfigMap this client's owner's, emptied of its data: one left by a deleted
        run of the same name, or planted by someone else, must not be read or extended."""
        body = {"metadata": {"labels": labels, "ownerReferences": self._owner_references}, "data": None}
        try:
            await self._call("PATCH", name, "claim", body, content_type=MERGE_PATCH)
        except ApiError as error:
            if not error.not_found:
                raise

    async def create(self, name: str, data: dict[str, str], labels: dict[str, str]) -> bool:
        """Create it; False when it exists already."""
        metadata: dict[str, Any] = {"name": name, "labels": labels}
        if self._owner_references:
            metadata["ownerReferences"] = self._owner_references
        body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}
        try:
            await self._call("POST", None, "create", body)
        except ApiError as error:
            if error.conflict:
                return False
            raise
        return True

    async def patch_data(self, name: str, data: dict[str, str | None]) -> bool:
        """Merge keys into its data (None removes a key); False when it does not exist."""
        try:
            await self._call("PATCH", name, "patch", {"data": data}, content_type=MERGE_PATCH)
        except ApiError as error:
            if error.not_found:
                return False
            raise
        return True

    async def put_data(self, name: str, data: dict[str, str], labels: dict[str, str]) -> None:
        """Patch the keys in, creating the ConfigMap first if it is missing."""
        patch: dict[str, str | None] = dict(data)
        if await self.patch_data(name, patch):
            return
        if not await self.create(name, data, labels):
            await self.patch_data(name, patch)

    async def close(self) -> None:
        await self._client.close()
