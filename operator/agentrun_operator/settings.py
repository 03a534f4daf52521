"""Operator settings, read once from environment variables.

Each field documents its variable, unit, default and why it exists. Tests shorten the intervals
by building an ``OperatorSettings`` directly instead of touching the environment. The permit
server's own settings (AGENTRUN_PERMIT_*, AGENTRUN_POOL_STATUS_INTERVAL_SECONDS) are documented in
``agentrun_operator.permits.settings.PermitSettings`` and read here, into ``OperatorSettings.permits``.
"""

import dataclasses
import os
from collections.abc import Mapping
from typing import Literal, get_args

from agentrun_api.spec import IngressController
from agentrun_operator.leadership import LeaderElection
from agentrun_operator.permits.settings import PermitSettings

DEFAULT_RUNNER_IMAGE = "ghcr.io/agentrun/agentrun-runner:0.1.0"


class SettingsError(ValueError):
    """An environment variable holds a value the operator cannot use; the message names it."""


@dataclasses.dataclass(frozen=True)
class OperatorSettings:
    """Everything the operator reads from its environment."""

    # AGENTRUN_WATCH_NAMESPACE: the one namespace to watch; empty watches all namespaces.
    watch_namespace: str = ""
    # AGENTRUN_RUNNER_IMAGE: runner image for runs whose spec.runner.image is unset.
    runner_image: str = DEFAULT_RUNNER_IMAGE
    # AGENTRUN_STATUS_MIN_INTERVAL_SECONDS (seconds, default 2): least time between two status
    # writes that only carry progress, however fast the runner iterates; phase changes go out at once.
    status_min_interval_seconds: float = 2.0
    # AGENTRUN_PROGRESS_INTERVAL_SECONDS (seconds, default 2): how often the runner reports progress
    # (rendered into its RunnerConfig).
    progress_interval_seconds: float = 2.0
    # AGENTRUN_METRICS_PORT (default 8000): Prometheus /metrics; 0 turns the endpoint off.
    metrics_port: int = 8000
    # AGENTRUN_HEALTH_PORT (default 8081): kopf's liveness endpoint /healthz; 0 turns it off.
    health_port: int = 8081
    # Leader election between replicas on a Lease (AGENTRUN_LEADER_ELECTION_LEASE and the timing in
    # LeaderElection): only the leader supervises runs and serves permits. No Lease named: one replica,
    # leader from the start, which is right for one replica and unsafe for two.
    leader_election: LeaderElection = dataclasses.field(default_factory=LeaderElection)
    # AGENTRUN_MAX_CONCURRENT_ADMISSIONS (default 32): runs admitted (their children created) at the
    # same time. Bounds the operator's burst of requests when thousands of runs arrive at once.
    max_concurrent_admissions: int = 32
    # AGENTRUN_LOG_FORMAT: "text" for people, "json" for log pipelines.
    log_format: Literal["text", "json"] = "text"
    # AGENTRUN_STREAM_BASE_URL: public URL of the stream gateway route; status.streamURL is this
    # plus /runs/<namespace>/<name>/events. Empty leaves streamURL as the in-cluster Service URL.
    stream_base_url: str = ""
    # AGENTRUN_STREAM_CONTROLLER (default ingress-nginx): the ingress or gateway controller in front of
    # the stream gateway (the chart sets it from gateway.controller, as it does the gateway's own
    # AGENTRUN_GATEWAY_CONTROLLER). Each run's stream chain is checked behind it (condition
    # StreamChainFits); a run with spec.streaming.ingress is checked behind the controller it names.
    stream_controller: IngressController = "ingress-nginx"
    # AGENTRUN_SUPERVISE_INTERVAL_SECONDS (seconds, default 60): longest sleep of a run's supervisor.
    # A safety net only: every change of the run, its Job, pods or progress report wakes it, and each
    # deadline it has is slept to exactly. Each interval costs one look at every live run (at 5 s,
    # 5,000 live runs kept the operator busy with 1,000 looks a second).
    supervise_interval_seconds: float = 60.0
    # AGENTRUN_OUTCOME_GRACE_SECONDS (seconds, default 10): how long a Job that completed may go
    # without the runner's outcome appearing in its progress report before the run counts as lost.
    outcome_grace_seconds: float = 10.0
    # AGENTRUN_WEBHOOK_BACKOFF_SECONDS (seconds, default 2): first delay between webhook attempts;
    # each later delay doubles, capped by AGENTRUN_WEBHOOK_BACKOFF_MAX_SECONDS (default 300).
    webhook_backoff_seconds: float = 2.0
    webhook_backoff_max_seconds: float = 300.0
    # AGENTRUN_WEBHOOK_TIMEOUT_SECONDS (seconds, default 10): timeout of one webhook POST.
    webhook_timeout_seconds: float = 10.0
    # AGENTRUN_RETRY_DELAY_SECONDS (seconds, default 30): delay before retrying a run whose Secret
    # or StorageClass is missing; the user is told in a condition meanwhile.
    retry_delay_seconds: float = 30.0
    # AGENTRUN_PERMIT_SERVER_URL: URL at which runner pods reach this operator's permit server
    # (its Service, e.g. http://agentrun-operator-permits.agentrun-system:8090). Runs with
    # spec.throttle.enabled get it in their RunnerConfig and draw permits from the ThrottlePool they
    # name. Empty: no cluster-wide pools; every throttled run keeps its own in-process limits.
    permit_server_url: str = ""
    # The permit server: where it listens, lease length, status interval (see PermitSettings).
    permits: PermitSettings = dataclasses.field(default_factory=PermitSettings)

    @property
    def namespaces(self) -> list[str]:
        """What kopf watches: one namespace, or all of them."""
        return [self.watch_namespace] if self.watch_namespace else []

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "OperatorSettings":
        env = os.environ if environ is None else environ
        defaults = cls()
        log_format = env.get("AGENTRUN_LOG_FORMAT", defaults.log_format).strip().lower()
        if log_format not in ("text", "json"):
            raise SettingsError(f"AGENTRUN_LOG_FORMAT must be text or json, not {log_format!r}")
        stream_controller = env.get("AGENTRUN_STREAM_CONTROLLER", "").strip() or defaults.stream_controller
        controllers: tuple[IngressController, ...] = get_args(IngressController)
        if stream_controller not in controllers:
            raise SettingsError(
                f"AGENTRUN_STREAM_CONTROLLER must be one of {', '.join(controllers)}, not {stream_controller!r}"
            )
        try:
            permits = PermitSettings.from_env(env)
        except ValueError as error:
            raise SettingsError(str(error)) from None
        return cls(
            watch_namespace=env.get("AGENTRUN_WATCH_NAMESPACE", defaults.watch_namespace).strip(),
            runner_image=env.get("AGENTRUN_RUNNER_IMAGE", "").strip() or defaults.runner_image,
            status_min_interval_seconds=_number(
                env, "AGENTRUN_STATUS_MIN_INTERVAL_SECONDS", defaults.status_min_interval_seconds
            ),
            progress_interval_seconds=_number(
                env, "AGENTRUN_PROGRESS_INTERVAL_SECONDS", defaults.progress_interval_seconds, positive=True
            ),
            metrics_port=_port(env, "AGENTRUN_METRICS_PORT", defaults.metrics_port),
            health_port=_port(env, "AGENTRUN_HEALTH_PORT", defaults.health_port),
            leader_election=_leader_election(env),
            max_concurrent_admissions=_count(
                env, "AGENTRUN_MAX_CONCURRENT_ADMISSIONS", defaults.max_concurrent_admissions
            ),
            log_format="json" if log_format == "json" else "text",
            stream_base_url=env.get("AGENTRUN_STREAM_BASE_URL", "").strip().rstrip("/"),
            stream_controller=next(c for c in controllers if c == stream_controller),
            supervise_interval_seconds=_number(
                env, "AGENTRUN_SUPERVISE_INTERVAL_SECONDS", defaults.supervise_interval_seconds, positive=True
            ),
            outcome_grace_seconds=_number(env, "AGENTRUN_OUTCOME_GRACE_SECONDS", defaults.outcome_grace_seconds),
            webhook_backoff_seconds=_number(
                env, "AGENTRUN_WEBHOOK_BACKOFF_SECONDS", defaults.webhook_backoff_seconds, positive=True
            ),
            webhook_backoff_max_seconds=_number(
                env, "AGENTRUN_WEBHOOK_BACKOFF_MAX_SECONDS", defaults.webhook_backoff_max_seconds, positive=True
            ),
            webhook_timeout_seconds=_number(
                env, "AGENTRUN_WEBHOOK_TIMEOUT_SECONDS", defaults.webhook_timeout_seconds, positive=True
            ),
            retry_delay_seconds=_number(
                env, "AGENTRUN_RETRY_DELAY_SECONDS", defaults.retry_delay_seconds, positive=True
            ),
            permit_server_url=env.get("AGENTRUN_PERMIT_SERVER_URL", "").strip().rstrip("/"),
            permits=permits,
        )


def _number(env: Mapping[str, str], name: str, default: float, *, positive: bool = False) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number of seconds, not {raw!r}") from None
    if value < 0 or (positive and value == 0):
        raise SettingsError(f"{name} must be {'greater than' if positive else 'at least'} 0, not {raw!r}")
    return value


def _leader_election(env: Mapping[str, str]) -> LeaderElection:
    defaults = LeaderElection()
    pod_name = env.get("POD_NAME", "").strip()
    pod_namespace = env.get("POD_NAMESPACE", "").strip()
    try:
        return LeaderElection(
            lease_name=env.get("AGENTRUN_LEADER_ELECTION_LEASE", "").strip(),
            namespace=env.get("AGENTRUN_LEADER_ELECTION_NAMESPACE", "").strip() or pod_namespace,
            identity=pod_name,
            pod_name=pod_name,
            pod_namespace=pod_namespace,
            lease_duration_seconds=_number(
                env, "AGENTRUN_LEASE_DURATION_SECONDS", defaults.lease_duration_seconds, positive=True
            ),
            renew_deadline_seconds=_number(
                env, "AGENTRUN_LEASE_RENEW_DEADLINE_SECONDS", defaults.renew_deadline_seconds, positive=True
            ),
            retry_period_seconds=_number(
                env, "AGENTRUN_LEASE_RETRY_PERIOD_SECONDS", defaults.retry_period_seconds, positive=True
            ),
        )
    except ValueError as error:
        raise SettingsError(str(error)) from None


def _count(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) == 0:
        raise SettingsError(f"{name} must be a whole number above 0, not {raw!r}")
    return int(raw)


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) > 65535:
        raise SettingsError(f"{name} must be a port number from 0 to 65535, not {raw!r}")
    return int(raw)
