"""Custom resources are admitted through the CRD's admission (the project's CrdAdmission); CRDs posted over the API
are served at once."""

from __future__ import annotations

import aiohttp
import pytest
import yaml

from tests.conftest import AGENTRUN_CRD
from tests.integration.conftest import AGENTRUNS, MERGE, agentrun

pytestmark = pytest.mark.integration


async def test_create_rejected_by_admission_is_422_invalid_with_causes(http: aiohttp.ClientSession) -> None:
    response = await http.post(AGENTRUNS.lstrip("/"), json=agentrun("bad", maxIterations=0))
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
    assert (await http.get(AGENTRUNS.lstrip("/") + "/bad")).status == 404


async def test_schema_defaults_are_stored(http: aiohttp.ClientSession) -> None:
    created = await (await http.post(AGENTRUNS.lstrip("/"), json=agentrun("good"))).json()
    assert created["spec"]["model"]["baseURL"] == "https://api.openai.com/v1"


async def test_unknown_fields_are_pruned_unless_field_validation_is_strict(http: aiohttp.ClientSession) -> None:
    lenient = await (await http.post(AGENTRUNS.lstrip("/"), json=agentrun("lenient", bogus=1))).json()
    assert "bogus" not in lenient["spec"]
    strict = await http.post(
        AGENTRUNS.lstrip("/"), params={"fieldValidation": "Strict"}, json=agentrun("strict", bogus=1)
    )
    status = await strict.json()
    assert strict.status == 400
    assert status["reason"] == "BadRequest"
    assert 'unknown field "spec.bogus"' in status["message"]


async def test_update_of_an_immutable_field_is_refused_by_its_rule(http: aiohttp.ClientSession) -> None:
    await http.post(AGENTRUNS.lstrip("/"), json=agentrun("run"))
    response = await http.patch(AGENTRUNS.lstrip("/") + "/run", json={"spec": {"maxIterations": 6}}, headers=MERGE)
    status = await response.json()
    assert response.status == 422
    assert "maxIterations is immutable" in status["message"]
    allowed = await http.patch(AGENTRUNS.lstrip("/") + "/run", json={"spec": {"suspend": True}}, headers=MERGE)
    assert allowed.status == 200


async def test_status_writes_are_validated_against_the_status_schema(http: aiohttp.ClientSession) -> None:
    await http.post(AGENTRUNS.lstrip("/"), json=agentrun("run"))
    bad = await http.patch(AGENTRUNS.lstrip("/") + "/run/status", json={"status": {"phase": "Dancing"}}, headers=MERGE)
    assert bad.status == 422
    assert (await bad.json())["details"]["causes"][0]["field"] == "status.phase"
    good = await http.patch(
        AGENTRUNS.lstrip("/") + "/run/status", json={"status": {"phase": "Running", "iteration": 2}}, headers=MERGE
    )
    assert good.status == 200


async def test_status_fields_outside_the_schema_are_pruned(http: aiohttp.ClientSession) -> None:
    await http.post(AGENTRUNS.lstrip("/"), json=agentrun("run"))
    patch = {"status": {"phase": "Running", "kopf": {"progress": {}}}}
    patched = await (await http.patch(AGENTRUNS.lstrip("/") + "/run/status", json=patch, headers=MERGE)).json()
    assert patched["status"]["phase"] == "Running"
    assert "kopf" not in patched["status"]


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
    body = {**agentrun("w"), "apiVersion": "example.com/v1alpha1", "kind": "Widget"}
    assert (await http.post("apis/example.com/v1alpha1/widgets", json=body)).status == 201
    invalid = {**agentrun("x", maxIterations=0), "apiVersion": "example.com/v1alpha1", "kind": "Widget"}
    assert (await http.post("apis/example.com/v1alpha1/widgets", json=invalid)).status == 422


async def test_crd_with_mismatched_name_is_rejected(http: aiohttp.ClientSession) -> None:
    crd = yaml.safe_load(AGENTRUN_CRD.read_text())
    crd["metadata"]["name"] = "wrong.example.com"
    response = await http.post("apis/apiextensions.k8s.io/v1/customresourcedefinitions", json=crd)
    assert response.status == 422
