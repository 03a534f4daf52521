"""A run's own stream route (spec.streaming.ingress) on the real control plane: created by the operator for a
controller that adds routes without a reload, owned by the run and deleted with it by the garbage collector,
said in status; refused, naming the field and the fix, for a controller that reloads."""

import time

import httpx
import pytest

from agentrun_api import conditions as c
from agentrun_api import contract
from tests.harness.inprocess_operator import Cluster, eventually, run_manifest, running_operator

pytestmark = pytest.mark.integration

CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
# Gateway API's HTTPRoute, reduced to what the API server needs to serve the kind (the real CRD has a schema).
HTTP_ROUTE_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {
        "name": "httproutes.gateway.networking.k8s.io",
        # *.k8s.io groups need it; the real CRD carries the same.
        "annotations": {"api-approved.kubernetes.io": "https://github.com/kubernetes-sigs/gateway-api/pull/891"},
    },
    "spec": {
        "group": "gateway.networking.k8s.io",
        "scope": "Namespaced",
        "names": {"kind": "HTTPRoute", "plural": "httproutes", "singular": "httproute", "listKind": "HTTPRouteList"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
            }
        ],
    },
}


def install_http_route_api(admin: httpx.Client) -> None:
    answer = admin.post(CRDS, json=HTTP_ROUTE_CRD)
    assert answer.status_code in (201, 409), answer.text
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        conditions = admin.get(f"{CRDS}/{HTTP_ROUTE_CRD['metadata']['name']}").json()["status"].get("conditions") or []
        if any(cond["type"] == "Established" and cond["status"] == "True" for cond in conditions):
            return
        time.sleep(0.2)
    raise AssertionError("the HTTPRoute CRD was not established")


def gateway_api_run(name: str, **ingress: str) -> dict[str, object]:
    return run_manifest(
        name,
        maxExecutionTime="2h",
        streaming={"enabled": True, "ingress": {"controller": "gateway-api", "host": "q3.runs.example.com", **ingress}},
    )


async def test_a_gateway_api_run_gets_its_own_http_route_owned_by_it_and_deleted_with_it(cluster: Cluster) -> None:
    install_http_route_api(cluster.admin)
    cluster.add_api_key_secret()
    async with running_operator(cluster):
        cluster.create(gateway_api_run("q3", className="public"))
        route = await eventually(lambda: cluster.get("HTTPRoute", "q3-stream"), message="the run's HTTPRoute")
        run = cluster.run()
        assert [(ref["kind"], ref["uid"]) for ref in route["metadata"]["ownerReferences"]] == [
            ("AgentRun", run["metadata"]["uid"])
        ]
        spec = route["spec"]
        assert spec["hostnames"] == ["q3.runs.example.com"]
        assert spec["parentRefs"] == [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public"}]
        [rule] = spec["rules"]
        assert rule["backendRefs"] == [{"name": "q3-stream", "port": contract.STREAM_PORT}]  # the run's own Service
        # The whole-response timers cover this 2 h run plus the gateway's margin (maxExecutionTime + 300 s).
        assert rule["timeouts"] == {"request": "2h5m", "backendRequest": "2h5m"}

        ready = await eventually(lambda: cluster.condition(c.STREAM_ROUTE_READY), message="StreamRouteReady")
        assert (ready["status"], ready["reason"]) == ("True", c.REASON_ROUTE_CREATED)
        assert cluster.status()["streamRoute"] == {
            "controller": "gateway-api",
            "host": "q3.runs.example.com",
            "path": "/events",
            "objects": ["HTTPRoute/q3-stream"],
        }

        cluster.delete("AgentRun", "q3")
        # The garbage collector, not the operator, removes it: it may first need to discover the new kind.
        await eventually(lambda: cluster.get("HTTPRoute", "q3-stream") is None, timeout=90, message="route deleted")


async def test_a_controller_that_reloads_is_refused_naming_the_field_and_the_fix(cluster: Cluster) -> None:
    cluster.add_api_key_secret()
    async with running_operator(cluster):
        cluster.create(
            run_manifest(
                "q3",
                streaming={"enabled": True, "ingress": {"controller": "ingress-nginx", "host": "q3.runs.example.com"}},
            )
        )
        await eventually(lambda: cluster.status().get("phase") == "Failed", message="the run refused")
        status = cluster.status()
        assert status["reason"] == c.REASON_INVALID_SPEC
        assert status["message"].startswith("spec.streaming.ingress.controller: ingress-nginx cannot give a run")
        assert "reloads nginx" in status["message"]
        assert "remove spec.streaming.ingress" in status["message"]
        assert "contour" in status["message"]
        assert cluster.items("Ingress") == []  # nothing half-built
        assert cluster.get("Job", "q3-runner") is None


async def test_a_route_kind_the_cluster_does_not_serve_is_said_in_status_and_the_run_goes_on(cluster: Cluster) -> None:
    cluster.add_api_key_secret()
    async with running_operator(cluster):  # no Contour here: the API server does not serve HTTPProxy
        cluster.create(
            run_manifest(
                "q3", streaming={"enabled": True, "ingress": {"controller": "contour", "host": "q3.runs.example.com"}}
            )
        )
        ready = await eventually(lambda: cluster.condition(c.STREAM_ROUTE_READY), message="StreamRouteReady")
        assert (ready["status"], ready["reason"]) == ("False", c.REASON_ROUTE_API_MISSING)
        assert ready["message"].startswith("spec.streaming.ingress: the cluster does not serve HTTPProxy")
        assert "install contour" in ready["message"]
        assert "remove spec.streaming.ingress" in ready["message"]
        accepted = cluster.condition(c.ACCEPTED)
        assert accepted is not None
        assert accepted["status"] == "True"
        assert cluster.get("Job", "q3-runner") is not None  # it streams through the shared route meanwhile
