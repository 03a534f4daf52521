"""The stream gateway's one stable route, for every controller, as data the Helm chart renders.

``render_stream_route`` (agentrun_common.stream_timeouts) knows each ingress or gateway controller's timeout
settings; a Helm template cannot run it. So ``make chart-sync`` writes its output for the longest run the API
admits into ``helm/agentrun-operator/files/stream-routes.yaml``, with placeholders where the chart's values go
(the chart replaces them), and a test fails when the file and this module disagree.
"""

import sys
from typing import Any, Final

import yaml

from agentrun_api.spec import IngressController
from agentrun_common.stream_timeouts import CONTROLLERS, StreamBudget, render_stream_route
from agentrun_common.stream_timeouts.controllers import DEFAULT_INGRESS_CLASS, RouteTarget

# Placeholders the chart's template replaces with values (see templates/gateway.yaml).
NAMESPACE: Final = "@NAMESPACE@"
SERVICE: Final = "@SERVICE@"
HOST: Final = "@HOST@"
CLASS_NAME: Final = "@CLASS_NAME@"
TLS_SECRET_NAME: Final = "@TLS_SECRET@"  # noqa: S105 - a placeholder for a Secret's name
GATEWAY_NAME: Final = "@GATEWAY_NAME@"
GATEWAY_NAMESPACE: Final = "@GATEWAY_NAMESPACE@"
SERVICE_PORT: Final = 8080


# Served by the gateway besides the streams (/runs/): its runs API (docs/runs-api.md).
GATEWAY_EXTRA_PATH_PREFIXES = ("/v1/",)


def _target(*, tls: bool) -> RouteTarget:
    return RouteTarget(
        namespace=NAMESPACE,
        service_name=SERVICE,
        service_port=SERVICE_PORT,
        selector={},
        labels={},
        host=HOST,
        class_name=CLASS_NAME,
        tls_secret_name=TLS_SECRET_NAME if tls else None,
        gateway_name=GATEWAY_NAME,
        gateway_namespace=GATEWAY_NAMESPACE,
        extra_path_prefixes=GATEWAY_EXTRA_PATH_PREFIXES,
    )


def _variant(controller: IngressController, *, tls: bool) -> dict[str, Any]:
    route = render_stream_route(controller, StreamBudget.longest_allowed(), _target(tls=tls))
    (service,) = [obj for obj in route.objects if obj["kind"] == "Service"]
    return {
        "serviceType": service["spec"]["type"],
        "servicePort": service["spec"]["ports"][0]["port"],
        "serviceAnnotations": dict(route.service_annotations),
        "objects": [obj for obj in route.objects if obj["kind"] != "Service"],
    }


def chart_routes() -> dict[str, Any]:
    """Per controller: the default class name, and the route without and with TLS."""
    return {
        controller: {
            "defaultClassName": DEFAULT_INGRESS_CLASS.get(controller, ""),
            "plain": _variant(controller, tls=False),
            "tls": _variant(controller, tls=True),
        }
        for controller in CONTROLLERS
    }


def render_chart_routes() -> str:
    header = (
        "# Generated from operator/agentrun_operator/chart_routes.py by `make chart-sync`. Do not edit by hand.\n"
        "# The stream gateway's route for each controller, with timeouts for the longest run the API admits.\n"
    )
    return header + yaml.safe_dump(chart_routes(), sort_keys=True, width=120)


if __name__ == "__main__":
    sys.stdout.write(render_chart_routes())
