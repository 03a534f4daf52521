"""The gateway's metrics (prometheus-client). Labels are bounded: no run names, no tokens."""

from prometheus_client import Counter, Gauge

READERS = Gauge("agentrun_gateway_readers", "SSE readers connected to this gateway replica")
REATTACHES = Counter(
    "agentrun_gateway_reattaches_total", "Times a reader's relay re-attached to a runner after a cut or silence"
)
EVENTS_RELAYED = Counter("agentrun_gateway_events_relayed_total", "Events written to readers")
AUTH_REJECTIONS = Counter(
    "agentrun_gateway_auth_rejections_total", "Readers turned away", ["reason"]
)  # reason: unauthenticated | forbidden
UPSTREAM_TOO_LARGE = Counter(
    "agentrun_gateway_upstream_too_large_total",
    "Runner connections dropped because a line or event passed AGENTRUN_GATEWAY_UPSTREAM_MAX_EVENT_BYTES",
)
