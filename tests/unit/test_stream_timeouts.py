"""Generated timeouts of the stream route, for every controller and three budgets.

Expected values are written out by hand from each controller's documented keys, units and ranges
(docs/streaming.md), not computed with the code under test.
"""

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentrun_api.spec import AgentRunSpec
from agentrun_common.stream_timeouts import (
    CONTROLLERS,
    HopStatus,
    RouteTarget,
    StreamBudget,
    TimerKind,
    format_chain_table,
    gateway_api_duration,
    per_run_exposure_allowed,
    render_stream_route,
    stream_chain,
)
from agentrun_common.stream_timeouts.durations import GATEWAY_API_DURATION_PATTERN, is_valid_gateway_api_duration

pytestmark = pytest.mark.unit

KUBERNETES_VERSION = "1.35"
CRD_VALIDATORS = Path(__file__).resolve().parents[1] / "crd_schemas"

SHORT = StreamBudget(5 * 60, 15)  # whole-response needs 600 s
LONG = StreamBudget(12 * 3600, 15)  # 43 500 s
OVER = StreamBudget(168 * 3600, 15)  # 605 100 s: past every 24 h platform cap
BUDGETS = {"5m": SHORT, "12h": LONG, "168h": OVER}
TARGET = RouteTarget(namespace="agentrun-system", host="agents.example.com", tls_secret_name="agents-tls")


def _object(route_objects: tuple[dict[str, Any], ...], kind: str) -> dict[str, Any]:
    matches = [o for o in route_objects if o["kind"] == kind]
    assert len(matches) == 1, f"expected one {kind}, got {[o['kind'] for o in route_objects]}"
    return matches[0]


def _ingress_annotations(controller: str, budget: StreamBudget) -> dict[str, str]:
    return dict(_object(render_stream_route(controller, budget, TARGET).objects, "Ingress")["metadata"]["annotations"])


def _service_annotations(controller: str, budget: StreamBudget) -> dict[str, str]:
    service = _object(render_stream_route(controller, budget, TARGET).objects, "Service")
    return dict(service["metadata"].get("annotations", {}))


# (controller, budget) -> what the rendered objects must carry, exactly.
EXPECTED_INGRESS_ANNOTATIONS = {
    "ingress-nginx": {
        "nginx.ingress.kubernetes.io/proxy-read-timeout": "300",
        "nginx.ingress.kubernetes.io/proxy-send-timeout": "300",
        "nginx.ingress.kubernetes.io/proxy-buffering": "off",
    },
    "nginx-inc": {
        "nginx.org/proxy-read-timeout": "300s",
        "nginx.org/proxy-send-timeout": "300s",
        "nginx.org/proxy-buffering": "False",
    },
    "aws-alb": {"alb.ingress.kubernetes.io/load-balancer-attributes": "idle_timeout.timeout_seconds=300"},
    "haproxy-tech": {"haproxy.org/timeout-server": "300s"},
    "haproxy-ingress": {"haproxy-ingress.github.io/timeout-server": "300s"},
    "traefik": {},
    "gke-ingress": {"kubernetes.io/ingress.class": "gce"},
}


@pytest.mark.parametrize("budget", BUDGETS.values(), ids=BUDGETS.keys())
@pytest.mark.parametrize("controller", sorted(EXPECTED_INGRESS_ANNOTATIONS))
def test_idle_timer_controllers_render_exact_annotations_for_every_budget(
    controller: str, budget: StreamBudget
) -> None:
    annotations = _ingress_annotations(controller, budget) if EXPECTED_INGRESS_ANNOTATIONS[controller] else {}
    assert annotations == EXPECTED_INGRESS_ANNOTATIONS[controller]


@pytest.mark.parametrize(
    ("budget", "timeout"), [(SHORT, "600"), (LONG, "43500"), (OVER, "86400")], ids=["5m", "12h", "168h"]
)
def test_azure_agic_request_timeout_covers_the_budget_up_to_its_86400_cap(budget: StreamBudget, timeout: str) -> None:
    assert _ingress_annotations("azure-agic", budget) == {"appgw.ingress.kubernetes.io/request-timeout": timeout}


@pytest.mark.parametrize("budget", BUDGETS.values(), ids=BUDGETS.keys())
def test_aws_nlb_sets_the_listener_idle_timeout_on_a_load_balancer_service(budget: StreamBudget) -> None:
    route = render_stream_route("aws-nlb", budget, TARGET)
    service = _object(route.objects, "Service")
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["spec"]["ports"][0]["port"] == 80
    assert service["metadata"]["annotations"] == {
        "service.beta.kubernetes.io/aws-load-balancer-type": "external",
        "service.beta.kubernetes.io/aws-load-balancer-nlb-target-type": "ip",
        "service.beta.kubernetes.io/aws-load-balancer-listener-attributes.TCP-80": "tcp.idle_timeout.seconds=300",
    }
    assert [o["kind"] for o in route.objects] == ["Service"]


@pytest.mark.parametrize(
    ("budget", "seconds"), [(SHORT, 600), (LONG, 43_500), (OVER, 86_400)], ids=["5m", "12h", "168h"]
)
def test_gke_ingress_backend_config_is_attached_and_times_the_whole_response(
    budget: StreamBudget, seconds: int
) -> None:
    route = render_stream_route("gke-ingress", budget, TARGET)
    backend_config = _object(route.objects, "BackendConfig")
    assert backend_config["apiVersion"] == "cloud.google.com/v1"
    assert backend_config["spec"] == {"timeoutSec": seconds}
    assert json.loads(_service_annotations("gke-ingress", budget)["cloud.google.com/backend-config"]) == {
        "default": backend_config["metadata"]["name"]
    }


@pytest.mark.parametrize(
    ("budget", "seconds"), [(SHORT, 600), (LONG, 43_500), (OVER, 86_400)], ids=["5m", "12h", "168h"]
)
def test_gke_gateway_policy_targets_the_gateway_service(budget: StreamBudget, seconds: int) -> None:
    route = render_stream_route("gke-gateway", budget, TARGET)
    policy = _object(route.objects, "GCPBackendPolicy")
    assert policy["spec"] == {
        "default": {"timeoutSec": seconds},
        "targetRef": {"group": "", "kind": "Service", "name": "agentrun-stream-gateway"},
    }
    assert _object(route.objects, "HTTPRoute")["spec"]["rules"][0]["backendRefs"] == [
        {"name": "agentrun-stream-gateway", "port": 8080}
    ]


@pytest.mark.parametrize("budget", BUDGETS.values(), ids=BUDGETS.keys())
def test_traefik_servers_transport_is_referenced_from_the_service(budget: StreamBudget) -> None:
    route = render_stream_route("traefik", budget, TARGET)
    transport = _object(route.objects, "ServersTransport")
    assert transport["spec"] == {"forwardingTimeouts": {"responseHeaderTimeout": "0s", "idleConnTimeout": "90s"}}
    assert _service_annotations("traefik", budget) == {
        "traefik.ingress.kubernetes.io/service.serverstransport": "agentrun-system-agentrun-stream-gateway@kubernetescrd"
    }
    entrypoint = [h for h in route.hops if h.kind is TimerKind.CLUSTER_SETTING and "readTimeout" in h.setting]
    assert len(entrypoint) == 1
    assert entrypoint[0].status is HopStatus.CHECK
    assert any("text/event-stream" in note for note in route.notes)


@pytest.mark.parametrize("budget", BUDGETS.values(), ids=BUDGETS.keys())
def test_contour_disables_the_response_timeout_and_sets_the_idle_timeout(budget: StreamBudget) -> None:
    proxy = _object(render_stream_route("contour", budget, TARGET).objects, "HTTPProxy")
    assert proxy["spec"]["routes"][0]["timeoutPolicy"] == {"response": "infinity", "idle": "300s"}


@pytest.mark.parametrize(
    ("budget", "timeout"), [(SHORT, "600s"), (LONG, "43500s"), (OVER, "605100s")], ids=["5m", "12h", "168h"]
)
def test_istio_virtual_service_timeout_is_a_proto_duration_covering_the_budget(
    budget: StreamBudget, timeout: str
) -> None:
    service = _object(render_stream_route("istio", budget, TARGET).objects, "VirtualService")
    assert service["spec"]["http"][0]["timeout"] == timeout


@pytest.mark.parametrize(
    ("budget", "timeout"), [(SHORT, "10m"), (LONG, "12h5m"), (OVER, "168h5m")], ids=["5m", "12h", "168h"]
)
def test_gateway_api_route_timeouts_are_valid_durations_covering_the_budget(budget: StreamBudget, timeout: str) -> None:
    route = _object(render_stream_route("gateway-api", budget, TARGET).objects, "HTTPRoute")
    assert route["spec"]["rules"][0]["timeouts"] == {"request": timeout, "backendRequest": timeout}


# Which controllers' chains warn, per budget: only whole-response timers capped below the budget.
EXPECTED_WARNINGS = {
    "5m": set(),
    "12h": set(),
    "168h": {"gke-ingress", "gke-gateway", "azure-agic"},
}


@pytest.mark.parametrize("budget_name", BUDGETS)
@pytest.mark.parametrize("controller", CONTROLLERS)
def test_chain_warns_exactly_where_a_capped_timer_leaves_the_budget_uncovered(
    controller: str, budget_name: str
) -> None:
    route = render_stream_route(controller, BUDGETS[budget_name], TARGET)
    warned = [h for h in route.hops if h.status is HopStatus.WARN]
    if controller in EXPECTED_WARNINGS[budget_name]:
        assert [h.kind for h in warned] == [TimerKind.WHOLE_RESPONSE]
        assert warned[0].seconds_set == 86_400
        assert len(route.warnings) == 1
        assert "Last-Event-ID" in route.warnings[0]
    else:
        assert warned == []
        assert route.warnings == ()


@pytest.mark.parametrize("controller", CONTROLLERS)
def test_chain_runs_from_client_to_runner_with_a_keep_alive_above_the_proxy_pool(controller: str) -> None:
    hops = stream_chain(controller, LONG)
    assert hops[0].hop.startswith("client")
    assert hops[-1].hop.startswith("runner")
    assert any(h.hop.startswith("stream gateway") for h in hops)
    assert len(hops) >= 5
    keep_alive = next(h for h in hops if h.hop == "stream gateway (server)")
    assert keep_alive.kind is TimerKind.KEEP_ALIVE
    assert keep_alive.status is HopStatus.OK


@pytest.mark.parametrize(
    ("controller", "keep_alive"),
    [("ingress-nginx", 80), ("gke-ingress", 620), ("gke-gateway", 620), ("traefik", 110), ("aws-alb", 320)],
)
def test_gateway_keep_alive_outlasts_the_proxy_pooled_idle_time(controller: str, keep_alive: int) -> None:
    assert render_stream_route(controller, LONG, TARGET).gateway_timeouts.keep_alive_seconds == keep_alive


def test_sparse_heartbeats_warn_on_the_load_balancer_hop() -> None:
    budget = StreamBudget(3600, 300)  # 5 min heartbeats: past a 4 min L4 idle timeout
    route = render_stream_route("ingress-nginx", budget, TARGET)
    assert route.ingress_annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "1200"
    assert [h.hop for h in route.hops if h.status is HopStatus.WARN] == [
        "cloud load balancer (L4)",
        "stream gateway → client",
    ]


def test_budget_is_read_from_the_spec() -> None:
    spec = AgentRunSpec.model_validate(
        {
            "instructions": "x",
            "input": "y",
            "model": {"name": "m"},
            "maxExecutionTime": "2h",
            "maxIterations": 3,
            "streaming": {"heartbeatInterval": "10s"},
        }
    )
    budget = StreamBudget.from_spec(spec)
    assert (budget.max_execution_seconds, budget.heartbeat_interval_seconds) == (7200, 10)
    assert budget.whole_response_needed == 7500
    assert budget.idle_timeout_needed == 300
    assert budget.upstream_idle_timeout == 30


def test_chain_table_has_one_row_per_hop_with_status() -> None:
    hops = stream_chain("gke-ingress", OVER)
    lines = format_chain_table(hops).splitlines()
    assert lines[0].split() == ["HOP", "TIMER", "SETTING", "SET", "NEEDED", "STATUS", "NOTE"]
    assert len(lines) == len(hops) + 1
    warn_rows = [line for line in lines if "  WARN  " in line]
    assert len(warn_rows) == 1
    assert "BackendConfig spec.timeoutSec" in warn_rows[0]
    assert "86400" in warn_rows[0]


def test_ingress_nginx_values_are_bare_integer_seconds() -> None:
    for key in ("proxy-read-timeout", "proxy-send-timeout"):
        value = _ingress_annotations("ingress-nginx", StreamBudget(3600, 61.5))[f"nginx.ingress.kubernetes.io/{key}"]
        assert re.fullmatch(r"[0-9]+", value), value
        assert value == "300"


def _haproxy_ingress_seconds(value: str) -> float:
    """HAProxy Ingress time values: a bare number is milliseconds (docs: configuration keys)."""
    match = re.fullmatch(r"([0-9]+)(us|ms|s|m|h|d)?", value)
    assert match, value
    unit = match.group(2) or "ms"
    return int(match.group(1)) * {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400}[unit]


def test_haproxy_ingress_timeout_carries_a_unit_so_it_is_not_read_as_milliseconds() -> None:
    value = _ingress_annotations("haproxy-ingress", LONG)["haproxy-ingress.github.io/timeout-server"]
    assert _haproxy_ingress_seconds(value) == 300
    assert _haproxy_ingress_seconds(value.rstrip("s")) == 0.3  # what a unitless value would have meant


def test_gateway_api_duration_splits_values_seconds_alone_cannot_spell() -> None:
    pattern = re.compile(GATEWAY_API_DURATION_PATTERN)
    assert not pattern.match("604800s")  # six digits: rejected by the CRD
    assert pattern.match("86400s")  # five digits are allowed
    assert gateway_api_duration(604_800) == "168h"
    assert gateway_api_duration(605_100) == "168h5m"
    assert gateway_api_duration(0) == "0s"
    assert gateway_api_duration(0.25) == "250ms"
    assert gateway_api_duration(3661.5) == "1h1m1s500ms"


_GATEWAY_API_UNITS = {"h": 3_600_000, "m": 60_000, "s": 1000, "ms": 1}


@given(st.integers(min_value=0, max_value=99_999 * 3_600_000))
def test_gateway_api_duration_is_always_valid_and_exact(total_ms: int) -> None:
    text = gateway_api_duration(total_ms / 1000)
    assert is_valid_gateway_api_duration(text), text
    parsed = sum(int(n) * _GATEWAY_API_UNITS[u] for n, u in re.findall(r"([0-9]+)(ms|h|m|s)", text))
    assert abs(parsed - total_ms) <= 1  # float division may round up one millisecond, never down


def test_gateway_api_duration_refuses_what_cannot_be_spelled() -> None:
    with pytest.raises(ValueError, match="longest Gateway API duration"):
        gateway_api_duration(100_000 * 3600)


def test_contour_needs_a_host() -> None:
    with pytest.raises(ValueError, match="fqdn"):
        render_stream_route("contour", LONG, RouteTarget())


def test_per_run_exposure_is_refused_where_a_route_reloads_the_proxy() -> None:
    assert per_run_exposure_allowed("ingress-nginx")[0] is False
    assert "8977" in per_run_exposure_allowed("ingress-nginx")[1]
    assert per_run_exposure_allowed("contour")[0] is True
    assert per_run_exposure_allowed("gke-ingress")[0] is False


# --- the rendered objects against the real schemas ---------------------------------------------

BUILT_IN = {("v1", "Service"), ("networking.k8s.io/v1", "Ingress")}
PUBLISHED_CRD_SCHEMAS = {
    ("cloud.google.com/v1", "BackendConfig"),
    ("networking.gke.io/v1", "GCPBackendPolicy"),
    ("traefik.io/v1alpha1", "ServersTransport"),
    ("networking.istio.io/v1", "VirtualService"),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"),
}


def _all_objects() -> list[dict[str, Any]]:
    return [o for c in CONTROLLERS for b in BUDGETS.values() for o in render_stream_route(c, b, TARGET).objects]


def _validate_with_published_crd_schemas(objects: list[dict[str, Any]]) -> list[list[str] | None]:
    node = shutil.which("node")
    if node is None or not (CRD_VALIDATORS / "node_modules").is_dir():
        pytest.fail("the CRD schema validators are not installed: run `make crd-validators` (needs node and npm)")
    result = subprocess.run(
        [node, str(CRD_VALIDATORS / "validate.mjs")],
        input=json.dumps(objects),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=CRD_VALIDATORS,
    )
    results: list[list[str] | None] = json.loads(result.stdout)
    return results


def test_every_rendered_object_has_a_schema_it_is_checked_against() -> None:
    kinds = {(o["apiVersion"], o["kind"]) for o in _all_objects()}
    assert kinds <= BUILT_IN | PUBLISHED_CRD_SCHEMAS | {("projectcontour.io/v1", "HTTPProxy")}


def test_built_in_objects_pass_strict_kubernetes_validation() -> None:
    objects = [o for o in _all_objects() if (o["apiVersion"], o["kind"]) in BUILT_IN]
    assert {o["kind"] for o in objects} == {"Service", "Ingress"}
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_crd_objects_pass_their_published_schemas() -> None:
    objects = [o for o in _all_objects() if (o["apiVersion"], o["kind"]) in PUBLISHED_CRD_SCHEMAS]
    assert {o["kind"] for o in objects} == {k for _, k in PUBLISHED_CRD_SCHEMAS}
    results = _validate_with_published_crd_schemas(objects)
    failures = [(o["kind"], errors) for o, errors in zip(objects, results, strict=True) if errors is not None]
    assert failures == []


def test_published_schema_validator_rejects_what_the_crds_reject() -> None:
    """The validator is live: an over-long Gateway API duration and a string timeoutSec fail."""
    route = _object(render_stream_route("gateway-api", OVER, TARGET).objects, "HTTPRoute")
    route["spec"]["rules"][0]["timeouts"] = {"request": "605100s", "backendRequest": "605100s"}
    backend_config = _object(render_stream_route("gke-ingress", OVER, TARGET).objects, "BackendConfig")
    backend_config["spec"]["timeoutSec"] = "86400s"
    results = _validate_with_published_crd_schemas([route, backend_config])
    assert results[0] is not None
    assert "pattern" in results[0][0]
    assert results[1] is not None
    assert "integer" in results[1][0]


_GO_DURATION_OR_INFINITY = re.compile(r"^(infinity|([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+)$")


@pytest.mark.parametrize("budget", BUDGETS.values(), ids=BUDGETS.keys())
def test_contour_http_proxy_has_the_fields_contour_requires(budget: StreamBudget) -> None:
    """No published HTTPProxy schema ships in a registry package here: the required fields of
    projectcontour.io/v1 HTTPProxy (apis/projectcontour/v1/httpproxy.go) are checked by hand."""
    proxy = _object(render_stream_route("contour", budget, TARGET).objects, "HTTPProxy")
    assert proxy["apiVersion"] == "projectcontour.io/v1"
    assert proxy["metadata"]["name"]
    assert proxy["metadata"]["namespace"]
    assert proxy["spec"]["virtualhost"]["fqdn"] == "agents.example.com"
    assert proxy["spec"]["virtualhost"]["tls"] == {"secretName": "agents-tls"}
    for route in proxy["spec"]["routes"]:
        assert set(route) <= {"conditions", "services", "timeoutPolicy"}
        assert all(set(c) == {"prefix"} and c["prefix"].startswith("/") for c in route["conditions"])
        for service in route["services"]:
            assert set(service) == {"name", "port"}
            assert 1 <= service["port"] <= 65535
        for value in route["timeoutPolicy"].values():
            assert _GO_DURATION_OR_INFINITY.match(value), value
