"""Operator settings, read once from environment variables by the shared loader (``agentrun_common.settings``).

Each field is read from AGENTRUN_<FIELD NAME IN CAPITALS> unless it names another variable; blank keeps the
default; seconds may be written as a number or a duration ("90s", "1m30s"). Each field documents its
variable, unit, default and why it exists. Tests shorten the intervals
by building an ``OperatorSettings`` directly instead of touching the environment. The permit
server's own settings (AGENTRUN_PERMIT_*, AGENTRUN_POOL_STATUS_INTERVAL_SECONDS) are documented in
``agentrun_operator.permits.settings.PermitSettings`` and read here, into ``OperatorSettings.permits``.
"""

import dataclasses
import re
from collections.abc import Mapping
from typing import Annotated, Literal

from agentrun_api.names import DNS_SUBDOMAIN_PATTERN
from agentrun_api.spec import IngressController
from agentrun_common.settings import Count, Env, Port, PositiveSeconds, Seconds, load_settings
from agentrun_operator.leadership import LeaderElection
from agentrun_operator.permits.settings import PermitSettings
from agentrun_operator.policy import Policy

DEFAULT_RUNNER_IMAGE = "ghcr.io/agentrun/agentrun-operator/runner:0.1.0"
RUNNER_IMAGE_PULL_SECRETS_ENV = "AGENTRUN_RUNNER_IMAGE_PULL_SECRETS"


def read_runner_image_pull_secrets(env: Mapping[str, str]) -> tuple[str, ...]:
    """AGENTRUN_RUNNER_IMAGE_PULL_SECRETS: comma-separated Secret names, each a DNS subdomain."""
    names = tuple(name.strip() for name in env.get(RUNNER_IMAGE_PULL_SECRETS_ENV, "").split(",") if name.strip())
    for name in names:
        if len(name) > 253 or not re.fullmatch(DNS_SUBDOMAIN_PATTERN, name):
            raise ValueError(
                f"{RUNNER_IMAGE_PULL_SECRETS_ENV}: {name!r} is not a Secret name: list names such as "
                f"regcred,other-registry (lowercase letters, digits, '-' and '.'), separated by commas"
            )
    return tuple(dict.fromkeys(names))


@dataclasses.dataclass(frozen=True)
class OperatorSettings:
    """Everything the operator reads from its environment."""

    # AGENTRUN_WATCH_NAMESPACE: the one namespace to watch; empty watches all namespaces.
    watch_namespace: str = ""
    # AGENTRUN_RUNNER_IMAGE: runner image for runs whose spec.runner.image is unset (the policy's default
    # image: it must be one the policy's allowed images admit).
    runner_image: str = DEFAULT_RUNNER_IMAGE
    # AGENTRUN_RUNNER_IMAGE_PULL_SECRETS: Secrets every runner pod pulls its image with (comma-separated names;
    # the chart's runnerImage.pullSecrets), before a run's own spec.runner.imagePullSecrets. A pull secret is
    # read from the pod's namespace, so each namespace that runs AgentRuns needs a Secret of that name.
    runner_image_pull_secrets: Annotated[tuple[str, ...], Env(reader=read_runner_image_pull_secrets)] = ()
    # The platform's bounds on runs' images, model hosts and webhook hosts (AGENTRUN_POLICY_*; see
    # ``agentrun_operator.policy``). Unset: anything is allowed.
    policy: Annotated[Policy, Env(reader=Policy.from_env)] = dataclasses.field(default_factory=Policy)
    # AGENTRUN_STATUS_MIN_INTERVAL_SECONDS (seconds, default 2): least time between two status
    # writes that only carry progress, however fast the runner iterates; phase changes go out at once.
    status_min_interval_seconds: Seconds = 2.0
    # AGENTRUN_PROGRESS_INTERVAL_SECONDS (seconds, default 2): how often the runner reports progress
    # (rendered into its RunnerConfig).
    progress_interval_seconds: PositiveSeconds = 2.0
    # AGENTRUN_METRICS_PORT (default 8000): Prometheus /metrics; 0 turns the endpoint off.
    metrics_port: Port = 8000
    # AGENTRUN_HEALTH_PORT (default 8081): kopf's liveness endpoint /healthz; 0 turns it off.
    health_port: Port = 8081
    # AGENTRUN_LISTEN_HOST, else POD_IP (the chart sets it from status.podIP), else all interfaces: the
    # address the metrics and health endpoints bind. The pod's IP is where its Service's endpoints and the
    # kubelet's probes point, and two replicas sharing one network (the test node) do not collide on it.
    listen_host: Annotated[str, Env(fallbacks=("POD_IP",))] = "0.0.0.0"  # noqa: S104 - scraped from other pods
    # Leader election between replicas on a Lease (AGENTRUN_LEADER_ELECTION_LEASE and the timing in
    # LeaderElection): only the leader supervises runs and serves permits. No Lease named: one replica,
    # leader from the start, which is right for one replica and unsafe for two.
    leader_election: Annotated[LeaderElection, Env(prefix="AGENTRUN_")] = dataclasses.field(
        default_factory=LeaderElection
    )
    # AGENTRUN_MAX_CONCURRENT_ADMISSIONS (default 32): runs admitted (their children created) at the
    # same time. Bounds the operator's burst of requests when thousands of runs arrive at once.
    max_concurrent_admissions: Count = 32
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
    # AGENTRUN_GATEWAY_SERVICE_ACCOUNT ("<namespace>/<name>"; the chart sets it when gateway.enabled): the
    # stream gateway's ServiceAccount. Each streaming run gets a Role <run>-stream-reader bound to it that
    # allows `get` on that run's <run>-stream-token Secret and nothing else, so the internet-facing gateway
    # holds no Secret permission of its own. Empty: no gateway reads the runs' streams.
    gateway_service_account: str = ""
    # AGENTRUN_SUPERVISE_INTERVAL_SECONDS (seconds, default 60): longest sleep of a run's supervisor.
    # A safety net only: every change of the run, its Job, pods or progress report wakes it, and each
    # deadline it has is slept to exactly. Each interval costs one look at every live run (at 5 s,
    # 5,000 live runs kept the operator busy with 1,000 looks a second).
    supervise_interval_seconds: PositiveSeconds = 60.0
    # AGENTRUN_OUTCOME_GRACE_SECONDS (seconds, default 10): how long a Job that completed may go
    # without the runner's outcome appearing in its progress report before the run counts as lost.
    outcome_grace_seconds: Seconds = 10.0
    # AGENTRUN_WEBHOOK_BACKOFF_SECONDS (seconds, default 2): first delay between webhook attempts;
    # each later delay doubles, capped by AGENTRUN_WEBHOOK_BACKOFF_MAX_SECONDS (default 300).
    webhook_backoff_seconds: PositiveSeconds = 2.0
    webhook_backoff_max_seconds: PositiveSeconds = 300.0
    # AGENTRUN_WEBHOOK_TIMEOUT_SECONDS (seconds, default 10): timeout of one webhook POST.
    webhook_timeout_seconds: PositiveSeconds = 10.0
    # AGENTRUN_RETRY_DELAY_SECONDS (seconds, default 30): delay before retrying a run whose Secret
    # or StorageClass is missing; the user is told in a condition meanwhile.
    retry_delay_seconds: PositiveSeconds = 30.0
    # AGENTRUN_PREREQUISITE_GRACE_SECONDS (seconds, default 300): how long after its creation a run may wait
    # for a missing Secret (or Secret key) or StorageClass; then it ends Failed with a reason naming what is
    # missing. Never longer than the run's spec.maxExecutionTime.
    prerequisite_grace_seconds: Seconds = 300.0
    # AGENTRUN_COMPANION_CHECK_INTERVAL_SECONDS (seconds, default 300): how often a live run's supervisor checks
    # that its companions (config and progress ConfigMaps, stream-token Secret, Service, ServiceAccount, Role,
    # RoleBinding) exist, and creates again any that was deleted. A deleted progress ConfigMap is seen at once
    # (it is watched); the others are not watched (the operator lists no Secrets), so this bounds their repair.
    companion_check_interval_seconds: PositiveSeconds = 300.0
    # AGENTRUN_PERMIT_SERVER_URL: URL at which runner pods reach this operator's permit server
    # (its Service, e.g. http://agentrun-operator-permits.agentrun-system:8090). Runs with
    # spec.throttle.enabled get it in their RunnerConfig and draw permits from the ThrottlePool they
    # name. Empty: no cluster-wide pools; every throttled run keeps its own in-process limits.
    permit_server_url: str = ""
    # The permit server: where it listens, lease length, status interval (see PermitSettings).
    permits: Annotated[PermitSettings, Env(prefix="AGENTRUN_PERMIT_")] = dataclasses.field(
        default_factory=PermitSettings
    )

    @property
    def namespaces(self) -> list[str]:
        """What kopf watches: one namespace, or all of them."""
        return [self.watch_namespace] if self.watch_namespace else []

    def __post_init__(self) -> None:
        # URLs are joined with paths: one without its trailing slash joins the same however it was written.
        object.__setattr__(self, "stream_base_url", self.stream_base_url.rstrip("/"))
        object.__setattr__(self, "permit_server_url", self.permit_server_url.rstrip("/"))
        gateway_namespace, _, gateway_account = self.gateway_service_account.partition("/")
        if self.gateway_service_account and not (gateway_namespace and gateway_account and "/" not in gateway_account):
            raise ValueError(
                f"AGENTRUN_GATEWAY_SERVICE_ACCOUNT must be <namespace>/<name> of the stream gateway's "
                f"ServiceAccount, not {self.gateway_service_account!r}"
            )
        if not self.policy.image_allowed(self.runner_image):
            # Every run without spec.runner.image would be refused: fail at startup, not per run.
            raise ValueError(
                f"AGENTRUN_RUNNER_IMAGE {self.runner_image!r} is not among AGENTRUN_POLICY_ALLOWED_IMAGES "
                f"({', '.join(self.policy.allowed_images) or 'none'}); add its repository there"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "OperatorSettings":
        return load_settings(cls, environ, prefix="AGENTRUN_")
