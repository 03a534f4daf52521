"""Settings of the runner process that are not part of the operator's RunnerConfig.

They tune the process, not the run: a run behaves the same under any of them. Each can be set by
an environment variable (``AGENTRUN_RUNNER_<FIELD NAME IN CAPITALS>``, read by the shared loader: seconds
as a number or a duration such as "90s"); the defaults suit a pod.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Self

from agentrun_common.settings import Count, PositiveSeconds, Seconds, load_settings

ENV_PREFIX = "AGENTRUN_RUNNER_"


@dataclass(frozen=True)
class RunnerSettings:
    # Seconds the stream server keeps serving the replay and the final `finished` event after the run
    # ended, so clients (and the stream gateway) that were reconnecting still see the end. Default 30.
    sse_linger_seconds: Seconds = 30.0
    # Events buffered per stream client. A client further behind than this is disconnected (it resumes
    # with Last-Event-ID); the agent never waits for a reader. Default 1024 events.
    sse_client_queue_size: Count = 1024
    # Longest time, in seconds, an event waits to be written to the checkpoint log. Readers see an
    # event only once it is written (so what they saw is what a replay gives, through any pod loss):
    # this bounds what the write adds to a streamed token's latency, and events that arrive together
    # share one write. Default 0.2.
    event_flush_seconds: PositiveSeconds = 0.2
    # First backoff of a retried model call, in seconds; doubled per attempt, with full jitter. Default 1.
    retry_base_seconds: Seconds = 1.0
    # Longest backoff between model call attempts, in seconds, unless Retry-After asks for more. Default 30.
    retry_max_backoff_seconds: Seconds = 30.0
    # Characters of a tool's output the model sees; the rest is cut with a note. Default 65536.
    max_tool_output_chars: Count = 65_536
    # Bytes read_file returns at most. Default 1 MiB.
    max_read_file_bytes: Count = 1_048_576
    # Address the stream server binds. Empty (the default): the pod's IP from POD_IP, which the
    # Service's endpoints point at, or all interfaces when POD_IP is unset; tests use 127.0.0.1.
    stream_host: str = ""
    # Write progress reports to this file instead of the ConfigMap <run>-progress: for running the
    # runner outside a cluster (tests, a laptop). Empty (the default) means the ConfigMap.
    progress_file: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        """Read every field from AGENTRUN_RUNNER_<NAME>; unset or blank variables keep the defaults."""
        return load_settings(cls, environ, prefix=ENV_PREFIX)
