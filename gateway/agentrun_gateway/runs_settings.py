"""The HTTP runs API's settings (a nested part of the gateway's), each read from
``AGENTRUN_GATEWAY_RUNS_API_<FIELD NAME IN UPPER CASE>``."""

from dataclasses import dataclass
from typing import Annotated

from agentrun_common.settings import Count, Env, Seconds


@dataclass(frozen=True)
class RunsApiSettings:
    api_keys_namespace: Annotated[str, Env(fallbacks=("POD_NAMESPACE",))] = ""
    """Namespace holding the API key Secrets (hashes only); empty means the gateway's own (POD_NAMESPACE, set by
    the chart). With neither, API keys are off and only Kubernetes tokens are accepted."""
    runs_per_minute_per_caller: Count = 60
    """Runs one caller (a Kubernetes user or an API key) may submit per minute on one gateway replica, at an
    even pace; past it a submission gets 429 with Retry-After. A replayed submission (same Idempotency-Key)
    is not counted."""
    burst_runs_per_caller: Count = 20
    """Submissions a caller may make back to back after a quiet spell, before the per-minute pace applies."""
    max_request_bytes: Count = 1_048_576
    """Largest request body accepted, in bytes (1 MiB holds the largest input and instructions a run admits
    in ASCII); a larger one gets 413."""
    poll_after_seconds: Seconds = 2.0
    """The Retry-After sent with 202 and with the status of an unfinished run: when a poller should look again."""
    api_key_cache_seconds: Seconds = 10.0
    """How long a looked-up API key (or its absence) is reused; a deleted key stops working within this time."""
