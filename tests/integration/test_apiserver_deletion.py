"""Deletion semantics of the emulated apiserver: finalizers, garbage collection by ownerReferences, namespaces, CRDs."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from tests.harness.apiserver import EmulatedApiServer
from tests.integration.conftest import AGENTRUNS, CONFIGMAPS, MERGE, agentrun

pytestmark = pytest.mark.integration


def owned_by(owner: dict[str, Any], name: str) -> dict[str, Any]:
    reference = {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    return {"metadata": {"name": name, "ownerReferences": [reference]}}


async def until_gone(http: aiohttp.ClientSession, path: str) -> None:
    for _ in range(100):
        if (await http.get(path)).status == 404:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{path} still exists")


async def test_delete_with_finalizers_sets_deletion_timestamp_and_keeps_the_object(http: aiohttp.ClientSession) -> None:
    await http.post(CONFIGMAPS.lstrip("/"), json={"metadata": {"name": "cm", "finalizers": ["example.com/hold"]}})
    response = await http.delete(CONFIGMAPS.lstrip("/") + "/cm")
    assert response.status == 202
    kept = await (await http.get(CONFIGMAPS.lstrip("/") + "/cm")).json()
    assert kept["metadata"]["deletionTimestamp"]
    assert kept["metadata"]["finalizers"] == ["example.com/hold"]


async def test_removing_the_last_finalizer_completes_the_deletion(http: aiohttp.ClientSession) -> None:
    await http.post(CONFIGMAPS.lstrip("/"), json={"metadata": {"name": "cm", "finalizers": ["a", "b"]}})
    await http.delete(CONFIGMAPS.lstrip("/") + "/cm")
    await http.patch(CONFIGMAPS.lstrip("/") + "/cm", json={"metadata": {"finalizers": ["b"]}}, headers=MERGE)
    assert (await http.get(CONFIGMAPS.lstrip("/") + "/cm")).status == 200
    response = await http.patch(CONFIGMAPS.lstrip("/") + "/cm", json={"metadata": {"finalizers": None}}, headers=MERGE)
    assert response.status == 200
    assert (await http.get(CONFIGMAPS.lstrip("/") + "/cm")).status == 404


async def test_no_new_finalizers_on_an_object_being_deleted(http: aiohttp.ClientSession) -> None:
    await http.post(CONFIGMAPS.lstrip("/"), json={"metadata": {"name": "cm", "finalizers": ["a"]}})
    await http.delete(CONFIGMAPS.lstrip("/") + "/cm")
    response = await http.patch(
        CONFIGMAPS.lstrip("/") + "/cm", json={"metadata": {"finalizers": ["a", "b"]}}, headers=MERGE
    )
    assert response.status == 422
    assert (await response.json())["details"]["causes"][0]["field"] == "metadata.finalizers"


async def test_delete_of_a_missing_object_is_404(http: aiohttp.ClientSession) -> None:
    response = await http.delete(CONFIGMAPS.lstrip("/") + "/nope")
    assert response.status == 404
    assert (await response.json())["reason"] == "NotFound"


async def test_delete_precondition_on_a_stale_resource_version_is_409(http: aiohttp.ClientSession) -> None:
    created = await (await http.post(CONFIGMAPS.lstrip("/"), json={"metadata": {"name": "cm"}})).json()
    await http.patch(CONFIGMAPS.lstrip("/") + "/cm", json={"data": {"a": "1"}}, headers=MERGE)
    options = {"preconditions": {"resourceVersion": created["metadata"]["resourceVersion"]}}
    response = await http.delete(CONFIGMAPS.lstrip("/") + "/cm", json=options)
    assert response.status == 409
    assert (await http.get(CONFIGMAPS.lstrip("/") + "/cm")).status == 200


async def test_garbage_collector_deletes_dependents_of_a_deleted_owner(http: aiohttp.ClientSession) -> None:
    owner = await (await http.post(AGENTRUNS.lstrip("/"), json=agentrun("run"))).json()
    await http.post(CONFIGMAPS.lstrip("/"), json=owned_by(owner, "run-progress"))
    await http.post("api/v1/namespaces/default/secrets", json=owned_by(owner, "run-token"))
    await http.post(CONFIGMAPS.lstrip("/"), json={"metadata": {"name": "unrelated"}})
    await http.delete(AGENTRUNS.lstrip("/") + "/run")
    await until_gone(http, CONFIGMAPS.lstrip("/") + "/run-progress")
    await until_gone(http, "api/v1/namespaces/default/secrets/run-token")
    assert (await http.get(CONFIGMAPS.lstrip("/") + "/unrelated")).status == 200


async def test_garbage_collection_cascades_through_owner_chains(http: aiohttp.ClientSession) -> None:
    owner = await (await http.post(AGENTRUNS.lstrip("/"), json=agentrun("run"))).json()
    job = await (
        await http.post(
            "apis/batch/v1/namespaces/default/jobs",
            json={**owned_by(owner, "run-runner"), "spec": {"template": {"spec": {"containers": []}}}},
        )
    ).json()
    job["apiVersion"], job["kind"] = "batch/v1", "Job"
    await http.post(
        "api/v1/namespaces/default/pods", json={**owned_by(job, "run-runner-abcde"), "spec": {"containers": []}}
    )
    await http.delete(AGENTRUNS.lstrip("/") + "/run")
    await until_gone(http, "api/v1/namespaces/default/pods/run-runner-abcde")


async def test_garbage_collector_keeps_dependents_with_a_remaining_owner(http: aiohttp.ClientSession) -> None:
    first = await (await http.post(AGENTRUNS.lstrip("/"), json=agentrun("first"))).json()
    second = await (await http.post(AGENTRUNS.lstrip("/"), json=agentrun("second"))).json()
    shared = owned_by(first, "shared")
    shared["metadata"]["ownerReferences"] += owned_by(second, "x")["metadata"]["ownerReferences"]
    shared["metadata"]["ownerReferences"][1]["controller"] = False
    await http.post(CONFIGMAPS.lstrip("/"), json=shared)
    await http.delete(AGENTRUNS.lstrip("/") + "/first")
    await until_gone(http, AGENTRUNS.lstrip("/") + "/first")
    await asyncio.sleep(0.05)
    kept = await (await http.get(CONFIGMAPS.lstrip("/") + "/shared")).json()
    assert [ref["name"] for ref in kept["metadata"]["ownerReferences"]] == ["second"]


async def test_orphan_propagation_keeps_dependents_without_the_owner_reference(http: aiohttp.ClientSession) -> None:
    owner = await (await http.post(AGENTRUNS.lstrip("/"), json=agentrun("run"))).json()
    await http.post(CONFIGMAPS.lstrip("/"), json=owned_by(owner, "child"))
    await http.delete(AGENTRUNS.lstrip("/") + "/run", params={"propagationPolicy": "Orphan"})
    await asyncio.sleep(0.05)
    child = await (await http.get(CONFIGMAPS.lstrip("/") + "/child")).json()
    assert "ownerReferences" not in child["metadata"]


async def test_foreground_deletion_keeps_the_owner_until_dependents_are_gone(http: aiohttp.ClientSession) -> None:
    owner = await (await http.post(AGENTRUNS.lstrip("/"), json=agentrun("run"))).json()
    await http.post(CONFIGMAPS.lstrip("/"), json={**owned_by(owner, "child"), **{}})
    await http.patch(CONFIGMAPS.lstrip("/") + "/child", json={"metadata": {"finalizers": ["hold"]}}, headers=MERGE)
    response = await http.delete(AGENTRUNS.lstrip("/") + "/run", json={"propagationPolicy": "Foreground"})
    assert response.status == 202
    await asyncio.sleep(0.05)
    waiting = await (await http.get(AGENTRUNS.lstrip("/") + "/run")).json()
    assert "foregroundDeletion" in waiting["metadata"]["finalizers"]
    assert (await (await http.get(CONFIGMAPS.lstrip("/") + "/child")).json())["metadata"]["deletionTimestamp"]
    await http.patch(CONFIGMAPS.lstrip("/") + "/child", json={"metadata": {"finalizers": None}}, headers=MERGE)
    await until_gone(http, AGENTRUNS.lstrip("/") + "/run")


async def test_namespace_deletion_deletes_its_content_then_the_namespace(http: aiohttp.ClientSession) -> None:
    await http.post("api/v1/namespaces", json={"metadata": {"name": "doomed"}})
    await http.post("api/v1/namespaces/doomed/configmaps", json={"metadata": {"name": "cm"}})
    await http.delete("api/v1/namespaces/doomed")
    await until_gone(http, "api/v1/namespaces/doomed/configmaps/cm")
    await until_gone(http, "api/v1/namespaces/doomed")


async def test_terminating_namespace_refuses_new_content(http: aiohttp.ClientSession) -> None:
    await http.post("api/v1/namespaces", json={"metadata": {"name": "doomed"}})
    await http.post("api/v1/namespaces/doomed/configmaps", json={"metadata": {"name": "held", "finalizers": ["hold"]}})
    await http.delete("api/v1/namespaces/doomed")
    namespace = await (await http.get("api/v1/namespaces/doomed")).json()
    assert namespace["status"]["phase"] == "Terminating"
    response = await http.post("api/v1/namespaces/doomed/configmaps", json={"metadata": {"name": "new"}})
    assert response.status == 403
    await http.patch("api/v1/namespaces/doomed/configmaps/held", json={"metadata": {"finalizers": None}}, headers=MERGE)
    await until_gone(http, "api/v1/namespaces/doomed")


async def test_deleting_a_crd_deletes_its_custom_resources_and_stops_serving_them(
    apiserver: EmulatedApiServer, http: aiohttp.ClientSession
) -> None:
    await http.post(AGENTRUNS.lstrip("/"), json=agentrun("run"))
    response = await http.delete("apis/apiextensions.k8s.io/v1/customresourcedefinitions/agentruns.agentrun.dev")
    assert response.status == 200
    assert apiserver.store.objects.get(("agentrun.dev", "agentruns", "default", "run")) is None
    assert (await http.get(AGENTRUNS.lstrip("/"))).status == 404
    # The group version stays served for the ThrottlePool CRD of the same group, without agentruns.
    group_version = await http.get("apis/agentrun.dev/v1alpha1")
    assert group_version.status == 200
    assert [r["name"] for r in (await group_version.json())["resources"]] == ["throttlepools", "throttlepools/status"]
