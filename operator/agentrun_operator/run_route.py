"""A run's own stream route (``spec.streaming.ingress``): built where a controller adds it without a reload.

Off by default: one stable route to the stream gateway serves every run. A run that opts in gets the
controller's route objects (an HTTPRoute, HTTPProxy, VirtualService, or a Traefik Ingress with its
ServersTransport) leading straight to its own ``<run>-stream`` Service, with the same timeouts the
shared route gets, sized for this run's budget. The objects are owned by the run, so the garbage
collector deletes them with it. Controllers that reload or provision per route are refused with a
message naming the field and the fix (``stream_timeouts.per_run_exposure_allowed`` says why).
"""

import dataclasses
from typing import Any, Final

from agentrun_api import contract
from agentrun_api.spec import AgentRunSpec, IngressController
from agentrun_common.stream_timeouts import (
    CONTROLLERS,
    RouteTarget,
    StreamBudget,
    per_run_exposure_allowed,
    render_stream_route,
)

# The runner's stream server serves the run's events at this path; the route forwards the whole host to it.
EVENTS_PATH: Final = "/events"


@dataclasses.dataclass(frozen=True)
class RunRoute:
    controller: IngressController
    host: str
    objects: tuple[dict[str, Any], ...]
    """The route objects, in creation order (the run's Service is built with the run's other children)."""
    service_annotations: dict[str, str]
    """What the controller needs on the run's stream Service (Traefik: its ServersTransport)."""

    @property
    def names(self) -> list[str]:
        return [f"{obj['kind']}/{obj['metadata']['name']}" for obj in self.objects]


def routable_controllers() -> list[IngressController]:
    return [controller for controller in CONTROLLERS if per_run_exposure_allowed(controller)[0]]


def refusal(spec: AgentRunSpec) -> str | None:
    """Why the run's own route cannot be built, naming the field and the fix; None when it can (or is not asked)."""
    ingress = spec.streaming.ingress
    if ingress is None or not spec.streaming.enabled:
        return None
    allowed, why = per_run_exposure_allowed(ingress.controller)
    if allowed:
        return None
    return (
        f"spec.streaming.ingress.controller: {ingress.controller} cannot give a run its own route ({why}); remove "
        "spec.streaming.ingress to read the stream through the shared stream gateway route, or name a controller "
        f"that adds routes without a reload: {', '.join(routable_controllers())}"
    )


def build_run_route(namespace: str, stream_service: str, labels: dict[str, str], spec: AgentRunSpec) -> RunRoute | None:
    """The run's route objects, named like its stream Service; None when the run does not ask for one, or asks
    a controller ``refusal`` refuses (the operator says so on the run)."""
    ingress = spec.streaming.ingress
    if ingress is None or not spec.streaming.enabled or refusal(spec) is not None:
        return None
    target = RouteTarget(
        namespace=namespace,
        service_name=stream_service,
        service_port=contract.STREAM_PORT,
        selector={},
        labels=labels,
        host=ingress.host,
        class_name=ingress.class_name,
        path_prefix="/",
        # The parent Gateway (gateway-api, gke-gateway, istio) is the one className names.
        gateway_name=ingress.class_name or RouteTarget.gateway_name,
    )
    rendered = render_stream_route(ingress.controller, StreamBudget.from_spec(spec), target)
    return RunRoute(
        controller=ingress.controller,
        host=ingress.host,
        objects=tuple(obj for obj in rendered.objects if obj["kind"] != "Service"),
        service_annotations=dict(rendered.service_annotations),
    )
