"""Settings of the node agent (and of the legacy local Job executor that shares its pod runtime)."""

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field


def _host_base_env() -> dict[str, str]:
    # What an image's own ENV would give a container: a PATH to find tools, a HOME, a locale.
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TZ")
    return {name: os.environ[name] for name in keep if name in os.environ}


@dataclass(frozen=True)
class InClusterApi:
    """How a pod's processes reach the API server as in-cluster clients: KUBERNETES_SERVICE_HOST/PORT and the
    projected ServiceAccount token. The address is the API server's own loopback one, not the kubernetes
    Service's cluster IP: there is no kube-proxy to route a cluster IP here."""

    host: str
    port: int


@dataclass(frozen=True)
class ExecutorSettings:
    resync_interval_seconds: float = 1.0
    """Seconds between full re-lists of Jobs and Pods besides watch events (default 1): the safety net
    for API servers whose watches drop events, and the clock for activeDeadlineSeconds."""

    config_retry_seconds: float = 0.5
    """Seconds between retries of a pod waiting on a missing Secret, ConfigMap or claim (default 0.5;
    kubelet backs off for longer, but tests create the missing object and want the pod to start soon)."""

    pod_backoff_base_seconds: float = 0.0
    """Delay before a replacement pod after the n-th failure is base x 2^(n-1) seconds (default 0).
    Kubernetes uses 10 s doubling up to 6 min; locally that would only make tests slow."""

    container_restart_backoff_seconds: float = 0.1
    """Delay before kubelet restarts a container in place under restartPolicy OnFailure (default 0.1;
    Kubernetes: 10 s doubling up to 5 min)."""

    image_commands: Mapping[str, list[str]] = field(default_factory=dict)
    """Command to run for a container that has none, by image repository (no tag): the stand-in for
    an image's ENTRYPOINT, e.g. {"ghcr.io/x/agentrun-runner": ["python", "-m", "agentrun_runner"]}.
    With ``in_cluster_api`` set (the node agent) these are also the only images the node can pull: any
    other image leaves its pod waiting in ErrImagePull, as a kubelet without registry access would."""

    in_cluster_api: InClusterApi | None = None
    """Set by the node agent: containers get the in-cluster environment and a real ServiceAccount token from
    the TokenRequest API, so the API server enforces the pod's own RBAC. None (the legacy executor): each
    container gets a copy of the executor's kubeconfig instead."""

    base_env: Mapping[str, str] = field(default_factory=_host_base_env)
    """Environment every container starts from before the pod's env (default: PATH, HOME and locale of
    this process), the stand-in for an image's ENV."""

    shared_host_paths: tuple[str, ...] = tuple(dict.fromkeys((sys.prefix, sys.base_prefix)))
    """Host directories every container sees at their own path even where a volume covers them (an
    emptyDir on /tmp over a checkout in /tmp, say): the stand-in for an image's own files. Default: this
    Python's installation; add the source roots a container runs from."""

    node_name: str = "local-executor"
    """spec.nodeName given to the pods this executor runs."""

    kill_timeout_seconds: float = 5.0
    """Seconds to wait for a SIGKILLed process to be reaped before giving up on it (default 5)."""
