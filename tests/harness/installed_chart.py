"""The chart as a user installs it: a real Helm release on the test control plane.

    release = ChartRelease(testbed)
    release.install(ground_values())      # helm install --wait, CRDs included
    release.upgrade({...})                     # helm upgrade --wait to changed values
    release.uninstall()                        # helm uninstall (the CRDs stay: crds.keep)
    await release.wait_for_leader()            # the operator pod holding the leader election Lease

Helm's own Go code (Helm v4, through `helm-python-sdk`'s libhelm_c) installs, upgrades and uninstalls, and keeps
the release record where Helm keeps it by default: Secrets ``sh.helm.release.v1.<release>.v<revision>`` in the
release namespace. The operator and the stream gateway then run as pods of the chart's own Deployments on the
node agent, with the projected tokens of the chart's ServiceAccounts and nothing but the chart's RBAC.

The testbed applies the project's CRDs at start with this release's ownership labels, as a kept CRD of an
earlier install of the release looks; Helm then adopts them on install, as it would in a cluster.
"""

from __future__ import annotations

import asyncio
import copy
import time
from typing import Any

import helm_python

from tests.harness.chart import CHART_DIR
from tests.harness.testbed import CHART_NAMESPACE, CHART_RELEASE, KubeTestbed

HELM_TIMEOUT_SECONDS = 120
CHART_HEALTH_PORT = 8081  # the chart's operator.healthPort


def ground_values(**overrides: Any) -> dict[str, Any]:
    """The values the test ground installs with: the chart's defaults but for what the tests need.

    The images are the chart's defaults (``agentrun-operator``, ``agentrun-runner``, ``agentrun-stream-gateway``),
    which the node agent maps to this checkout. The policy admits the scripted model server on 127.0.0.1; the
    status and progress intervals are short so that tests see a run's steps in seconds."""
    values: dict[str, Any] = {
        "policy": {"allowedModelHosts": ["127.0.0.1"]},
        "operator": {"statusMinIntervalSeconds": 0.2, "progressIntervalSeconds": 0.5, "logFormat": "text"},
    }
    return merged_values(values, overrides)


def merged_values(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` over ``base``, mappings merged key by key, as Helm merges a second values file."""
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merged_values(merged[key], value)
        else:
            merged[key] = value
    return merged


class ChartRelease:
    """The chart's release ``CHART_RELEASE`` in ``CHART_NAMESPACE``, driven through Helm's engine."""

    def __init__(self, testbed: KubeTestbed, name: str = CHART_RELEASE, namespace: str = CHART_NAMESPACE) -> None:
        self.testbed = testbed
        self.name = name
        self.namespace = namespace

    def _config(self) -> helm_python.Config:
        return helm_python.Config(kubeconfig_path=self.testbed.kubeconfig, namespace=self.namespace)

    # Each call blocks until Helm is done (``asyncio.to_thread`` from a test's event loop).

    def install(self, values: dict[str, Any]) -> dict[str, Any]:
        """``helm install --create-namespace --wait``: returns once every Deployment of the release is ready."""
        with self._config() as helm:
            return helm.install(
                str(CHART_DIR), self.name, values, create_namespace=True, wait="watcher", timeout=HELM_TIMEOUT_SECONDS
            )

    def upgrade(self, values: dict[str, Any]) -> dict[str, Any]:
        """``helm upgrade --wait`` to exactly these values (not reusing the previous ones)."""
        with self._config() as helm:
            return helm.upgrade(
                str(CHART_DIR), self.name, values, reset_values=True, wait="watcher", timeout=HELM_TIMEOUT_SECONDS
            )

    def uninstall(self) -> dict[str, Any]:
        """``helm uninstall --wait``: the release's objects are deleted, but those the chart tells Helm to keep."""
        with self._config() as helm:
            return helm.uninstall(self.name, wait="watcher", timeout=HELM_TIMEOUT_SECONDS)

    def history(self) -> list[dict[str, Any]]:
        """The release's revisions, oldest first (Helm's release record)."""
        with self._config() as helm:
            return helm.history(self.name)

    def installed(self) -> bool:
        with self._config() as helm:
            return any(release["name"] == self.name for release in helm.list())

    # -- what runs on the node --------------------------------------------------------------------------

    def pods(self, component: str = "operator") -> list[dict[str, Any]]:
        """The release's pods of one component (operator, stream-gateway), not yet being deleted, oldest first."""
        selector = f"app.kubernetes.io/instance={self.name},app.kubernetes.io/component={component}"
        answer = self.testbed.admin.get(f"/api/v1/namespaces/{self.namespace}/pods", params={"labelSelector": selector})
        answer.raise_for_status()
        pods = [p for p in answer.json()["items"] if not p["metadata"].get("deletionTimestamp")]
        return sorted(pods, key=lambda p: str(p["metadata"]["creationTimestamp"]))

    def lease_holder(self) -> str:
        """The operator replica holding the leader election Lease (a pod name), or "" while none does."""
        answer = self.testbed.admin.get(f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases/{self.name}")
        if answer.status_code == 404:
            return ""
        answer.raise_for_status()
        return str((answer.json().get("spec") or {}).get("holderIdentity") or "")

    def pod_logs(self) -> dict[str, str]:
        """The output of every pod the release ran on the node, deleted ones included, by pod name."""
        logs_dir = self.testbed.state_dir / "node" / "logs" / self.namespace
        return {
            path.parent.name: path.read_text(errors="replace") for path in sorted(logs_dir.glob(f"{self.name}-*/*.log"))
        }

    def operator_log(self) -> str:
        """The tail of every pod's output, for an assertion message."""
        return "\n".join(f"--- {pod}\n{log[-4000:]}" for pod, log in self.pod_logs().items())

    def rbac_refusals(self) -> list[str]:
        """The lines of the release's pods' output where the RBAC authorizer refused one of the chart's
        ServiceAccounts a request: a permission the chart lacks."""
        account = f"system:serviceaccount:{self.namespace}:"
        return [
            f"{pod}: {line}"
            for pod, log in self.pod_logs().items()
            for line in log.splitlines()
            if account in line and " cannot " in line
        ]

    async def wait_for_leader(self, *, other_than: str = "", timeout: float = 60.0) -> str:
        """Until a running operator pod (not ``other_than``) holds the Lease; its name."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            holder = self.lease_holder()
            running = {p["metadata"]["name"] for p in self.pods() if p["status"].get("phase") == "Running"}
            if holder and holder != other_than and holder in running:
                return holder
            await asyncio.sleep(0.05)
        raise AssertionError(
            f"no operator pod took the Lease {self.namespace}/{self.name} within {timeout:.0f} s "
            f"(holder: {self.lease_holder()!r}):\n{self.operator_log()}"
        )


class ChartOperator:
    """A LocalCluster's operator as the chart installs it: a release of its own in the cluster's namespace, watching
    only that namespace (``watchNamespace``, so the chart grants a Role there), its pod on the node. It offers what
    tests use of ``local_cluster.OperatorProcess``: start, stop, kill, restart, log, and the Services' addresses.

    The release's CRDs are off (``crds.enabled: false``): the session's release owns them."""

    def __init__(self, testbed: KubeTestbed, namespace: str, values: dict[str, Any]) -> None:
        # Each test's release has a name of its own: the chart's ClusterRoles are named after it.
        self.release = ChartRelease(testbed, name=f"{CHART_RELEASE}-{namespace[-6:]}", namespace=namespace)
        self.values = merged_values(values, {"watchNamespace": namespace, "crds": {"enabled": False}})
        self.starts = 0
        self._kills = 0

    @property
    def leader_pod(self) -> str:
        return self.release.lease_holder()

    async def start(self) -> None:
        """Install the release (or, after ``stop``, scale it up again) and wait until its pod leads."""
        if await asyncio.to_thread(self.release.installed):
            await asyncio.to_thread(self.release.upgrade, merged_values(self.values, {"replicaCount": 1}))
        else:
            await asyncio.to_thread(self.release.install, self.values)
        await self.release.wait_for_leader()
        self.starts += 1

    async def stop(self) -> None:
        """``helm uninstall``: the operator pod gets SIGTERM and the release's objects go."""
        if await asyncio.to_thread(self.release.installed):
            await asyncio.to_thread(self.release.uninstall)

    async def kill(self) -> None:
        """SIGKILL the leading operator's process: the node restarts the container in place (restartPolicy Always)."""
        holder = self.leader_pod
        if holder:
            self._kills += 1
            self.release.testbed.node.kill_pod_process(self.release.namespace, holder)

    def running(self) -> bool:
        """The leader's pod runs, and no operator container restarted but those a test killed."""
        pods = self.release.pods()
        leading = [p for p in pods if p["metadata"]["name"] == self.leader_pod]
        restarts = sum(_restart_count(pod) for pod in pods)
        return bool(leading) and leading[0]["status"].get("phase") == "Running" and restarts <= self._kills

    @property
    def health_url(self) -> str:
        """The leader pod's liveness endpoint, where the kubelet's probe goes."""
        pod = next(p for p in self.release.pods() if p["metadata"]["name"] == self.leader_pod)
        return f"http://{pod['status']['podIP']}:{CHART_HEALTH_PORT}/healthz"

    async def restart(self, *, crash: bool = False) -> None:
        """``crash``: SIGKILL the process, which the node restarts in the same pod; else delete the pod, which the
        Deployment replaces. Returns once an operator holds the Lease again, after its start."""
        holder = self.leader_pod
        assert holder, "no operator pod leads"
        pod = self.release.testbed.admin.get(f"/api/v1/namespaces/{self.release.namespace}/pods/{holder}").json()
        restarts = _restart_count(pod)
        if crash:
            await self.kill()
            await self._wait_restarted(holder, restarts)
            await self.release.wait_for_leader()
        else:
            answer = self.release.testbed.admin.delete(f"/api/v1/namespaces/{self.release.namespace}/pods/{holder}")
            answer.raise_for_status()
            await self.release.wait_for_leader(other_than=holder)
        self.starts += 1

    async def _wait_restarted(self, pod: str, restarts: int) -> None:
        deadline = time.monotonic() + 60
        path = f"/api/v1/namespaces/{self.release.namespace}/pods/{pod}"
        while time.monotonic() < deadline:
            current = self.release.testbed.admin.get(path).json()
            if _restart_count(current) > restarts and current["status"].get("phase") == "Running":
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"operator pod {pod} was not restarted within 60 s:\n{self.log()}")

    def log(self) -> str:
        return "\n".join(self.release.pod_logs().values())

    def service_url(self, suffix: str, port: int) -> str:
        """The address of one of the release's Services (its ClusterIP, which the pod network routes)."""
        path = f"/api/v1/namespaces/{self.release.namespace}/services/{self.release.name}-{suffix}"
        answer = self.release.testbed.admin.get(path)
        answer.raise_for_status()
        return f"http://{answer.json()['spec']['clusterIP']}:{port}"

    @property
    def metrics_url(self) -> str:
        return f"{self.service_url('metrics', 8000)}/metrics"

    @property
    def permit_server_url(self) -> str:
        return self.service_url("permits", 8090)


def _restart_count(pod: dict[str, Any]) -> int:
    return sum(
        int(status.get("restartCount", 0)) for status in (pod.get("status") or {}).get("containerStatuses") or []
    )
