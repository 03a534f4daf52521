"""ConfigMap reads and writes through the official kubernetes client, run in a worker thread.

Configuration: the file named by KUBECONFIG when it is set (the local Job executor sets it),
otherwise the pod's in-cluster service account.
"""

import asyncio
import os
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

MERGE_PATCH = "application/merge-patch+json"


class KubeError(Exception):
    """An API call failed; the message names the object and the API server's answer."""


def load_api_client() -> client.ApiClient:
    configuration = client.Configuration()
    try:
        if os.environ.get("KUBECONFIG"):
            config.load_kube_config(config_file=os.environ["KUBECONFIG"], client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except config.ConfigException as error:
        raise KubeError(f"no Kubernetes API access (in-cluster service account or KUBECONFIG): {error}") from None
    return client.ApiClient(configuration)


class ConfigMaps:
    """The few ConfigMap operations the runner needs, in one namespace."""

    def __init__(self, api_client: client.ApiClient, namespace: str) -> None:
        self._api = client.CoreV1Api(api_client)
        self._api_client = api_client
        self.namespace = namespace

    async def get_data(self, name: str) -> dict[str, str] | None:
        """The ConfigMap's data, or None when it does not exist."""

        def call() -> dict[str, str] | None:
            try:
                found = self._api.read_namespaced_config_map(name, self.namespace)
            except ApiException as error:
                if error.status == 404:
                    return None
                raise KubeError(_describe("read", self.namespace, name, error)) from None
            return {key: value for key, value in (found.data or {}).items() if value is not None}

        return await asyncio.to_thread(call)

    async def create(self, name: str, data: dict[str, str], labels: dict[str, str]) -> bool:
        """Create it; False when it exists already."""

        def call() -> bool:
            body = client.V1ConfigMap(
                api_version="v1", kind="ConfigMap", metadata=client.V1ObjectMeta(name=name, labels=labels), data=data
            )
            try:
                self._api.create_namespaced_config_map(self.namespace, body)
            except ApiException as error:
                if error.status == 409:
                    return False
                raise KubeError(_describe("create", self.namespace, name, error)) from None
            return True

        return await asyncio.to_thread(call)

    async def patch_data(self, name: str, data: dict[str, str | None]) -> bool:
        """Merge keys into its data (None removes a key); False when it does not exist."""

        def call() -> bool:
            try:
                self._api.patch_namespaced_config_map(name, self.namespace, {"data": data}, _content_type=MERGE_PATCH)
            except ApiException as error:
                if error.status == 404:
                    return False
                raise KubeError(_describe("patch", self.namespace, name, error)) from None
            return True

        return await asyncio.to_thread(call)

    async def put_data(self, name: str, data: dict[str, str], labels: dict[str, str]) -> None:
        """Patch the keys in, creating the ConfigMap first if it is missing."""
        patch: dict[str, str | None] = dict(data)
        if await self.patch_data(name, patch):
            return
        if not await self.create(name, data, labels):
            await self.patch_data(name, patch)

    def close(self) -> None:
        self._api_client.close()  # type: ignore[no-untyped-call]


def _describe(verb: str, namespace: str, name: str, error: ApiException) -> str:
    reason: Any = error.reason
    return f"cannot {verb} ConfigMap {namespace}/{name}: HTTP {error.status} {reason}"
