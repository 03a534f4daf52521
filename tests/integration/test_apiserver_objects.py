"""Object lifecycle of the emulated apiserver over real HTTP: create, read, list, update and patch semantics."""

from __future__ import annotations

import io
import json
from typing import Any

import aiohttp
import pytest

from tests.harness.apiserver import EmulatedApiServer
from tests.integration.conftest import AGENTRUNS, CONFIGMAPS, JSON_PATCH, MERGE, STRATEGIC, agentrun

pytestmark = pytest.mark.integration


async def test_create_assigns_uid_timestamp_generation_and_monotonic_resource_version(
    http: aiohttp.ClientSession,
) -> None:
    first = await (await http.post(CONFIGMAPS.lstrip("/"), json={"metadata": {"name": "a"}, "data": {"k": "v"}})).json()
    second = await (await http.post(CONFIGMAPS.lstrip("/"), json={"metadata": {"name": "b"}})).json()
    assert first["kind"] == "ConfigMap"
    assert first["apiVersion"] == "v1"
    assert len(first["metadata"]["uid"]) == 36
    assert first["metadata"]["uid"] != second["metadata"]["uid"]
    assert first["metadata"]["creationTimestamp"].endswith("Z")
    assert first["metadata"]["generation"] == 1
    assert int(second["metadata"]["resourceVersion"]) > int(first["metadata"]["resourceVersion"])
    assert first["metadata"]["namespace"] == "default"


async def test_duplicate_create_is_409_already_exists_status(http: aiohttp.ClientSession) -> None:
    await http.post(CONFIGMAPS.lstrip("/"), json={"metadata": {"name": "dup"}})
    response = await http.post(CONFIGMAPS.lstrip("/"), json={"metadata": {"name": "dup"}})
    status = await response.json()
    assert response.status == 409
    assert status["kind"] == "Status"
    assert status["status"] == "Failure"
    assert status["reason"] == "AlreadyExists"
    assert status["message"] == 'configmaps "dup" already exists'
    assert status["details"] == {"name": "dup", "kind": "configmaps"}


async def test_missing_object_is_404_not_found_status(http: aiohttp.ClientSession) -> None:
    response = await http.get(AGENTRUNS.lstrip("/") + "/nope")
    status = await response.json()
    assert response.status == 404
    assert (status["kind"], status["reason"], status["code"]) == ("Status", "NotFound", 404)
    assert status["message"] == 'agentruns.agentrun.dev "nope" not found'
    assert status["details"]["group"] == "agentrun.dev"


async def test_generate_name_appends_five_random_characters(http: aiohttp.ClientSession) -> None:
    names = set()
    for _ in range(3):
        created = await (await http.post(CONFIGMAPS.lstrip("/"), json={"metadata": {"generateName": "run-"}})).json()
        names.add(created["metadata"]["name"])
    assert len(names) == 3
    assert all(name.startswith("run-") and len(name) == len("run-") + 5 for name in names)


async def test_create_in_a_missing_namespace_is_404_for_the_namespace(http: aiohttp.ClientSession) -> None:
    response = await http.post("api/v1/namespaces/ghost/configmaps", json={"metadata": {"name": "a"}})
    assert response.status == 404
    assert (await response.json())["message"] == 'namespaces "ghost" not found'


async def test_invalid_object_name_is_422_naming_metadata_name(http: aiohttp.ClientSession) -> None:
    response = await http.post(CONFIGMAPS.lstrip("/"), json={"metadata": {"name": "Bad_Name"}})
    status = await response.json()
    assert response.status == 422
    assert status["reason"] == "Invalid"
    assert status["details"]["causes"][0]["field"] == "metadata.name"


async def test_list_has_list_kind_api_version_and_current_resource_version(http: aiohttp.ClientSession) -> None:
    created = await (await http.post(AGENTRUNS.lstrip("/"), json=agentrun("one"))).json()
    listing = await (await http.get(AGENTRUNS.lstrip("/"))).json()
    assert listing["kind"] == "AgentRunList"
    assert listing["apiVersion"] == "agentrun.dev/v1alpha1"
    assert listing["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    assert [item["metadata"]["name"] for item in listing["items"]] == ["one"]


async def test_list_filters_by_label_selector_equality_existence_and_sets(http: aiohttp.ClientSession) -> None:
    for name, labels in (("a", {"app": "x", "tier": "web"}), ("b", {"app": "x"}), ("c", {"app": "y", "tier": "db"})):
        await http.post(CONFIGMAPS.lstrip("/"), json={"metadata": {"name": name, "labels": labels}})

    async def names(selector: str) -> list[str]:
        listing = await (await http.get(CONFIGMAPS.lstrip("/"), params={"labelSelector": selector})).json()
        return [item["metadata"]["name"] for item in listing["items"]]

    assert await names("app=x,tier") == ["a"]
    assert await names("app=x") == ["a", "b"]
    assert await names("!tier") == ["b"]
    assert await names("tier in (db,cache)") == ["c"]
    assert await names("app!=x") == ["c"]
    assert await names("app notin (x)") == ["c"]


async def test_list_filters_by_name_and_namespace_field_selectors(http: aiohttp.ClientSession) -> None:
    await http.post("api/v1/namespaces", json={"metadata": {"name": "other"}})
    await http.post(CONFIGMAPS.lstrip("/"), json={"metadata": {"name": "same"}})
    await http.post("api/v1/namespaces/other/configmaps", json={"metadata": {"name": "same"}})
    await http.post(CONFIGMAPS.lstrip("/"), json={"metadata": {"name": "different"}})
    listing = await (await http.get("api/v1/configmaps", params={"fieldSelector": "metadata.name=same"})).json()
    assert sorted(item["metadata"]["namespace"] for item in listing["items"]) == ["default", "other"]
    listing = await (
        await http.get("api/v1/configmaps", params={"fieldSelector": "metadata.name=same,metadata.namespace=other"})
    ).json()
    assert [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in listing["items"]] == [("other", "same")]


async def test_put_with_stale_resource_version_is_409_conflict(http: aiohttp.ClientSession) -> None:
    created = await (
        await http.post(CONFIGMAPS.lstrip("/"), json={"metadata": {"name": "cm"}, "data": {"a": "1"}})
    ).json()
    stale = dict(created)
    updated = await http.put(CONFIGMAPS.lstrip("/") + "/cm", json={**created, "data": {"a": "2"}})
    assert updated.status == 200
    conflict = await http.put(CONFIGMAPS.lstrip("/") + "/cm", json={**stale, "data": {"a": "3"}})
    status = await conflict.json()
    assert conflict.status == 409
    assert status["reason"] == "Conflict"
    assert "the object has been modified" in status["message"]
    current = await (await http.get(CONFIGMAPS.lstrip("/") + "/cm")).json()
    assert current["data"] == {"a": "2"}


async def test_put_cannot_change_uid_or_creation_timestamp(http: aiohttp.ClientSession) -> None:
    created = await (await http.post(CONFIGMAPS.lstrip("/"), json={"metadata": {"name": "cm"}})).json()
    forged = {
        **created,
        "metadata": {**created["metadata"], "uid": "forged", "creationTimestamp": "2000-01-01T00:00:00Z"},
    }
    updated = await (await http.put(CONFIGMAPS.lstrip("/") + "/cm", json={**forged, "data": {"x": "y"}})).json()
    assert updated["metadata"]["uid"] == created["metadata"]["uid"]
    assert updated["metadata"]["creationTimestamp"] == created["metadata"]["creationTimestamp"]


async def test_merge_patch_merges_objects_and_null_deletes_keys(http: aiohttp.ClientSession) -> None:
    await http.post(
        CONFIGMAPS.lstrip("/"), json={"metadata": {"name": "cm", "labels": {"a": "1", "b": "2"}}, "data": {"x": "1"}}
    )
    response = await http.patch(
        CONFIGMAPS.lstrip("/") + "/cm",
        json={"metadata": {"labels": {"a": None, "c": "3"}}, "data": {"y": "2"}},
        headers=MERGE,
    )
    patched = await response.json()
    assert response.status == 200
    assert patched["metadata"]["labels"] == {"b": "2", "c": "3"}
    assert patched["data"] == {"x": "1", "y": "2"}


async def test_json_patch_applies_operations_in_order_and_test_failure_refuses_all(http: aiohttp.ClientSession) -> None:
    await http.post(CONFIGMAPS.lstrip("/"), json={"metadata": {"name": "cm"}, "data": {"x": "1"}})
    ops = [{"op": "add", "path": "/data/y", "value": "2"}, {"op": "remove", "path": "/data/x"}]
    patched = await (await http.patch(CONFIGMAPS.lstrip("/") + "/cm", json=ops, headers=JSON_PATCH)).json()
    assert patched["data"] == {"y": "2"}
    refused = await http.patch(
        CONFIGMAPS.lstrip("/") + "/cm",
        json=[{"op": "add", "path": "/data/z", "value": "3"}, {"op": "test", "path": "/data/y", "value": "wrong"}],
        headers=JSON_PATCH,
    )
    # 422, not 400: the patch was well-formed but cannot apply (kopf retries its patches on 422).
    assert refused.status == 422
    assert (await (await http.get(CONFIGMAPS.lstrip("/") + "/cm")).json())["data"] == {"y": "2"}


async def test_json_patch_with_an_object_body_is_400_as_in_the_apiserver(http: aiohttp.ClientSession) -> None:
    await http.post(CONFIGMAPS.lstrip("/"), json={"metadata": {"name": "cm"}})
    response = await http.patch(CONFIGMAPS.lstrip("/") + "/cm", json={"data": {"a": "b"}}, headers=JSON_PATCH)
    assert response.status == 400
    assert "jsonpatch.Patch" in (await response.json())["message"]


async def test_strategic_merge_patch_merges_containers_by_name(http: aiohttp.ClientSession) -> None:
    pod = {
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}]},
    }
    await http.post("api/v1/namespaces/default/pods", json=pod)
    patch = {"spec": {"containers": [{"name": "b", "image": "b:2"}]}, "metadata": {"finalizers": ["x"]}}
    patched = await (await http.patch("api/v1/namespaces/default/pods/p", json=patch, headers=STRATEGIC)).json()
    assert patched["spec"]["containers"] == [{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:2"}]
    merge_patched = await (
        await http.patch(
            "api/v1/namespaces/default/pods/p",
            json={"spec": {"containers": [{"name": "c", "image": "c"}]}},
            headers=MERGE,
        )
    ).json()
    assert merge_patched["spec"]["containers"] == [{"name": "c", "image": "c"}]


async def test_strategic_merge_patch_on_a_custom_resource_is_415(http: aiohttp.ClientSession) -> None:
    await http.post(AGENTRUNS.lstrip("/"), json=agentrun("one"))
    response = await http.patch(AGENTRUNS.lstrip("/") + "/one", json={"spec": {"maxIterations": 6}}, headers=STRATEGIC)
    assert response.status == 415
    assert (await response.json())["reason"] == "UnsupportedMediaType"


async def test_patch_with_stale_resource_version_precondition_is_409(http: aiohttp.ClientSession) -> None:
    created = await (await http.post(CONFIGMAPS.lstrip("/"), json={"metadata": {"name": "cm"}})).json()
    await http.patch(CONFIGMAPS.lstrip("/") + "/cm", json={"data": {"a": "1"}}, headers=MERGE)
    stale = {"metadata": {"resourceVersion": created["metadata"]["resourceVersion"]}, "data": {"a": "2"}}
    response = await http.patch(CONFIGMAPS.lstrip("/") + "/cm", json=stale, headers=MERGE)
    assert response.status == 409


async def test_no_op_patch_keeps_the_resource_version(http: aiohttp.ClientSession) -> None:
    created = await (
        await http.post(CONFIGMAPS.lstrip("/"), json={"metadata": {"name": "cm"}, "data": {"a": "1"}})
    ).json()
    patched = await (await http.patch(CONFIGMAPS.lstrip("/") + "/cm", json={"data": {"a": "1"}}, headers=MERGE)).json()
    assert patched["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]


async def test_status_subresource_patch_changes_only_status(http: aiohttp.ClientSession) -> None:
    created = await (await http.post(AGENTRUNS.lstrip("/"), json=agentrun("one"))).json()
    patch = {"status": {"phase": "Running"}, "spec": {"maxIterations": 99}, "metadata": {"labels": {"sneaky": "yes"}}}
    patched = await (await http.patch(AGENTRUNS.lstrip("/") + "/one/status", json=patch, headers=MERGE)).json()
    assert patched["status"]["phase"] == "Running"
    assert patched["spec"]["maxIterations"] == 5
    assert "labels" not in patched["metadata"]
    assert patched["metadata"]["generation"] == created["metadata"]["generation"] == 1


async def test_status_subresource_put_changes_only_status(http: aiohttp.ClientSession) -> None:
    created = await (await http.post(AGENTRUNS.lstrip("/"), json=agentrun("one"))).json()
    body = {**created, "spec": {**created["spec"], "maxIterations": 42}, "status": {"phase": "Pending"}}
    updated = await (await http.put(AGENTRUNS.lstrip("/") + "/one/status", json=body)).json()
    assert updated["status"]["phase"] == "Pending"
    assert updated["spec"]["maxIterations"] == 5


async def test_spec_patch_never_touches_status(http: aiohttp.ClientSession) -> None:
    await http.post(AGENTRUNS.lstrip("/"), json=agentrun("one"))
    await http.patch(AGENTRUNS.lstrip("/") + "/one/status", json={"status": {"phase": "Running"}}, headers=MERGE)
    patched = await (
        await http.patch(
            AGENTRUNS.lstrip("/") + "/one",
            json={"spec": {"suspend": True}, "status": {"phase": "Forged"}},
            headers=MERGE,
        )
    ).json()
    assert patched["status"]["phase"] == "Running"
    assert patched["spec"]["suspend"] is True


async def test_create_ignores_status_when_a_status_subresource_exists(http: aiohttp.ClientSession) -> None:
    created = await (
        await http.post(AGENTRUNS.lstrip("/"), json={**agentrun("one"), "status": {"phase": "Succeeded"}})
    ).json()
    assert "status" not in created


async def test_generation_bumps_on_spec_changes_only(http: aiohttp.ClientSession) -> None:
    await http.post(AGENTRUNS.lstrip("/"), json=agentrun("one"))
    labelled = await (
        await http.patch(AGENTRUNS.lstrip("/") + "/one", json={"metadata": {"labels": {"a": "b"}}}, headers=MERGE)
    ).json()
    assert labelled["metadata"]["generation"] == 1
    with_status = await (
        await http.patch(AGENTRUNS.lstrip("/") + "/one/status", json={"status": {"phase": "Running"}}, headers=MERGE)
    ).json()
    assert with_status["metadata"]["generation"] == 1
    respecced = await (
        await http.patch(AGENTRUNS.lstrip("/") + "/one", json={"spec": {"suspend": True}}, headers=MERGE)
    ).json()
    assert respecced["metadata"]["generation"] == 2
    assert int(respecced["metadata"]["resourceVersion"]) > int(with_status["metadata"]["resourceVersion"])


async def test_secret_string_data_is_stored_base64_in_data(http: aiohttp.ClientSession) -> None:
    created = await (
        await http.post(
            "api/v1/namespaces/default/secrets", json={"metadata": {"name": "s"}, "stringData": {"token": "abc"}}
        )
    ).json()
    assert created["data"] == {"token": "YWJj"}
    assert "stringData" not in created
    assert created["type"] == "Opaque"


async def test_job_status_subresource_and_selector_defaults(http: aiohttp.ClientSession) -> None:
    job = {
        "metadata": {"name": "j"},
        "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i"}], "restartPolicy": "Never"}}},
    }
    created = await (await http.post("apis/batch/v1/namespaces/default/jobs", json=job)).json()
    uid = created["metadata"]["uid"]
    assert created["spec"]["selector"] == {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
    assert created["spec"]["template"]["metadata"]["labels"]["batch.kubernetes.io/job-name"] == "j"
    patched = await (
        await http.patch(
            "apis/batch/v1/namespaces/default/jobs/j/status", json={"status": {"active": 1}}, headers=MERGE
        )
    ).json()
    assert patched["status"] == {"active": 1}
    assert patched["metadata"]["generation"] == 1


async def test_store_helpers_see_what_http_clients_wrote(
    apiserver: EmulatedApiServer, http: aiohttp.ClientSession
) -> None:
    await http.post(AGENTRUNS.lstrip("/"), json=agentrun("one"))
    stored = apiserver.store.try_get("ar", "default", "one")
    assert stored is not None
    assert stored["spec"]["maxIterations"] == 5
    assert [obj["metadata"]["name"] for obj in apiserver.store.all_of("AgentRun")] == ["one"]


BUILT_IN_PATHS = [
    ("api/v1/namespaces/default/configmaps", "ConfigMap"),
    ("api/v1/namespaces/default/secrets", "Secret"),
    ("api/v1/namespaces/default/serviceaccounts", "ServiceAccount"),
    ("api/v1/namespaces/default/services", "Service"),
    ("api/v1/namespaces/default/pods", "Pod"),
    ("api/v1/namespaces/default/events", "Event"),
    ("api/v1/namespaces/default/persistentvolumeclaims", "PersistentVolumeClaim"),
    ("apis/events.k8s.io/v1/namespaces/default/events", "Event"),
    ("apis/batch/v1/namespaces/default/jobs", "Job"),
    ("apis/rbac.authorization.k8s.io/v1/namespaces/default/roles", "Role"),
    ("apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings", "RoleBinding"),
    ("apis/rbac.authorization.k8s.io/v1/clusterroles", "ClusterRole"),
    ("apis/coordination.k8s.io/v1/namespaces/default/leases", "Lease"),
    ("apis/storage.k8s.io/v1/storageclasses", "StorageClass"),
    ("apis/kopf.dev/v1/namespaces/default/kopfpeerings", "KopfPeering"),
    ("apis/kopf.dev/v1/clusterkopfpeerings", "ClusterKopfPeering"),
]


@pytest.mark.parametrize(
    ("path", "kind"), BUILT_IN_PATHS, ids=[f"{p.split('/')[-1]}-{p.split('/')[1]}" for p, _ in BUILT_IN_PATHS]
)
async def test_built_in_kinds_are_served_with_their_list_kind(
    http: aiohttp.ClientSession, path: str, kind: str
) -> None:
    created = await http.post(path, json={"metadata": {"name": "x"}})
    assert created.status == 201, await created.text()
    assert (await created.json())["kind"] == kind
    listing = await (await http.get(path)).json()
    assert listing["kind"] == f"{kind}List"
    assert [item["metadata"]["name"] for item in listing["items"]] == ["x"]
    assert (await http.delete(f"{path}/x")).status == 200


async def test_dry_run_validates_and_answers_without_storing(http: aiohttp.ClientSession) -> None:
    dry = await http.post(AGENTRUNS.lstrip("/"), params={"dryRun": "All"}, json=agentrun("dry"))
    answered = await dry.json()
    assert dry.status == 201
    assert answered["spec"]["model"]["baseURL"]  # defaulted as it would be stored
    assert (await http.get(AGENTRUNS.lstrip("/") + "/dry")).status == 404
    refused = await http.post(AGENTRUNS.lstrip("/"), params={"dryRun": "All"}, json=agentrun("dry", maxIterations=0))
    assert refused.status == 422
    created = await (await http.post(CONFIGMAPS.lstrip("/"), json={"metadata": {"name": "cm"}})).json()
    await http.patch(CONFIGMAPS.lstrip("/") + "/cm", params={"dryRun": "All"}, json={"data": {"a": "1"}}, headers=MERGE)
    assert (await http.delete(CONFIGMAPS.lstrip("/") + "/cm", params={"dryRun": "All"})).status == 200
    assert await (await http.get(CONFIGMAPS.lstrip("/") + "/cm")).json() == created


async def test_list_pages_with_limit_and_continue(http: aiohttp.ClientSession) -> None:
    for name in ("a", "b", "c", "d", "e"):
        await http.post(CONFIGMAPS.lstrip("/"), json={"metadata": {"name": name}})
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        params = {"limit": "2", **({"continue": token} if token else {})}
        page = await (await http.get(CONFIGMAPS.lstrip("/"), params=params)).json()
        seen += [item["metadata"]["name"] for item in page["items"]]
        pages += 1
        token = page["metadata"].get("continue", "")
        if not token:
            break
        assert page["metadata"]["remainingItemCount"] == 5 - len(seen)
    assert seen == ["a", "b", "c", "d", "e"]
    assert pages == 3


def large_json(body: dict[str, Any]) -> io.BytesIO:
    """A large JSON body as a stream (aiohttp warns about large raw bodies)."""
    return io.BytesIO(json.dumps(body).encode())


async def test_config_map_over_one_mebibyte_is_422_too_long(http: aiohttp.ClientSession) -> None:
    too_big = {"metadata": {"name": "big"}, "data": {"ckpt": "x" * (1024 * 1024)}}
    response = await http.post(
        CONFIGMAPS.lstrip("/"), data=large_json(too_big), headers={"Content-Type": "application/json"}
    )
    status = await response.json()
    assert response.status == 422
    assert "Too long: must have at most 1048576 bytes" in status["message"]
    fitting = {"metadata": {"name": "fits"}, "data": {"ckpt": "x" * 1_000_000}}
    fits = await http.post(
        CONFIGMAPS.lstrip("/"), data=large_json(fitting), headers={"Content-Type": "application/json"}
    )
    assert fits.status == 201
    assert (await fits.json())["metadata"]["name"] == "fits"


async def test_annotations_over_256_kib_are_422_too_long(http: aiohttp.ClientSession) -> None:
    body = {"metadata": {"name": "cm", "annotations": {"big": "x" * (256 * 1024)}}}
    response = await http.post(
        CONFIGMAPS.lstrip("/"), data=large_json(body), headers={"Content-Type": "application/json"}
    )
    assert response.status == 422
    assert (await response.json())["details"]["causes"][0]["field"] == "metadata.annotations"


async def test_secret_data_must_be_base64(http: aiohttp.ClientSession) -> None:
    bad = await http.post(
        "api/v1/namespaces/default/secrets", json={"metadata": {"name": "s"}, "data": {"token": "not base64!"}}
    )
    assert bad.status == 400
    assert "illegal base64 data" in (await bad.json())["message"]
