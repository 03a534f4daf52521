"""Metrics of the permit server. Labels are pool names (declared by admins, so bounded), never runs."""

from typing import Final

from prometheus_client import Histogram

QUEUE_WAIT_SECONDS: Final = Histogram(
    "agentrun_queue_wait_seconds",
    "Seconds model calls waited for a throttle permit, including calls that gave up.",
    ["pool"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600),
)


def pool_label(namespace: str, pool: str) -> str:
    """``<namespace>/<name>`` of a ThrottlePool, ``<name>`` of a ClusterThrottlePool (namespace "")."""
    return f"{namespace}/{pool}" if namespace else pool
