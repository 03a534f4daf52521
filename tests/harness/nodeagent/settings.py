"""Settings of the node agent."""

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
class NodeSettings:
    resync_interval_seconds: float = 1.0
    """Seconds between full re-lists of the node's pods besides watch events (default 1): the safety net for a
    watch that drops events."""

    config_retry_seconds: float = 0.5
    """Seconds between retries of a pod waiting on a missing Secret, ConfigMap or claim (default 0.5;
    kubelet backs off for longer, but tests create the missing object and want the pod to start soon)."""

    container_restart_backoff_seconds: float = 0.1
    """Delay before kubelet restarts a container in place under restartPolicy OnFailure (default 0.1;
    Kubernetes: 10 s doubling up to 5 min)."""

    in_cluster_api: InClusterApi = field(default_factory=lambda: InClusterApi("127.0.0.1", 6443))
    """Where containers reach the API server as in-cluster clients (with a real ServiceAccount token from the
    TokenRequest API, so the API server enforces the pod's own RBAC)."""

    image_commands: Mapping[str, list[str]] = field(default_factory=dict)
    """The images this node has, by repository (no tag), each with its ENTRYPOINT, the command a container
    without one runs: e.g. {"ghcr.io/x/agentrun-runner": ["python", "-m", "agentrun_runner"]}. Any other image
    leaves its pod waiting in ErrImagePull, as a kubelet without registry access would."""

    base_env: Mapping[str, str] = field(default_factory=_host_base_env)
    """Environment every container starts from before the pod's env (default: PATH, HOME and locale of
    this process), the stand-in for an image's ENV."""

    shared_host_paths: tuple[str, ...] = tuple(dict.fromkeys((sys.prefix, sys.base_prefix)))
    """Host directories every container sees at their own path even where a volume covers them (an
    emptyDir on /tmp over a checkout in /tmp, say): the stand-in for an image's own files. Default: this
    Python's installation; add the source roots a container runs from."""

    pod_cidr: str = ""
    """The pod network's range this node gives its pods IPs from (its Node's spec.podCIDR); each pod's IP is added
    to ``lo`` while its containers may run. Default: a free random /17 inside 10.0.0.0/8."""

    cluster_dns: str = ""
    """The cluster DNS's address, the nameserver of pods with dnsPolicy ClusterFirst (kubelet's --cluster-dns);
    empty: pods use the node's own /etc/resolv.conf."""

    cluster_domain: str = "cluster.local"
    """The cluster's DNS domain (kubelet's --cluster-domain), the end of pods' DNS search path."""

    node_name: str = "agentrun-node"
    """The Node this agent registers; it runs the pods bound to it."""

    container_runtime: str = "process"
    """How containers run: ``process`` (default), each a local process of this checkout's code in a mount namespace
    of its own with its volumes at their mountPaths; ``runc``, each from its image (held by buildah, as
    ``make images`` builds them) under runc, with the pod's securityContext enforced (README.md)."""

    image_aliases: Mapping[str, str] = field(default_factory=dict)
    """The runc runtime's local image for a repository a pod names, when no local image has the pod's exact name:
    e.g. {"ghcr.io/agentrun/agentrun-operator/runner": "localhost/agentrun-runner:dev"}."""

    kill_timeout_seconds: float = 5.0
    """Seconds to wait for a SIGKILLed process to be reaped before giving up on it (default 5)."""
