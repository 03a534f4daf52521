"""The stream gateway in the chart: the route the chart renders for each controller is the one
agentrun_common.stream_timeouts renders for the same target, and everything else is wired to it."""

from typing import Any, get_args

import pytest

from agentrun_api.spec import IngressController
from agentrun_common.stream_timeouts import StreamBudget, render_stream_route
from agentrun_common.stream_timeouts.controllers import RouteTarget
from agentrun_gateway.settings import GatewaySettings
from agentrun_operator import chart_routes
from tests.harness.chart import CHART_DIR, NAMESPACE, ci_scenarios, find, render, render_objects

pytestmark = pytest.mark.unit

GATEWAY = "agentrun-operator-stream-gateway"
SCENARIOS = ci_scenarios()


def gateway_values(controller: str, **route: str) -> dict[str, Any]:
    return {"gateway": {"enabled": True, "controller": controller, "route": {"host": "agents.example.com", **route}}}


def without_labels(obj: dict[str, Any]) -> dict[str, Any]:
    return {**obj, "metadata": {k: v for k, v in obj["metadata"].items() if k != "labels"}}


def test_chart_routes_file_is_generated_from_stream_timeouts() -> None:
    assert (CHART_DIR / "files" / "stream-routes.yaml").read_text() == chart_routes.render_chart_routes(), (
        "run `make chart-sync`"
    )


@pytest.mark.parametrize("controller", get_args(IngressController))
@pytest.mark.parametrize(("tls", "class_name"), [("", ""), ("agents-tls", "internal")])
def test_route_objects_equal_what_stream_timeouts_renders(controller: str, tls: str, class_name: str) -> None:
    objects = render_objects(gateway_values(controller, tlsSecretName=tls, className=class_name))
    target = RouteTarget(
        namespace=NAMESPACE,
        service_name=GATEWAY,
        host="agents.example.com",
        class_name=class_name or None,
        tls_secret_name=tls or None,
        gateway_namespace=NAMESPACE,  # the chart names the release namespace where the default leaves it out
        selector={},
        extra_path_prefixes=chart_routes.GATEWAY_EXTRA_PATH_PREFIXES,
    )
    expected = render_stream_route(controller, StreamBudget.longest_allowed(), target)  # type: ignore[arg-type]
    gateway_objects = [
        o
        for o in objects
        if o["metadata"]["name"] == GATEWAY
        and o["kind"] not in {"ServiceAccount", "Deployment", "ClusterRole", "ClusterRoleBinding"}
    ]
    (service,) = [o for o in gateway_objects if o["kind"] == "Service"]
    (expected_service,) = [o for o in expected.objects if o["kind"] == "Service"]
    assert service["spec"]["type"] == expected_service["spec"]["type"]
    assert service["spec"]["ports"] == expected_service["spec"]["ports"]
    assert service["metadata"].get("annotations", {}) == expected_service["metadata"].get("annotations", {})
    routes = sorted((without_labels(o) for o in gateway_objects if o["kind"] != "Service"), key=lambda o: o["kind"])
    assert routes == sorted((o for o in expected.objects if o["kind"] != "Service"), key=lambda o: o["kind"])


def test_gateway_needs_a_host() -> None:
    with pytest.raises(Exception, match=r"gateway\.route\.host is required"):
        render({"gateway": {"enabled": True}})


def test_gateway_scenario_wires_operator_urls_service_and_pods() -> None:
    objects = render_objects(SCENARIOS["gateway"])
    operator = find(objects, "Deployment", "agentrun-operator")
    env = {e["name"]: e.get("value") for e in operator["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["AGENTRUN_STREAM_BASE_URL"] == "https://agents.example.com"
    gateway = find(objects, "Deployment", GATEWAY)
    pod = gateway["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert {e["name"]: e.get("value") for e in container["env"]}["AGENTRUN_GATEWAY_CONTROLLER"] == "ingress-nginx"
    assert {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}} in container["env"]
    assert pod["spec"]["serviceAccountName"] == GATEWAY
    service = find(objects, "Service", GATEWAY)
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert (
        not service["spec"]["selector"].items()
        <= find(objects, "Deployment", "agentrun-operator")["spec"]["template"]["metadata"]["labels"].items()
    )
    ingress = find(objects, "Ingress", GATEWAY)
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": GATEWAY, "port": {"number": service["spec"]["ports"][0]["port"]}}


def test_operator_stream_url_setting_wins_over_the_gateway_route() -> None:
    values = gateway_values("ingress-nginx") | {"operator": {"streamBaseURL": "https://streams.example.org"}}
    operator = find(render_objects(values), "Deployment", "agentrun-operator")
    env = {e["name"]: e.get("value") for e in operator["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["AGENTRUN_STREAM_BASE_URL"] == "https://streams.example.org"


@pytest.mark.parametrize("controller", ["ingress-nginx", "gateway-api", "contour", "istio"])
def test_the_route_leads_the_runs_api_to_the_gateway_too(controller: str) -> None:
    objects = render_objects(gateway_values(controller))
    (route,) = [o for o in objects if o["kind"] in {"Ingress", "HTTPRoute", "HTTPProxy", "VirtualService"}]
    text = str(route["spec"])
    assert "/runs" in text
    assert "/v1" in text


def test_the_runs_api_limits_reach_the_gateway_as_its_settings() -> None:
    values = gateway_values("ingress-nginx")
    values["gateway"]["runsApi"] = {"runsPerMinutePerCaller": 7, "burstRunsPerCaller": 3, "maxRequestBytes": 2097152}
    (deployment,) = [
        o for o in render_objects(values) if o["kind"] == "Deployment" and o["metadata"]["name"] == GATEWAY
    ]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    settings = GatewaySettings.from_env({name: e["value"] for name, e in env.items() if "value" in e})
    assert (settings.runs_api.runs_per_minute_per_caller, settings.runs_api.burst_runs_per_caller) == (7, 3)
    assert settings.runs_api.max_request_bytes == 2097152
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
