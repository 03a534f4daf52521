"""Settings of the permit server, read from the operator's environment (AGENTRUN_PERMIT_<FIELD>)."""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated

from agentrun_common.settings import Env, Port, Seconds, load_settings


@dataclass(frozen=True)
class PermitSettings:
    """How the operator's permit server listens and times leases. Env var in brackets."""

    # Address the permit server binds [AGENTRUN_PERMIT_HOST, else POD_IP]. Default all interfaces: runner
    # pods reach it through the operator's Service, whose endpoints are the pod's IP.
    host: Annotated[str, Env(fallbacks=("POD_IP",))] = "0.0.0.0"  # noqa: S104 - reached from runner pods
    # TCP port of the permit server [AGENTRUN_PERMIT_PORT], default 8090; the Service targets it.
    port: Port = 8090
    # Seconds a lease lives without renewal [AGENTRUN_PERMIT_LEASE_SECONDS], default 15. A runner
    # killed while holding a permit returns it after this long; it is also how long a pool grants
    # nothing after the operator starts, so permits held from before a restart are re-counted.
    lease_seconds: Seconds = 15.0
    # Longest pool-wide pause one provider Retry-After may impose [AGENTRUN_PERMIT_MAX_PENALTY_SECONDS],
    # default 600: a mistaken or hostile header must not freeze a pool for days.
    max_penalty_seconds: Seconds = 600.0
    # Seconds between ThrottlePool status writes per pool [AGENTRUN_POOL_STATUS_INTERVAL_SECONDS],
    # default 5: the live columns of `kubectl get throttlepools` without hammering the API server.
    status_interval_seconds: Annotated[Seconds, Env(name="AGENTRUN_POOL_STATUS_INTERVAL_SECONDS")] = 5.0
    # Seconds a run's stream-token Secret is cached [AGENTRUN_PERMIT_CREDENTIAL_CACHE_SECONDS],
    # default 60: one Secret read per run per minute, not one per model call.
    credential_cache_seconds: Seconds = 60.0

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:  # 0: any free port (tests)
            raise ValueError(f"AGENTRUN_PERMIT_PORT must be a TCP port (1-65535), got {self.port}")
        for name, value in (
            ("AGENTRUN_PERMIT_LEASE_SECONDS", self.lease_seconds),
            ("AGENTRUN_POOL_STATUS_INTERVAL_SECONDS", self.status_interval_seconds),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value}")
        for name, value in (
            ("AGENTRUN_PERMIT_MAX_PENALTY_SECONDS", self.max_penalty_seconds),
            ("AGENTRUN_PERMIT_CREDENTIAL_CACHE_SECONDS", self.credential_cache_seconds),
        ):
            if not value >= 0:
                raise ValueError(f"{name} must be zero or a positive number of seconds, got {value}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "PermitSettings":
        return load_settings(cls, env, prefix="AGENTRUN_PERMIT_")
