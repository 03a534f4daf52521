"""Timeout and streaming settings for each ingress or gateway controller, rendered from a run's budget.

Each controller gets one plan: the annotations and objects that set its timers, and the hops those
timers form between the client and the stream gateway. Keys, units and ranges are the controllers'
own (see docs/streaming.md for the table and its sources).
"""

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, get_args

from agentrun_api.spec import IngressController
from agentrun_common.durations import format_duration
from agentrun_common.stream_timeouts.budget import (
    GATEWAY_UPSTREAM_POOL_IDLE_SECONDS,
    IDLE_HEARTBEATS,
    ServerTimeouts,
    StreamBudget,
    gateway_server_timeouts,
    runner_server_timeouts,
)
from agentrun_common.stream_timeouts.chain import Hop, HopStatus, TimerKind
from agentrun_common.stream_timeouts.durations import (
    gateway_api_duration,
    integer_seconds,
    seconds_with_unit,
)

CONTROLLERS: Final[tuple[IngressController, ...]] = get_args(IngressController)

ALB_IDLE_RANGE: Final = (1, 4000)
NLB_IDLE_RANGE: Final = (60, 6000)
GOOGLE_TIMEOUT_MAX: Final = 86_400  # Google advises at most a day for backend service timeouts
AGIC_REQUEST_TIMEOUT_RANGE: Final = (1, 86_400)
# The shortest common default TCP idle timeout of a cloud L4 load balancer in front of an in-cluster
# proxy (Azure Load Balancer: 4 min; AWS NLB: 350 s; Google: 600 s). Heartbeats must fit inside it.
L4_LOAD_BALANCER_IDLE_SECONDS: Final = 240
# Pooled idle time of the proxy's connections to the stream gateway, per proxy family.
NGINX_UPSTREAM_KEEPALIVE_SECONDS: Final = 60  # ingress-nginx upstream-keepalive-timeout; nginx's own default
GOOGLE_LB_BACKEND_KEEPALIVE_SECONDS: Final = 600  # Google's load balancers reuse backend connections for 10 min
ENVOY_UPSTREAM_IDLE_SECONDS: Final = 3600  # Envoy's default idle timeout of upstream connections (1 h)
TRAEFIK_IDLE_CONN_SECONDS: Final = 90  # ServersTransport idleConnTimeout, which we set to Traefik's default
# Where the pooled idle time is not documented, the longest known one: a longer keep-alive is always safe.
UNKNOWN_POOL_IDLE_SECONDS: Final = ENVOY_UPSTREAM_IDLE_SECONDS

DEFAULT_INGRESS_CLASS: Final[dict[IngressController, str]] = {
    "ingress-nginx": "nginx",
    "nginx-inc": "nginx",
    "aws-alb": "alb",
    "gke-ingress": "gce",
    "traefik": "traefik",
    "haproxy-tech": "haproxy",
    "haproxy-ingress": "haproxy",
    "azure-agic": "azure-application-gateway",
}


@dataclass(frozen=True)
class RouteTarget:
    """Where the one stable route leads: the stream gateway's Service, serving every run's stream."""

    namespace: str = "agentrun-system"
    """Namespace of the stream gateway (and of the route objects)."""
    service_name: str = "agentrun-stream-gateway"
    """Name of the gateway's Service; also the name of every route object rendered for it."""
    service_port: int = 8080
    """The Service's port; its targetPort is the gateway container's port named "http"."""
    selector: dict[str, str] = field(default_factory=lambda: {"app.kubernetes.io/name": "agentrun-stream-gateway"})
    """Labels of the gateway pods."""
    labels: dict[str, str] = field(default_factory=dict)
    """Labels put on every rendered object."""
    host: str | None = None
    """Public host name of the route; None matches any host (not allowed by Contour, which needs an fqdn)."""
    class_name: str | None = None
    """IngressClass (Ingress controllers) or Contour ingress class; None for the controller's usual one."""
    path_prefix: str = "/runs/"
    """Path prefix routed to the gateway; every run's stream is under /runs/<namespace>/<name>/events."""
    extra_path_prefixes: tuple[str, ...] = ()
    """Further prefixes routed to the gateway alike (its runs API under /v1/)."""
    tls_secret_name: str | None = None
    """TLS Secret for the host (Ingress, HTTPProxy); None serves plain HTTP or leaves TLS to the Gateway."""
    gateway_name: str = "agentrun"
    """Parent Gateway of the HTTPRoute (gateway-api, gke-gateway) or Istio Gateway of the VirtualService."""
    gateway_namespace: str | None = None
    """Namespace of that Gateway; None for the route's own namespace."""
    load_balancer_port: int = 80
    """aws-nlb: the listener port of the load balancer (the Service's port)."""


@dataclass(frozen=True)
class RenderedRoute:
    """Everything one controller needs for the stream route, and the chain of timers it makes."""

    controller: IngressController
    ingress_annotations: dict[str, str]
    """Annotations of the Ingress (empty when the controller routes with its own objects)."""
    service_annotations: dict[str, str]
    """Annotations of the stream gateway's Service."""
    objects: tuple[dict[str, Any], ...]
    """Every object ready to apply: the Service, then the Ingress or the controller's route objects."""
    hops: tuple[Hop, ...]
    """The chain client → load balancer → ingress/gateway → stream gateway → runner."""
    warnings: tuple[str, ...]
    """Why the run's budget is not covered end to end (the client then resumes with Last-Event-ID)."""
    notes: tuple[str, ...]
    """What an operator of this controller must know beyond the rendered objects."""
    gateway_timeouts: ServerTimeouts
    """The stream gateway's own server timeouts behind this controller."""


@dataclass
class _Plan:
    """What one controller contributes; the common hops and objects are added around it."""

    hops: list[Hop]
    pooled_idle_seconds: int
    ingress_annotations: dict[str, str] | None = None  # None: no Ingress object
    service_annotations: dict[str, str] = field(default_factory=dict)
    service_type: str = "ClusterIP"
    extra_objects: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _needed_at_least(seconds: float) -> str:
    return f">= {_seconds(seconds)}"


def _idle_hop(hop: str, setting: str, rendered: str, seconds_set: float, budget: StreamBudget, note: str = "") -> Hop:
    needed = budget.idle_timeout_needed
    ok = seconds_set >= needed
    if not ok:
        note = (note + "; " if note else "") + "capped by the platform; heartbeats still keep it alive"
        # An idle timer below our floor still works while it stays above the heartbeat interval.
        ok = seconds_set >= IDLE_HEARTBEATS * budget.heartbeat_interval_seconds
    return Hop(
        hop, TimerKind.IDLE, setting, rendered, _needed_at_least(needed), HopStatus.OK if ok else HopStatus.WARN, note
    )


def _whole_hop(
    hop: str, setting: str, rendered: str, seconds_set: float | None, budget: StreamBudget, note: str = ""
) -> Hop:
    """seconds_set None means the timer is disabled."""
    needed = budget.whole_response_needed
    if seconds_set is None or seconds_set >= needed:
        return Hop(
            hop, TimerKind.WHOLE_RESPONSE, setting, rendered, _needed_at_least(needed), HopStatus.OK, note, seconds_set
        )
    cut = f"capped at {_seconds(seconds_set)}: a stream is cut after {format_duration(seconds_set)}, the client resumes with Last-Event-ID"
    return Hop(
        hop,
        TimerKind.WHOLE_RESPONSE,
        setting,
        rendered,
        _needed_at_least(needed),
        HopStatus.WARN,
        f"{note}; {cut}" if note else cut,
        seconds_set,
    )


def _l4_load_balancer_hop(budget: StreamBudget) -> Hop:
    fits = IDLE_HEARTBEATS * budget.heartbeat_interval_seconds <= L4_LOAD_BALANCER_IDLE_SECONDS
    return Hop(
        "cloud load balancer (L4)",
        TimerKind.IDLE,
        "TCP idle timeout (platform default, not generated)",
        f"{_seconds(L4_LOAD_BALANCER_IDLE_SECONDS)} or more",
        f">= {_seconds(IDLE_HEARTBEATS * budget.heartbeat_interval_seconds)}",
        HopStatus.OK if fits else HopStatus.WARN,
        "Azure LB 4 min, AWS NLB 350 s, Google 600 s" if fits else "heartbeats too sparse: shorten heartbeatInterval",
        L4_LOAD_BALANCER_IDLE_SECONDS,
    )


def _cluster_hop(hop: str, setting: str, default: str, needed: str, note: str) -> Hop:
    return Hop(hop, TimerKind.CLUSTER_SETTING, setting, default, needed, HopStatus.CHECK, note)


def _clamp(seconds: int, bounds: tuple[int, int]) -> int:
    low, high = bounds
    return max(low, min(seconds, high))


def _ingress_nginx(budget: StreamBudget, target: RouteTarget) -> _Plan:
    idle = budget.idle_timeout_needed
    prefix = "nginx.ingress.kubernetes.io/"
    return _Plan(
        hops=[
            _l4_load_balancer_hop(budget),
            _idle_hop("ingress-nginx", prefix + "proxy-read-timeout", integer_seconds(idle), idle, budget),
            _idle_hop("ingress-nginx", prefix + "proxy-send-timeout", integer_seconds(idle), idle, budget),
            _cluster_hop(
                "ingress-nginx",
                "ConfigMap worker-shutdown-timeout",
                "240s (default)",
                "no reloads while streams are open",
                "any Ingress change reloads nginx; open streams close this long after, the client resumes (ingress-nginx#8977)",
            ),
        ],
        pooled_idle_seconds=NGINX_UPSTREAM_KEEPALIVE_SECONDS,
        ingress_annotations={
            prefix + "proxy-read-timeout": integer_seconds(idle),
            prefix + "proxy-send-timeout": integer_seconds(idle),
            prefix + "proxy-buffering": "off",
        },
        notes=[
            "Integer seconds only: a value such as '300s' fails to parse and ingress-nginx silently uses its 60 s default.",
            "ingress-nginx is retired upstream; prefer a Gateway API implementation for new clusters.",
        ],
    )


def _nginx_inc(budget: StreamBudget, target: RouteTarget) -> _Plan:
    idle = budget.idle_timeout_needed
    return _Plan(
        hops=[
            _l4_load_balancer_hop(budget),
            _idle_hop("F5 NGINX IC", "nginx.org/proxy-read-timeout", seconds_with_unit(idle), idle, budget),
            _idle_hop("F5 NGINX IC", "nginx.org/proxy-send-timeout", seconds_with_unit(idle), idle, budget),
        ],
        pooled_idle_seconds=NGINX_UPSTREAM_KEEPALIVE_SECONDS,
        ingress_annotations={
            "nginx.org/proxy-read-timeout": seconds_with_unit(idle),
            "nginx.org/proxy-send-timeout": seconds_with_unit(idle),
            "nginx.org/proxy-buffering": "False",
        },
    )


def _aws_alb(budget: StreamBudget, target: RouteTarget) -> _Plan:
    idle = _clamp(budget.idle_timeout_needed, ALB_IDLE_RANGE)
    return _Plan(
        hops=[
            _idle_hop(
                "AWS ALB",
                "load-balancer-attributes idle_timeout.timeout_seconds",
                str(idle),
                idle,
                budget,
                note="one value per IngressGroup",
            )
        ],
        # AWS: a target's keep-alive must be longer than the load balancer's idle timeout.
        pooled_idle_seconds=idle,
        ingress_annotations={
            "alb.ingress.kubernetes.io/load-balancer-attributes": f"idle_timeout.timeout_seconds={idle}"
        },
        notes=[
            "load-balancer-attributes is exclusive per IngressGroup: every Ingress of the group must carry the same "
            "value, or the group fails to reconcile (aws-load-balancer-controller#1839).",
            "An ALB caps rules per listener (100 by default): keep one route for all runs.",
        ],
    )


def _aws_nlb(budget: StreamBudget, target: RouteTarget) -> _Plan:
    idle = _clamp(budget.idle_timeout_needed, NLB_IDLE_RANGE)
    listener = f"TCP-{target.load_balancer_port}"
    return _Plan(
        hops=[
            _idle_hop(
                "AWS NLB",
                f"listener-attributes.{listener} tcp.idle_timeout.seconds",
                str(idle),
                idle,
                budget,
                note="needs AWS Load Balancer Controller >= 2.9",
            )
        ],
        pooled_idle_seconds=idle,  # TCP pass-through: the server must not close before the NLB does
        service_type="LoadBalancer",
        service_annotations={
            "service.beta.kubernetes.io/aws-load-balancer-type": "external",
            "service.beta.kubernetes.io/aws-load-balancer-nlb-target-type": "ip",
            f"service.beta.kubernetes.io/aws-load-balancer-listener-attributes.{listener}": f"tcp.idle_timeout.seconds={idle}",
        },
        notes=[
            "TCP pass-through: terminate TLS at the gateway, or use a TLS listener (the attribute key then names it)."
        ],
    )


def _backend_config(target: RouteTarget, timeout_sec: int) -> dict[str, Any]:
    return {
        "apiVersion": "cloud.google.com/v1",
        "kind": "BackendConfig",
        "metadata": _metadata(target),
        "spec": {"timeoutSec": timeout_sec},
    }


def _gke_ingress(budget: StreamBudget, target: RouteTarget) -> _Plan:
    timeout = min(budget.whole_response_needed, GOOGLE_TIMEOUT_MAX)
    return _Plan(
        hops=[
            _whole_hop(
                "Google external Application LB",
                "BackendConfig spec.timeoutSec",
                str(timeout),
                timeout,
                budget,
                note="default 30 s (ingress-gce#518)",
            )
        ],
        pooled_idle_seconds=GOOGLE_LB_BACKEND_KEEPALIVE_SECONDS,
        ingress_annotations={"kubernetes.io/ingress.class": target.class_name or DEFAULT_INGRESS_CLASS["gke-ingress"]},
        service_annotations={
            "cloud.google.com/backend-config": json.dumps({"default": target.service_name}),
            "cloud.google.com/neg": json.dumps({"ingress": True}),
        },
        extra_objects=[_backend_config(target, timeout)],
        notes=["nginx annotations are ignored by the gce class; the backend timeout is a whole-response timeout."],
    )


def _parent_ref(target: RouteTarget) -> dict[str, str]:
    ref = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": target.gateway_name}
    if target.gateway_namespace:
        ref["namespace"] = target.gateway_namespace
    return ref


def _prefixes(target: RouteTarget) -> tuple[str, ...]:
    return (target.path_prefix, *target.extra_path_prefixes)


def _http_route(target: RouteTarget, timeouts: dict[str, str] | None) -> dict[str, Any]:
    rule: dict[str, Any] = {
        "matches": [
            {"path": {"type": "PathPrefix", "value": prefix.rstrip("/") or "/"}} for prefix in _prefixes(target)
        ],
        "backendRefs": [{"name": target.service_name, "port": target.service_port}],
    }
    if timeouts:
        rule["timeouts"] = timeouts
    spec: dict[str, Any] = {"parentRefs": [_parent_ref(target)], "rules": [rule]}
    if target.host:
        spec["hostnames"] = [target.host]
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": _metadata(target),
        "spec": spec,
    }


def _gke_gateway(budget: StreamBudget, target: RouteTarget) -> _Plan:
    timeout = min(budget.whole_response_needed, GOOGLE_TIMEOUT_MAX)
    policy = {
        "apiVersion": "networking.gke.io/v1",
        "kind": "GCPBackendPolicy",
        "metadata": _metadata(target),
        "spec": {
            "default": {"timeoutSec": timeout},
            "targetRef": {"group": "", "kind": "Service", "name": target.service_name},
        },
    }
    return _Plan(
        hops=[
            _whole_hop(
                "GKE Gateway (Google LB)",
                "GCPBackendPolicy spec.default.timeoutSec",
                str(timeout),
                timeout,
                budget,
                note="default 30 s",
            )
        ],
        pooled_idle_seconds=GOOGLE_LB_BACKEND_KEEPALIVE_SECONDS,
        extra_objects=[_http_route(target, None), policy],
    )


def _traefik(budget: StreamBudget, target: RouteTarget) -> _Plan:
    transport = {
        "apiVersion": "traefik.io/v1alpha1",
        "kind": "ServersTransport",
        "metadata": _metadata(target),
        "spec": {
            "forwardingTimeouts": {
                "responseHeaderTimeout": "0s",  # no limit on the wait for headers (Traefik's default, made explicit)
                "idleConnTimeout": seconds_with_unit(TRAEFIK_IDLE_CONN_SECONDS),
            }
        },
    }
    needed = budget.whole_response_needed
    return _Plan(
        hops=[
            _l4_load_balancer_hop(budget),
            _cluster_hop(
                "Traefik entrypoint",
                "entryPoints.<name>.transport.respondingTimeouts.readTimeout (static config)",
                "60s (default since v2.11.2 / v3.0)",
                f"0s (off) or >= {_seconds(needed)}",
                "cannot be set per route; the 60 s default cut long requests (traefik#10654)",
            ),
            _cluster_hop(
                "Traefik middlewares",
                "compress middleware",
                "not used by this route",
                "excludedContentTypes includes text/event-stream",
                "compress buffered SSE in v3.3 (traefik#11509)",
            ),
        ],
        pooled_idle_seconds=TRAEFIK_IDLE_CONN_SECONDS,
        ingress_annotations={},
        service_annotations={
            "traefik.ingress.kubernetes.io/service.serverstransport": f"{target.namespace}-{target.service_name}@kubernetescrd"
        },
        extra_objects=[transport],
        notes=[
            "Traefik has no per-Ingress timeout annotation: the ServersTransport is referenced from the gateway's Service.",
            "Set the entrypoint readTimeout in Traefik's static configuration; it is a cluster setting this tool cannot render.",
            "A compress middleware on this route must exclude text/event-stream.",
        ],
    )


def _haproxy_client_hop(hop: str, budget: StreamBudget) -> Hop:
    return _cluster_hop(
        hop,
        "ConfigMap timeout-client",
        "50s (default)",
        f">= {_seconds(IDLE_HEARTBEATS * budget.heartbeat_interval_seconds)}",
        "client-side idle timer, global only; heartbeats reset it",
    )


def _haproxy_tech(budget: StreamBudget, target: RouteTarget) -> _Plan:
    idle = budget.idle_timeout_needed
    return _Plan(
        hops=[
            _l4_load_balancer_hop(budget),
            _idle_hop("HAProxy Tech IC", "haproxy.org/timeout-server", seconds_with_unit(idle), idle, budget),
            _haproxy_client_hop("HAProxy Tech IC", budget),
        ],
        pooled_idle_seconds=idle,
        ingress_annotations={"haproxy.org/timeout-server": seconds_with_unit(idle)},
    )


def _haproxy_ingress(budget: StreamBudget, target: RouteTarget) -> _Plan:
    idle = budget.idle_timeout_needed
    return _Plan(
        hops=[
            _l4_load_balancer_hop(budget),
            _idle_hop(
                "HAProxy Ingress",
                "haproxy-ingress.github.io/timeout-server",
                seconds_with_unit(idle),
                idle,
                budget,
                note="a bare number would mean milliseconds",
            ),
            _haproxy_client_hop("HAProxy Ingress", budget),
        ],
        pooled_idle_seconds=idle,
        ingress_annotations={"haproxy-ingress.github.io/timeout-server": seconds_with_unit(idle)},
    )


def _contour(budget: StreamBudget, target: RouteTarget) -> _Plan:
    idle = budget.idle_timeout_needed
    if not target.host:
        raise ValueError("contour: a root HTTPProxy needs spec.virtualhost.fqdn; set the route's host")
    virtualhost: dict[str, Any] = {"fqdn": target.host}
    if target.tls_secret_name:
        virtualhost["tls"] = {"secretName": target.tls_secret_name}
    spec: dict[str, Any] = {
        "virtualhost": virtualhost,
        "routes": [  # one route per prefix: a route's conditions must all hold
            {
                "conditions": [{"prefix": prefix}],
                "services": [{"name": target.service_name, "port": target.service_port}],
                "timeoutPolicy": {"response": "infinity", "idle": seconds_with_unit(idle)},
            }
            for prefix in _prefixes(target)
        ],
    }
    if target.class_name:
        spec["ingressClassName"] = target.class_name
    proxy = {"apiVersion": "projectcontour.io/v1", "kind": "HTTPProxy", "metadata": _metadata(target), "spec": spec}
    return _Plan(
        hops=[
            _l4_load_balancer_hop(budget),
            _whole_hop("Contour (Envoy route)", "HTTPProxy timeoutPolicy.response", "infinity", None, budget),
            _idle_hop("Contour (Envoy route)", "HTTPProxy timeoutPolicy.idle", seconds_with_unit(idle), idle, budget),
        ],
        pooled_idle_seconds=ENVOY_UPSTREAM_IDLE_SECONDS,
        extra_objects=[proxy],
        notes=['"0s" would mean unset (Envoy\'s 15 s applies): the response timeout is "infinity".'],
    )


def _istio(budget: StreamBudget, target: RouteTarget) -> _Plan:
    timeout = seconds_with_unit(budget.whole_response_needed)
    gateway = f"{target.gateway_namespace}/{target.gateway_name}" if target.gateway_namespace else target.gateway_name
    service = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": _metadata(target),
        "spec": {
            "hosts": [target.host or "*"],
            "gateways": [gateway],
            "http": [
                {
                    "match": [{"uri": {"prefix": prefix}} for prefix in _prefixes(target)],
                    "route": [
                        {
                            "destination": {
                                "host": f"{target.service_name}.{target.namespace}.svc.cluster.local",
                                "port": {"number": target.service_port},
                            }
                        }
                    ],
                    "timeout": timeout,
                }
            ],
        },
    }
    return _Plan(
        hops=[
            _l4_load_balancer_hop(budget),
            _whole_hop(
                "Istio ingress gateway (Envoy)",
                "VirtualService http[].timeout",
                timeout,
                budget.whole_response_needed,
                budget,
                note="stream idle timeout is off on Istio's HTTP listeners",
            ),
        ],
        pooled_idle_seconds=ENVOY_UPSTREAM_IDLE_SECONDS,
        extra_objects=[service],
    )


def _gateway_api(budget: StreamBudget, target: RouteTarget) -> _Plan:
    timeout = gateway_api_duration(budget.whole_response_needed)
    return _Plan(
        hops=[
            _l4_load_balancer_hop(budget),
            _whole_hop(
                "Gateway API implementation",
                "HTTPRoute timeouts.request / backendRequest",
                timeout,
                budget.whole_response_needed,
                budget,
                note="Extended support: check the implementation honours it",
            ),
        ],
        pooled_idle_seconds=UNKNOWN_POOL_IDLE_SECONDS,
        extra_objects=[_http_route(target, {"request": timeout, "backendRequest": timeout})],
    )


def _azure_agic(budget: StreamBudget, target: RouteTarget) -> _Plan:
    timeout = _clamp(budget.whole_response_needed, AGIC_REQUEST_TIMEOUT_RANGE)
    return _Plan(
        hops=[
            _whole_hop(
                "Azure Application Gateway",
                "appgw.ingress.kubernetes.io/request-timeout",
                integer_seconds(timeout),
                timeout,
                budget,
                note="default 30 s",
            ),
            _cluster_hop(
                "Azure Application Gateway",
                "response buffering (gateway-wide)",
                "on (default)",
                "off",
                "no annotation: disable response buffering on the Application Gateway itself",
            ),
        ],
        pooled_idle_seconds=UNKNOWN_POOL_IDLE_SECONDS,
        ingress_annotations={"appgw.ingress.kubernetes.io/request-timeout": integer_seconds(timeout)},
    )


_PLANS: Final[dict[IngressController, Callable[[StreamBudget, RouteTarget], _Plan]]] = {
    "ingress-nginx": _ingress_nginx,
    "nginx-inc": _nginx_inc,
    "aws-alb": _aws_alb,
    "aws-nlb": _aws_nlb,
    "gke-ingress": _gke_ingress,
    "gke-gateway": _gke_gateway,
    "traefik": _traefik,
    "haproxy-tech": _haproxy_tech,
    "haproxy-ingress": _haproxy_ingress,
    "contour": _contour,
    "istio": _istio,
    "gateway-api": _gateway_api,
    "azure-agic": _azure_agic,
}


def _metadata(target: RouteTarget) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": target.service_name, "namespace": target.namespace}
    if target.labels:
        meta["labels"] = dict(target.labels)
    return meta


def _service(target: RouteTarget, plan: _Plan) -> dict[str, Any]:
    port = target.load_balancer_port if plan.service_type == "LoadBalancer" else target.service_port
    metadata = _metadata(target)
    if plan.service_annotations:
        metadata["annotations"] = dict(plan.service_annotations)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {
            "type": plan.service_type,
            "selector": dict(target.selector),
            "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def _ingress(controller: IngressController, target: RouteTarget, annotations: dict[str, str]) -> dict[str, Any]:
    metadata = _metadata(target)
    if annotations:
        metadata["annotations"] = dict(annotations)
    paths = [
        {
            "path": prefix,
            "pathType": "Prefix",
            "backend": {"service": {"name": target.service_name, "port": {"number": target.service_port}}},
        }
        for prefix in _prefixes(target)
    ]
    rule: dict[str, Any] = {"http": {"paths": paths}}
    if target.host:
        rule["host"] = target.host
    spec: dict[str, Any] = {"rules": [rule]}
    if "kubernetes.io/ingress.class" not in annotations:  # GKE selects its class by annotation
        spec["ingressClassName"] = target.class_name or DEFAULT_INGRESS_CLASS[controller]
    if target.tls_secret_name and target.host:
        spec["tls"] = [{"hosts": [target.host], "secretName": target.tls_secret_name}]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": metadata, "spec": spec}


def _common_hops(budget: StreamBudget, plan: _Plan, gateway: ServerTimeouts, runner: ServerTimeouts) -> list[Hop]:
    heartbeat = budget.heartbeat_interval_seconds
    upstream_idle = gateway.upstream_idle_seconds or 0
    idle_timers = [h.seconds_set for h in plan.hops if h.kind is TimerKind.IDLE and h.seconds_set is not None]
    shortest_idle = min(idle_timers, default=budget.idle_timeout_needed)
    client = Hop(
        "client (SSE reader)",
        TimerKind.IDLE,
        "the client's read timeout",
        "the client's own",
        f">= {_seconds(IDLE_HEARTBEATS * heartbeat)}",
        HopStatus.CHECK,
        "reconnect on any cut with Last-Event-ID (browsers' EventSource does)",
    )
    return [
        client,
        *plan.hops,
        Hop(
            "stream gateway (server)",
            TimerKind.KEEP_ALIVE,
            "AGENTRUN_GATEWAY_KEEP_ALIVE_SECONDS",
            _seconds(gateway.keep_alive_seconds),
            f"> {_seconds(plan.pooled_idle_seconds)} (proxy's pooled idle)",
            HopStatus.OK if gateway.keep_alive_seconds > plan.pooled_idle_seconds else HopStatus.WARN,
            seconds_set=gateway.keep_alive_seconds,
        ),
        Hop(
            "stream gateway → client",
            TimerKind.IDLE,
            "heartbeat interval (spec.streaming.heartbeatInterval)",
            _seconds(heartbeat),
            f"<= {_seconds(shortest_idle / IDLE_HEARTBEATS)} (shortest idle timer / {IDLE_HEARTBEATS})",
            HopStatus.OK if heartbeat * IDLE_HEARTBEATS <= shortest_idle else HopStatus.WARN,
            "the gateway heartbeats the client while it re-attaches to a restarted runner",
            heartbeat,
        ),
        Hop(
            "stream gateway → runner",
            TimerKind.IDLE,
            "AGENTRUN_GATEWAY_UPSTREAM_IDLE_SECONDS",
            _seconds(upstream_idle),
            f"> {_seconds(heartbeat)}",
            HopStatus.OK if upstream_idle > heartbeat else HopStatus.WARN,
            "a silent runner is re-attached with Last-Event-ID",
            upstream_idle,
        ),
        Hop(
            "runner (server)",
            TimerKind.KEEP_ALIVE,
            "runner stream server keep-alive",
            _seconds(runner.keep_alive_seconds),
            f"> {_seconds(GATEWAY_UPSTREAM_POOL_IDLE_SECONDS)} (gateway's pooled idle)",
            HopStatus.OK if runner.keep_alive_seconds > GATEWAY_UPSTREAM_POOL_IDLE_SECONDS else HopStatus.WARN,
            seconds_set=runner.keep_alive_seconds,
        ),
    ]


def render_stream_route(
    controller: IngressController, budget: StreamBudget, target: RouteTarget | None = None
) -> RenderedRoute:
    """The settings, objects and chain of timers of the stream route for ``controller`` and ``budget``."""
    if controller not in _PLANS:
        raise ValueError(f"unknown ingress controller {controller!r}; use one of: {', '.join(CONTROLLERS)}")
    target = target or RouteTarget(host="agents.example.com")
    plan = _PLANS[controller](budget, target)
    gateway = gateway_server_timeouts(budget, plan.pooled_idle_seconds)
    hops = _common_hops(budget, plan, gateway, runner_server_timeouts(budget))
    objects = [_service(target, plan)]
    if plan.ingress_annotations is not None:
        objects.append(_ingress(controller, target, plan.ingress_annotations))
    objects.extend(plan.extra_objects)
    warnings = tuple(f"{hop.hop}: {hop.setting}: {hop.note}" for hop in hops if hop.status is HopStatus.WARN)
    return RenderedRoute(
        controller=controller,
        ingress_annotations=dict(plan.ingress_annotations or {}),
        service_annotations=dict(plan.service_annotations),
        objects=tuple(objects),
        hops=tuple(hops),
        warnings=warnings,
        notes=tuple(plan.notes),
        gateway_timeouts=gateway,
    )


def stream_chain(controller: IngressController, budget: StreamBudget) -> list[Hop]:
    """The hops from client to runner with each timer's value, what the budget needs, and OK/WARN/CHECK."""
    return list(render_stream_route(controller, budget).hops)
