"""A run's own stream route: which objects each no-reload controller gets, and the refusal for the others."""

from typing import Any

import pytest

from agentrun_api import contract
from agentrun_api.spec import AgentRunSpec
from agentrun_common.stream_timeouts import CONTROLLERS
from agentrun_operator.children import RunOwner, build_children
from agentrun_operator.run_route import build_run_route, refusal, routable_controllers
from agentrun_operator.settings import OperatorSettings
from tests.operator_samples import manifest
from tests.unit.test_operator_children import DEADLINE, NOW

pytestmark = pytest.mark.unit

OWNER = RunOwner(namespace="team-a", name="q3", uid="uid-q3")


def spec_with(controller: str, **ingress: Any) -> AgentRunSpec:
    streaming = {"enabled": True, "ingress": {"controller": controller, "host": "q3.example.com", **ingress}}
    return AgentRunSpec.model_validate(manifest(streaming=streaming)["spec"])


def route_kinds(controller: str) -> list[str]:
    route = build_run_route("team-a", "q3-stream", {}, spec_with(controller))
    assert route is not None
    return [obj["kind"] for obj in route.objects]


def test_each_controller_that_adds_routes_without_a_reload_gets_its_own_objects() -> None:
    assert routable_controllers() == ["gke-gateway", "traefik", "contour", "istio", "gateway-api"]
    assert route_kinds("gateway-api") == ["HTTPRoute"]
    assert route_kinds("gke-gateway") == ["HTTPRoute", "GCPBackendPolicy"]
    assert route_kinds("contour") == ["HTTPProxy"]
    assert route_kinds("istio") == ["VirtualService"]
    assert route_kinds("traefik") == ["Ingress", "ServersTransport"]


def test_every_route_object_leads_to_the_runs_own_stream_service_in_its_namespace() -> None:
    route = build_run_route("team-a", "q3-stream", {"app": "x"}, spec_with("contour", className="contour-public"))
    assert route is not None
    [proxy] = route.objects
    assert proxy["metadata"] == {"name": "q3-stream", "namespace": "team-a", "labels": {"app": "x"}}
    assert proxy["spec"]["virtualhost"] == {"fqdn": "q3.example.com"}
    assert proxy["spec"]["ingressClassName"] == "contour-public"
    assert proxy["spec"]["routes"][0]["services"] == [{"name": "q3-stream", "port": contract.STREAM_PORT}]
    assert route.names == ["HTTPProxy/q3-stream"]


def test_traefiks_servers_transport_is_referenced_from_the_runs_stream_service_and_the_route_is_owned() -> None:
    objects = build_children(
        OWNER,
        spec_with("traefik"),
        OperatorSettings(),
        stream_token="tok",
        permit_key="key",
        deadline=DEADLINE,
        now=NOW,
    )
    by_kind = {obj["kind"]: obj for obj in objects}
    annotations = by_kind["Service"]["metadata"]["annotations"]
    assert annotations == {"traefik.ingress.kubernetes.io/service.serverstransport": "team-a-q3-stream@kubernetescrd"}
    for kind in ("Ingress", "ServersTransport"):
        assert by_kind[kind]["metadata"]["ownerReferences"][0]["uid"] == "uid-q3"


def test_a_run_without_its_own_route_gets_none_and_no_refusal() -> None:
    spec = AgentRunSpec.model_validate(manifest()["spec"])
    assert build_run_route("team-a", "q3-stream", {}, spec) is None
    assert refusal(spec) is None


@pytest.mark.parametrize("controller", [c for c in CONTROLLERS if c not in routable_controllers()])
def test_a_controller_that_reloads_or_provisions_is_refused_naming_the_field_and_the_fix(controller: str) -> None:
    message = refusal(spec_with(controller))
    assert message is not None
    assert message.startswith(f"spec.streaming.ingress.controller: {controller} cannot give a run its own route (")
    assert "remove spec.streaming.ingress" in message
    assert "gateway-api" in message
    assert build_run_route("team-a", "q3-stream", {}, spec_with(controller)) is None
