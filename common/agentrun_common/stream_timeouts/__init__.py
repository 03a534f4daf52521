"""Generated timeouts for every hop of a run's stream: client, load balancer, ingress or gateway,
stream gateway, runner. See docs/streaming.md."""

from agentrun_common.stream_timeouts.budget import (
    ServerTimeouts,
    StreamBudget,
    gateway_server_timeouts,
    runner_server_timeouts,
)
from agentrun_common.stream_timeouts.chain import Hop, HopStatus, TimerKind, format_chain_table
from agentrun_common.stream_timeouts.controllers import (
    CONTROLLERS,
    RenderedRoute,
    RouteTarget,
    render_stream_route,
    stream_chain,
)
from agentrun_common.stream_timeouts.durations import gateway_api_duration
from agentrun_common.stream_timeouts.exposure import per_run_exposure_allowed
from agentrun_common.stream_timeouts.run_check import StreamChainCheck, check_stream_chain, controller_for

__all__ = [
    "CONTROLLERS",
    "Hop",
    "HopStatus",
    "RenderedRoute",
    "RouteTarget",
    "ServerTimeouts",
    "StreamBudget",
    "StreamChainCheck",
    "TimerKind",
    "check_stream_chain",
    "controller_for",
    "format_chain_table",
    "gateway_api_duration",
    "gateway_server_timeouts",
    "per_run_exposure_allowed",
    "render_stream_route",
    "runner_server_timeouts",
    "stream_chain",
]
