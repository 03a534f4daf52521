"""The shared client's watch (``KubeClient.watch``) against the real API server: the events of one object as they
happen, and the API server's ERROR event for a resourceVersion too old turned into an ``ApiError``."""

import asyncio
from typing import Any

import pytest

from agentrun_common.kube import ApiError, KubeClient
from agentrun_common.kube.credentials import from_kubeconfig
from tests.harness.inprocess_operator import Cluster

pytestmark = pytest.mark.integration


def config_map(name: str, value: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"value": value}}


async def test_a_watch_brings_one_objects_events_as_they_happen(cluster: Cluster) -> None:
    client = KubeClient(from_kubeconfig(str(cluster.testbed.kubeconfig)))
    collection = f"/api/v1/namespaces/{cluster.namespace}/configmaps"
    cluster.create(config_map("watched", "1"))
    cluster.create(config_map("other", "1"))  # not selected: never seen
    seen: list[tuple[str, str]] = []

    async def follow() -> None:
        params = {"fieldSelector": "metadata.name=watched"}
        async for event in client.watch(collection, params=params, timeout_seconds=60):
            obj = event["object"]
            seen.append((event["type"], f"{obj['metadata']['name']}={obj.get('data', {}).get('value')}"))
            if event["type"] == "DELETED":
                return

    try:
        following = asyncio.create_task(follow())
        # A watch without a resourceVersion starts with the object as it is.
        while not seen:
            await asyncio.sleep(0.05)
        cluster.patch("ConfigMap", "other", {"data": {"value": "2"}})
        cluster.patch("ConfigMap", "watched", {"data": {"value": "2"}})
        cluster.delete("ConfigMap", "watched")
        await asyncio.wait_for(following, timeout=30)
        assert seen == [("ADDED", "watched=1"), ("MODIFIED", "watched=2"), ("DELETED", "watched=2")]
    finally:
        await client.close()


async def test_a_watch_the_server_refuses_raises_its_answer(cluster: Cluster) -> None:
    # The operator's account may not watch Secrets in the namespace: the refusal names the watch.
    client = KubeClient(from_kubeconfig(str(cluster.operator_kubeconfig)))
    collection = f"/api/v1/namespaces/{cluster.namespace}/secrets"
    try:
        with pytest.raises(ApiError) as raised:
            async for _event in client.watch(collection, timeout_seconds=10, what="watch the Secrets"):
                pass
        assert raised.value.status == 403, raised.value
        assert "watch the Secrets" in str(raised.value)
    finally:
        await client.close()
