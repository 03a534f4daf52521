"""Custom resources are admitted through the CRD's validator hook; CRDs posted over the API are served at once."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
import yaml

from tests.conftest import AGENTRUN_CRD
from tests.harness.apiserver import EmulatedApiServer
from tests.integration.conftest import AGENTRUNS, MERGE, TinyAdmission, agentrun

pytestmark = pytest.mark.integration


@pytest.fixture
async def validating_http() -> AsyncIterator[aiohttp.ClientSession]:
    server = EmulatedApiServer([AGENTRUN_CRD], admission_factory=TinyAdmission.from_crd)
    async with server, aiohttp.ClientSession(base_url=server.url + "/") as session:
        yield session


async def test_create_rejected_by_the_validator_is_422_invalid_with_causes(
    validating_http: aiohttp.ClientSession,
) -> None:
    response = await validating_http.post(AGENTRUNS.lstrip("/"), json=agentrun("bad", maxIterations=0))
    status = await response.json()
    assert response.status == 422
    assert (status["kind"], status["reason"], status["code"]) == ("Status", "Invalid", 422)
    assert status["message"].startswith('AgentRun.agentrun.dev "bad" is invalid: spec.maxIterations')
    assert status["details"]["causes"] == [
        {
            "reason": "FieldValueInvalid",
            "message": "Invalid value: 0: spec.maxIterations in body should be greater than or equal to 1",
            "field": "spec.maxIterations",
        }
    ]
    assert status["details"]["kind"] == "AgentRun"
    assert status["details"]["group"] == "agentrun.dev"
    assert (await validating_http.get(AGENTRUNS.lstrip("/") + "/bad")).status == 404


async def test_validator_defaults_are_stored(validating_http: aiohttp.ClientSession) -> None:
    created = await (await validating_http.post(AGENTRUNS.lstrip("/"), json=agentrun("good"))).json()
    assert created["spec"]["model"]["baseURL"] == "https://api.openai.com/v1"


async def test_unknown_fields_are_pruned_unless_field_validation_is_strict(
    validating_http: aiohttp.ClientSession,
) -> None:
    lenient = await (await validating_http.post(AGENTRUNS.lstrip("/"), json=agentrun("lenient", bogus=1))).json()
    assert "bogus" not in lenient["spec"]
    strict = await validating_http.post(
        AGENTRUNS.lstrip("/"), params={"fieldValidation": "Strict"}, json=agentrun("strict", bogus=1)
    )
    assert strict.status == 422
    assert (await strict.json())["details"]["causes"][0]["field"] == "spec.bogus"


async def test_update_is_validated_by_the_admission_hook(validating_http: aiohttp.ClientSession) -> None:
    await validating_http.post(AGENTRUNS.lstrip("/"), json=agentrun("run"))
    response = await validating_http.patch(
        AGENTRUNS.lstrip("/") + "/run", json={"spec": {"maxIterations": "many"}}, headers=MERGE
    )
    assert response.status == 422
    assert (await response.json())["details"]["causes"][0]["reason"] == "FieldValueTypeInvalid"


async def test_status_writes_go_through_the_status_validator(validating_http: aiohttp.ClientSession) -> None:
    await validating_http.post(AGENTRUNS.lstrip("/"), json=agentrun("run"))
    bad = await validating_http.patch(
        AGENTRUNS.lstrip("/") + "/run/status", json={"status": {"iteration": -1}}, headers=MERGE
    )
    assert bad.status == 422
    assert (await bad.json())["details"]["causes"][0]["field"] == "status.iteration"
    good = await validating_http.patch(
        AGENTRUNS.lstrip("/") + "/run/status", json={"status": {"iteration": 2}}, headers=MERGE
    )
    assert good.status == 200


async def test_posted_crd_is_established_and_served_with_discovery(http: aiohttp.ClientSession) -> None:
    crd = yaml.safe_load(AGENTRUN_CRD.read_text())
    crd["metadata"]["name"] = "widgets.example.com"
    crd["spec"]["group"] = "example.com"
    crd["spec"]["names"] = {
        "plural": "widgets",
        "singular": "widget",
        "kind": "Widget",
        "shortNames": ["wd"],
        "categories": ["gadgets"],
    }
    crd["spec"]["scope"] = "Cluster"
    created = await (await http.post("apis/apiextensions.k8s.io/v1/customresourcedefinitions", json=crd)).json()
    conditions = {c["type"]: c["status"] for c in created["status"]["conditions"]}
    assert conditions == {"NamesAccepted": "True", "Established": "True"}
    groups = await (await http.get("apis")).json()
    assert "example.com" in [group["name"] for group in groups["groups"]]
    resources = await (await http.get("apis/example.com/v1alpha1")).json()
    widget = next(r for r in resources["resources"] if r["name"] == "widgets")
    assert widget["kind"] == "Widget"
    assert widget["namespaced"] is False
    assert widget["shortNames"] == ["wd"]
    assert widget["categories"] == ["gadgets"]
    assert "widgets/status" in [r["name"] for r in resources["resources"]]
    body = {"apiVersion": "example.com/v1alpha1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {}}
    assert (await http.post("apis/example.com/v1alpha1/widgets", json=body)).status == 201


async def test_crd_with_mismatched_name_is_rejected(http: aiohttp.ClientSession) -> None:
    crd = yaml.safe_load(AGENTRUN_CRD.read_text())
    crd["metadata"]["name"] = "wrong.example.com"
    response = await http.post("apis/apiextensions.k8s.io/v1/customresourcedefinitions", json=crd)
    assert response.status == 422
