"""Whether a controller may expose each run's stream on its own route (``spec.streaming.ingress``).

Off by default: one stable route to the stream gateway serves every run. A route per run is only
safe where adding a route neither reloads the proxy (which drops open streams) nor provisions
infrastructure or eats a capped rule budget.
"""

from typing import Final

from agentrun_api.spec import IngressController

PER_RUN_EXPOSURE: Final[dict[IngressController, tuple[bool, str]]] = {
    "ingress-nginx": (False, "every new Ingress reloads nginx; open streams die ~240 s later (ingress-nginx#8977)"),
    "nginx-inc": (False, "a new Ingress reloads NGINX"),
    "aws-alb": (False, "listener rules are capped (100 by default) and every Ingress change calls the AWS API"),
    "aws-nlb": (False, "a Service per run provisions a load balancer per run"),
    "gke-ingress": (False, "an Ingress per run provisions a Google load balancer per run, with a 30 s default timeout"),
    "gke-gateway": (True, "HTTPRoutes are added without a reload; they take a few minutes to propagate"),
    "traefik": (True, "routes are applied dynamically without a reload"),
    "haproxy-tech": (False, "a new backend makes HAProxy reload"),
    "haproxy-ingress": (False, "a new backend makes HAProxy reload"),
    "contour": (True, "Envoy receives routes over xDS without a restart"),
    "istio": (True, "Envoy receives routes over xDS without a restart"),
    "gateway-api": (True, "most implementations program routes without a reload; check yours"),
    "azure-agic": (False, "every change rewrites the Application Gateway's configuration through ARM"),
}


def per_run_exposure_allowed(controller: IngressController) -> tuple[bool, str]:
    """Whether ``spec.streaming.ingress`` may be honoured for this controller, and why."""
    return PER_RUN_EXPOSURE[controller]
