"""The arithmetic every timer on the stream path is derived from.

Two kinds of timer sit between a client and the runner. Idle timers are reset by any byte, so the
stream's heartbeats keep them alive: they only need to sit safely above the heartbeat interval.
Whole-response timers are not reset by heartbeats: they must cover the whole run budget, be
disabled, or, where a platform caps them below the budget, be survived by a client that reconnects
with ``Last-Event-ID`` (the stream gateway replays what it missed).
"""

import math
from dataclasses import dataclass
from typing import Final

from agentrun_api.spec import MAX_EXECUTION_TIME_SECONDS, AgentRunSpec
from agentrun_common.durations import parse_duration

# An idle timer is set to at least this many heartbeat intervals: one lost or delayed heartbeat
# (a GC pause, a slow replay, a congested hop) must never cut a healthy stream.
IDLE_HEARTBEATS: Final = 4
# ... and to at least this many seconds: a held idle socket costs little, a cut stream costs a reconnect.
IDLE_FLOOR_SECONDS: Final = 300
# Whole-response timers get this much beyond maxExecutionTime: the Job's deadline grace (60 s by
# default), the time between a client connecting and the runner starting, and the final replay.
WHOLE_RESPONSE_MARGIN_SECONDS: Final = 300
# A server's keep-alive must outlast the pooled idle time of the proxy in front of it by this much,
# so the proxy always closes an idle pooled connection first (otherwise: a 502 race on reuse).
KEEP_ALIVE_MARGIN_SECONDS: Final = 20
# The gateway gives up on a silent runner connection after this many heartbeat intervals and
# re-attaches; both ends are ours, so a false positive costs only a replay from Last-Event-ID.
UPSTREAM_IDLE_HEARTBEATS: Final = 3
# How long the stream gateway keeps an idle pooled connection to a runner (its HTTP client's pool).
GATEWAY_UPSTREAM_POOL_IDLE_SECONDS: Final = 30


@dataclass(frozen=True)
class StreamBudget:
    """What the stream path must carry: a run of up to ``max_execution_seconds`` with heartbeats."""

    max_execution_seconds: float
    """The run's wall-clock budget (spec.maxExecutionTime), in seconds; for the shared route, the longest allowed."""
    heartbeat_interval_seconds: float
    """Seconds between heartbeat comments on an idle stream (spec.streaming.heartbeatInterval)."""

    def __post_init__(self) -> None:
        if self.max_execution_seconds <= 0:
            raise ValueError(f"max_execution_seconds must be positive, got {self.max_execution_seconds}")
        if self.heartbeat_interval_seconds <= 0:
            raise ValueError(f"heartbeat_interval_seconds must be positive, got {self.heartbeat_interval_seconds}")

    @classmethod
    def from_spec(cls, spec: AgentRunSpec) -> "StreamBudget":
        return cls(
            max_execution_seconds=parse_duration(spec.max_execution_time),
            heartbeat_interval_seconds=parse_duration(spec.streaming.heartbeat_interval),
        )

    @classmethod
    def longest_allowed(cls, heartbeat_interval_seconds: float = 15.0) -> "StreamBudget":
        """The budget of the one shared route: it must carry the longest run the API admits."""
        return cls(MAX_EXECUTION_TIME_SECONDS, heartbeat_interval_seconds)

    @property
    def idle_timeout_needed(self) -> int:
        """Seconds an idle timer on the path must allow at least."""
        return max(math.ceil(IDLE_HEARTBEATS * self.heartbeat_interval_seconds), IDLE_FLOOR_SECONDS)

    @property
    def whole_response_needed(self) -> int:
        """Seconds a whole-response timer must allow for one stream to last the whole run."""
        return math.ceil(self.max_execution_seconds) + WHOLE_RESPONSE_MARGIN_SECONDS

    @property
    def upstream_idle_timeout(self) -> int:
        """Seconds the gateway waits on a silent runner before it re-attaches."""
        return math.ceil(UPSTREAM_IDLE_HEARTBEATS * self.heartbeat_interval_seconds)


def keep_alive_above(pooled_idle_seconds: float) -> int:
    """A server keep-alive that outlasts a proxy's pooled idle connections."""
    return math.ceil(pooled_idle_seconds) + KEEP_ALIVE_MARGIN_SECONDS


@dataclass(frozen=True)
class ServerTimeouts:
    """Timeouts of one of our own HTTP servers on the stream path (the stream gateway or the runner)."""

    keep_alive_seconds: int
    """Idle time before the server closes a keep-alive connection between requests; above the caller's pool idle."""
    upstream_idle_seconds: int | None
    """For the gateway: seconds without a byte from the runner before it re-attaches; None for the runner."""
    upstream_pool_idle_seconds: int | None
    """For the gateway: how long its HTTP client keeps idle connections to runners; None for the runner."""


def runner_server_timeouts(budget: StreamBudget) -> ServerTimeouts:
    """The runner's stream server sits behind the gateway's connection pool only."""
    del budget  # the runner's keep-alive depends on its caller's pool, not on the run
    return ServerTimeouts(
        keep_alive_seconds=keep_alive_above(GATEWAY_UPSTREAM_POOL_IDLE_SECONDS),
        upstream_idle_seconds=None,
        upstream_pool_idle_seconds=None,
    )


def gateway_server_timeouts(budget: StreamBudget, proxy_pooled_idle_seconds: float) -> ServerTimeouts:
    """The gateway sits behind the cluster's ingress or load balancer and in front of the runners."""
    return ServerTimeouts(
        keep_alive_seconds=keep_alive_above(proxy_pooled_idle_seconds),
        upstream_idle_seconds=budget.upstream_idle_timeout,
        upstream_pool_idle_seconds=GATEWAY_UPSTREAM_POOL_IDLE_SECONDS,
    )
