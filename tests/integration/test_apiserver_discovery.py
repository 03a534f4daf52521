"""Discovery, server-side tables, OpenAPI, access reviews and pod logs of the emulated apiserver."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from tests.harness.apiserver import EmulatedApiServer
from tests.harness.apiserver.handler import TABLE_CONTENT_TYPE
from tests.harness.apiserver.tables import evaluate_json_path, human_duration
from tests.integration.conftest import AGENTRUNS, CONFIGMAPS, MERGE, agentrun

pytestmark = pytest.mark.integration
TABLE = {"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"}


async def test_core_discovery_lists_built_in_kinds_with_verbs_and_short_names(http: aiohttp.ClientSession) -> None:
    core = await (await http.get("api/v1")).json()
    by_name = {r["name"]: r for r in core["resources"]}
    assert core["groupVersion"] == "v1"
    assert by_name["configmaps"]["shortNames"] == ["cm"]
    assert by_name["configmaps"]["namespaced"] is True
    assert by_name["namespaces"]["namespaced"] is False
    assert {
        "pods/log",
        "pods/status",
        "events",
        "secrets",
        "serviceaccounts",
        "services",
        "persistentvolumeclaims",
    } <= set(by_name)
    assert (await (await http.get("api")).json())["versions"] == ["v1"]


async def test_group_discovery_lists_the_operators_groups(http: aiohttp.ClientSession) -> None:
    groups = {g["name"]: g for g in (await (await http.get("apis")).json())["groups"]}
    expected = {
        "agentrun.dev", "batch", "rbac.authorization.k8s.io", "coordination.k8s.io", "storage.k8s.io",
        "events.k8s.io", "authorization.k8s.io", "apiextensions.k8s.io", "kopf.dev",
    }  # fmt: skip
    assert expected <= set(groups)
    assert groups["agentrun.dev"]["preferredVersion"]["version"] == "v1alpha1"
    jobs = {r["name"]: r for r in (await (await http.get("apis/batch/v1")).json())["resources"]}
    assert "jobs/status" in jobs
    agentruns = {r["name"]: r for r in (await (await http.get("apis/agentrun.dev/v1alpha1")).json())["resources"]}
    assert agentruns["agentruns"]["shortNames"] == ["ar"]
    assert agentruns["agentruns"]["categories"] == ["agentrun", "all-agents"]
    assert (await http.get("apis/nothing.example.com/v1")).status == 404


async def test_table_rendering_uses_the_crd_printer_columns(http: aiohttp.ClientSession) -> None:
    await http.post(AGENTRUNS.lstrip("/"), json=agentrun("run"))
    await http.patch(
        AGENTRUNS.lstrip("/") + "/run/status", json={"status": {"phase": "Running", "progress": "2/5"}}, headers=MERGE
    )
    response = await http.get(AGENTRUNS.lstrip("/"), headers=TABLE)
    table = await response.json()
    assert response.headers["Content-Type"] == TABLE_CONTENT_TYPE
    assert table["kind"] == "Table"
    assert table["apiVersion"] == "meta.k8s.io/v1"
    names = [(c["name"], c["type"], c["priority"]) for c in table["columnDefinitions"]]
    assert names == [
        ("Name", "string", 0),
        ("Phase", "string", 0),
        ("Progress", "string", 0),
        ("Age", "date", 0),
        ("Model", "string", 1),
        ("Message", "string", 1),
    ]
    row: dict[str, Any] = table["rows"][0]
    assert row["cells"][:3] == ["run", "Running", "2/5"]
    assert row["cells"][3].endswith("s")  # the apiserver renders date cells as an age: "0s"
    assert row["cells"][4] == "gpt-4.1-mini"
    assert len(row["cells"]) == 6
    assert row["object"]["kind"] == "PartialObjectMetadata"
    assert row["object"]["metadata"]["name"] == "run"


async def test_table_for_built_ins_has_name_and_age(http: aiohttp.ClientSession) -> None:
    await http.post(CONFIGMAPS.lstrip("/"), json={"metadata": {"name": "cm"}})
    table = await (await http.get(CONFIGMAPS.lstrip("/") + "/cm", headers=TABLE)).json()
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Age"]
    assert table["rows"][0]["cells"][0] == "cm"


def test_json_path_evaluation_of_simple_paths() -> None:
    obj = {"status": {"conditions": [{"type": "Ready"}]}, "metadata": {"labels": {"a.b/c": "x"}}}
    assert evaluate_json_path(obj, ".status.conditions[0].type") == "Ready"
    assert evaluate_json_path(obj, ".metadata.labels['a.b/c']") == "x"
    assert evaluate_json_path(obj, ".status.missing") is None


def test_ages_print_as_the_apiserver_prints_them() -> None:
    assert [human_duration(s) for s in (5, 119, 150, 600, 3 * 3600 + 60, 30 * 3600, 3 * 86400 + 3600, 400 * 86400)] == [
        "5s", "119s", "2m30s", "10m", "3h1m", "30h", "3d1h", "400d",
    ]  # fmt: skip


async def test_openapi_v3_advertises_field_validation_for_patch(http: aiohttp.ClientSession) -> None:
    root = await (await http.get("openapi/v3")).json()
    url = root["paths"]["apis/agentrun.dev/v1alpha1"]["serverRelativeURL"]
    document = await (await http.get(url.lstrip("/"))).json()
    patch = document["paths"]["/apis/agentrun.dev/v1alpha1/namespaces/{namespace}/agentruns/{name}"]["patch"]
    assert patch["x-kubernetes-group-version-kind"] == {
        "group": "agentrun.dev",
        "version": "v1alpha1",
        "kind": "AgentRun",
    }
    assert "fieldValidation" in [p["name"] for p in patch["parameters"]]
    assert "dev.agentrun.v1alpha1.AgentRun" in document["components"]["schemas"]


async def test_subject_access_review_is_answered_from_the_policy(
    apiserver: EmulatedApiServer, http: aiohttp.ClientSession
) -> None:
    def policy(spec: Any) -> tuple[bool, str]:
        allowed = spec["resourceAttributes"]["verb"] == "get"
        return allowed, "reads only" if allowed else "no writes for you"

    apiserver.handler.authorization_policy = policy
    review: dict[str, Any] = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": "alice",
            "resourceAttributes": {"verb": "create", "resource": "agentruns", "namespace": "default"},
        },
    }
    denied = await (await http.post("apis/authorization.k8s.io/v1/subjectaccessreviews", json=review)).json()
    assert denied["status"] == {"allowed": False, "denied": True, "reason": "no writes for you"}
    review["spec"]["resourceAttributes"]["verb"] = "get"
    allowed = await (await http.post("apis/authorization.k8s.io/v1/subjectaccessreviews", json=review)).json()
    assert allowed["status"]["allowed"] is True
    assert (await http.get("apis/authorization.k8s.io/v1/subjectaccessreviews")).status == 405


async def test_pod_log_serves_the_recorded_text(apiserver: EmulatedApiServer, http: aiohttp.ClientSession) -> None:
    await http.post("api/v1/namespaces/default/pods", json={"metadata": {"name": "p"}, "spec": {"containers": []}})
    apiserver.pod_logs[("default", "p")] = "one\ntwo\nthree\n"
    assert await (await http.get("api/v1/namespaces/default/pods/p/log")).text() == "one\ntwo\nthree\n"
    assert await (await http.get("api/v1/namespaces/default/pods/p/log", params={"tailLines": "1"})).text() == "three\n"
    assert (await http.get("api/v1/namespaces/default/pods/ghost/log")).status == 404


@pytest.mark.parametrize(
    "path",
    [
        "nonexistent",
        "api/v2",
        "apis/nothing.example.com",
        "api/v1/nothings",
        "apis/batch/v1/namespaces/default/jobs/j/scale",
    ],
)
async def test_unknown_urls_are_404_not_found_statuses(http: aiohttp.ClientSession, path: str) -> None:
    response = await http.get(path)
    status = await response.json()
    assert response.status == 404
    assert (status["kind"], status["reason"]) == ("Status", "NotFound")
    assert status["message"].startswith("the server could not find the requested resource")


async def test_followed_pod_log_streams_appended_text_until_the_pod_finishes(
    apiserver: EmulatedApiServer, http: aiohttp.ClientSession
) -> None:
    await http.post("api/v1/namespaces/default/pods", json={"metadata": {"name": "p"}, "spec": {"containers": []}})
    apiserver.pod_logs[("default", "p")] = "first\n"
    async with http.get("api/v1/namespaces/default/pods/p/log", params={"follow": "true"}) as response:
        assert await asyncio.wait_for(response.content.readline(), 2) == b"first\n"
        apiserver.pod_logs[("default", "p")] += "second\n"
        assert await asyncio.wait_for(response.content.readline(), 2) == b"second\n"
        await http.patch(
            "api/v1/namespaces/default/pods/p/status", json={"status": {"phase": "Succeeded"}}, headers=MERGE
        )
        assert await asyncio.wait_for(response.content.read(), 2) == b""
