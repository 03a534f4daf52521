"""The stream gateway's settings, read from environment variables (one documented field each) by the shared loader."""

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, get_args

from agentrun_api.contract import STREAM_PORT
from agentrun_api.spec import IngressController
from agentrun_common.settings import Count, Env, Port, Seconds, SettingsError, load_settings
from agentrun_common.sse import DEFAULT_MAX_EVENT_BYTES
from agentrun_common.stream_timeouts import StreamBudget, render_stream_route
from agentrun_common.stream_timeouts.budget import GATEWAY_UPSTREAM_POOL_IDLE_SECONDS, UPSTREAM_IDLE_HEARTBEATS
from agentrun_gateway.runs_settings import RunsApiSettings

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
IN_CLUSTER_CA_FILE = f"{SERVICE_ACCOUNT_DIR}/ca.crt"
ENV_PREFIX = "AGENTRUN_GATEWAY_"
KUBE_CA_FILE_ENV = f"{ENV_PREFIX}KUBE_CA_FILE"


def keep_alive_behind(controller: IngressController) -> float:
    """The keep-alive Part A's arithmetic gives for the proxy in front of the gateway."""
    return float(render_stream_route(controller, StreamBudget.longest_allowed()).gateway_timeouts.keep_alive_seconds)


def _in_cluster_api_url() -> str:
    host = os.environ.get("KUBERNETES_SERVICE_HOST", "kubernetes.default.svc")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    host = f"[{host}]" if ":" in host else host
    return f"https://{host}:{port}"


@dataclass(frozen=True)
class GatewaySettings:
    """Each field is read from ``AGENTRUN_GATEWAY_<FIELD NAME IN UPPER CASE>`` when set and not blank; seconds
    as a number or a duration such as "90s"."""

    host: Annotated[str, Env(fallbacks=("POD_IP",))] = "0.0.0.0"  # noqa: S104 - a pod serves on all its interfaces
    """Address to listen on; unset: POD_IP (the chart sets it from status.podIP, where the Service's endpoints
    and the probes point), else all interfaces."""
    port: Port = 8080
    """Port to listen on (the chart's Service targets it as port "http")."""
    upstream_url: str = "http://{name}-stream.{namespace}.svc:" + str(STREAM_PORT) + "/events"
    """Runner stream URL pattern; ``{namespace}`` and ``{name}`` are filled in. Tests point it at 127.0.0.1."""
    controller: IngressController = "ingress-nginx"
    """The ingress or gateway controller in front of the gateway; sets the default keep-alive."""
    keep_alive_seconds: Seconds = 0.0
    """Idle seconds before an idle keep-alive client connection is closed; 0 derives it from ``controller``
    (the proxy's pooled idle time plus a margin, so the proxy always closes first: no 502 race)."""
    upstream_idle_seconds: Seconds = 0.0
    """Seconds without a byte from the runner before re-attaching; 0 means 3 heartbeat intervals of the run."""
    upstream_pool_idle_seconds: Seconds = float(GATEWAY_UPSTREAM_POOL_IDLE_SECONDS)
    """Seconds an idle connection to a runner stays pooled; the runner's keep-alive is set above it."""
    upstream_connect_timeout_seconds: Seconds = 5.0
    """Timeout of connecting to a runner and receiving its response headers."""
    upstream_max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
    """Largest line or event (its field lines together) read from a runner, in bytes (4 MiB). A runner
    that sends more has its connection dropped (a warning is logged and counted) and is re-attached to,
    so no runner can make the gateway buffer without end."""
    reattach_initial_delay_seconds: Seconds = 0.2
    """First wait before re-attaching to a runner that went away; doubles up to the maximum."""
    reattach_max_delay_seconds: Seconds = 5.0
    """Longest wait between re-attach attempts (a pod replacement takes seconds to minutes)."""
    auth_cache_seconds: Seconds = 10.0
    """How long a stream token or an RBAC decision is reused before the API server is asked again."""
    run_cache_seconds: Seconds = 2.0
    """How long an AgentRun's phase and heartbeat interval are reused (bounds API load under many readers)."""
    ended_drain_seconds: Seconds = 2.0
    """After the run ended: how long to wait for the runner's replay before concluding it has no more events."""
    feed_memory_events: Count = 4096
    """Events of a running run kept in memory for the readers sharing its upstream connection; a reader
    resuming from an older position gets a connection of its own."""
    default_heartbeat_seconds: Seconds = 15.0
    """Heartbeat interval for a run whose spec does not say (the API's default)."""
    watch_session_seconds: Seconds = 3600.0
    """How long a watch page sign-in (its cookie) lasts. A reader whose token is revoked or whose RBAC is
    withdrawn keeps reading through the page until then; replacing the run's stream token ends every sign-in."""
    shutdown_timeout_seconds: Seconds = 2.0
    """On SIGTERM, how long open streams get before they are cut (clients resume on another replica)."""
    kube_api_url: str = ""
    """Kubernetes API server URL; empty means in-cluster (KUBERNETES_SERVICE_HOST/PORT)."""
    kube_token_file: str = f"{SERVICE_ACCOUNT_DIR}/token"
    """The gateway's own service account token (read at every request: projected tokens rotate)."""
    kube_ca_file: str = ""
    """CA bundle (PEM) that verifies the API server's certificate; empty means the in-cluster CA
    (``/var/run/secrets/kubernetes.io/serviceaccount/ca.crt``) when the pod has it, else the system trust
    store. Verification is never turned off."""
    runs_api: Annotated[RunsApiSettings, Env(prefix=f"{ENV_PREFIX}RUNS_API_")] = field(default_factory=RunsApiSettings)
    """The HTTP runs API's limits and API keys (``AGENTRUN_GATEWAY_RUNS_API_*``)."""

    def __post_init__(self) -> None:
        if self.controller not in get_args(IngressController):
            raise SettingsError(
                f"{ENV_PREFIX}CONTROLLER={self.controller!r} is not a known controller; use one of "
                + ", ".join(get_args(IngressController))
            )
        if self.upstream_max_event_bytes <= 0:
            raise SettingsError(f"{ENV_PREFIX}UPSTREAM_MAX_EVENT_BYTES must be a positive number of bytes")
        if "{namespace}" not in self.upstream_url or "{name}" not in self.upstream_url:
            raise SettingsError(f"{ENV_PREFIX}UPSTREAM_URL must contain {{namespace}} and {{name}}")
        if self.keep_alive_seconds <= 0:
            object.__setattr__(self, "keep_alive_seconds", keep_alive_behind(self.controller))
        if not self.kube_api_url:
            object.__setattr__(self, "kube_api_url", _in_cluster_api_url())

    def kube_tls_context(self) -> ssl.SSLContext | None:
        """How the API server's certificate is verified; None for a plain-HTTP API URL (nothing to verify)."""
        if not self.kube_api_url.startswith("https://"):
            return None
        ca_file = self.kube_ca_file or (IN_CLUSTER_CA_FILE if Path(IN_CLUSTER_CA_FILE).is_file() else None)
        try:
            return ssl.create_default_context(cafile=ca_file)
        except (OSError, ssl.SSLError) as error:
            raise SettingsError(
                f"{KUBE_CA_FILE_ENV}={self.kube_ca_file!r}: cannot load the API server's CA bundle {ca_file} "
                f"({error.strerror or error}); set it to a readable PEM file, or leave it empty for the in-cluster "
                "CA or the system trust store"
            ) from None

    def upstream_idle_for(self, heartbeat_seconds: float) -> float:
        if self.upstream_idle_seconds > 0:
            return self.upstream_idle_seconds
        return UPSTREAM_IDLE_HEARTBEATS * heartbeat_seconds

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "GatewaySettings":
        return load_settings(cls, environ, prefix=ENV_PREFIX)
