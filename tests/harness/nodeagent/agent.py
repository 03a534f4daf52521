"""The node agent: a kubelet for one Node of the real control plane, running pods as local processes.

The real Job controller creates pods and the real scheduler binds them to this Node; the agent registers
the Node and renews its Lease, runs every pod bound to it (``PodRuntime``: mount namespaces, volumes, a real
bound ServiceAccount token), writes pod status as the kubelet's status manager does, honours graceful
deletion, and serves ``/containerLogs`` so that ``kubectl logs`` works through the API server. It acts with the
node's own identity (``system:node:<name>``), so the Node authorizer and NodeRestriction hold it to what a
kubelet may do. Test tooling, not the product.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import platform
import signal
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import quote

from tests.harness.controlplane.pki import CertificatePair
from tests.harness.nodeagent.kube import ApiError, JsonObject, KubeClient, namespaced_path
from tests.harness.nodeagent.logserver import ContainerLogServer
from tests.harness.nodeagent.pods import LOCAL_IP, PodRuntime, check_mount_namespaces
from tests.harness.nodeagent.runc import RuncRuntime, check_runc
from tests.harness.nodeagent.settings import NodeSettings
from tests.harness.podnet.addresses import LoopbackAddresses, PodAddresses, plan_network

logger = logging.getLogger(__name__)

LEASE_DURATION_SECONDS = 40
LEASE_RENEW_SECONDS = 10.0
NODE_STATUS_SECONDS = 10.0
# What the scheduler sees: enough for thousands of small pods; the node agent enforces no resources.
CAPACITY = {"cpu": "64", "memory": "256Gi", "pods": "10000", "ephemeral-storage": "500Gi"}


def _micro_time() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _key(obj: JsonObject) -> tuple[str, str]:
    return (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])


def pod_is_terminal(pod: JsonObject) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


class NodeAgent:
    """Registers Node ``node_name`` and runs the pods the scheduler binds to it.

    ``async with NodeAgent(kubeconfig, serving_certificate, ca_file, state_dir=..., settings=...) as node:``
    where the kubeconfig authenticates as ``system:node:<settings.node_name>``.
    """

    def __init__(
        self,
        kubeconfig: Path,
        serving: CertificatePair,
        ca_file: Path,
        *,
        state_dir: Path,
        settings: NodeSettings,
        kubernetes_version: str = "",
    ) -> None:
        self.kubeconfig = kubeconfig
        self.node_name = settings.node_name
        self.state_dir = state_dir
        self.settings = settings
        self._kubernetes_version = kubernetes_version
        self._kube: KubeClient | None = None
        self._runtimes: dict[tuple[str, str], PodRuntime] = {}
        self._final_deletes: set[tuple[str, str]] = set()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._logs = ContainerLogServer(self, serving, ca_file)
        self._boot_id = str(uuid.uuid4())
        self.pod_cidr = settings.pod_cidr or plan_network().pod_cidr
        self._addresses = LoopbackAddresses()
        self._pod_addresses = PodAddresses(self.pod_cidr, self._addresses)
        self.reconcile_errors: list[BaseException] = []
        self._runc: RuncRuntime | None = None

    # -- lifecycle ------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self.settings.container_runtime == "runc":
            await asyncio.to_thread(check_runc)
            self._runc = RuncRuntime(self.state_dir, self.settings.image_aliases)
        elif self.settings.container_runtime == "process":
            await asyncio.to_thread(check_mount_namespaces)
        else:
            raise ValueError(f"container_runtime {self.settings.container_runtime!r}: use process or runc")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._kube = await KubeClient(str(self.kubeconfig)).__aenter__()
        try:
            await self._logs.start()
            await self._register()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        self._tasks = [
            asyncio.create_task(self._renew_lease_forever(), name="node lease"),
            asyncio.create_task(self._post_status_forever(), name="node status"),
            asyncio.create_task(self._watch_pods(), name="watch pods"),
            asyncio.create_task(self._reconcile_forever(), name="reconcile pods"),
        ]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self.settings.kill_timeout_seconds)
        await asyncio.gather(*(runtime.kill_now() for runtime in self._runtimes.values()), return_exceptions=True)
        await asyncio.to_thread(self._addresses.remove_all)
        await self._logs.stop()
        if self._kube is not None:
            await self._kube.__aexit__(None, None, None)
            self._kube = None

    @property
    def kube(self) -> KubeClient:
        if self._kube is None:
            raise RuntimeError("NodeAgent is used outside its `async with` block")
        return self._kube

    def poke(self) -> None:
        self._wake.set()

    # -- the Node and its Lease -----------------------------------------------------------------------

    def _node_status(self) -> JsonObject:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

        def node_condition(type_: str, status: str, reason: str, message: str) -> JsonObject:
            return {
                "type": type_,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            }

        return {
            "capacity": CAPACITY,
            "allocatable": CAPACITY,
            "conditions": [
                node_condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "node agent: no pressure"),
                node_condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "node agent: no pressure"),
                node_condition("PIDPressure", "False", "KubeletHasSufficientPID", "node agent: no pressure"),
                node_condition("Ready", "True", "KubeletReady", "node agent is posting ready status"),
            ],
            "addresses": [{"type": "InternalIP", "address": LOCAL_IP}, {"type": "Hostname", "address": self.node_name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self._logs.port}},
            "nodeInfo": {
                "machineID": self._boot_id.replace("-", ""),
                "systemUUID": self._boot_id,
                "bootID": self._boot_id,
                "kernelVersion": platform.release(),
                "osImage": "agentrun node agent (processes in mount namespaces)",
                "containerRuntimeVersion": "agentrun-node-agent://1",
                "kubeletVersion": self._kubernetes_version,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine()),
            },
        }

    async def _register(self) -> None:
        node: JsonObject = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node_name,
                "labels": {
                    "kubernetes.io/hostname": self.node_name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": self._node_status()["nodeInfo"]["architecture"],
                },
            },
            "spec": {"podCIDR": self.pod_cidr, "podCIDRs": [self.pod_cidr]},
            "status": self._node_status(),
        }
        try:
            created = await self.kube.create("/api/v1/nodes", node)
            self._node_uid = created["metadata"]["uid"]
        except ApiError as error:
            if error.status != 409:
                raise
            # A node agent that comes back (its process restarted) takes its Node over, as a kubelet does.
            existing = await self.kube.get(f"/api/v1/nodes/{self.node_name}")
            assert existing is not None
            self._node_uid = existing["metadata"]["uid"]
            await self._post_status()
        await self._renew_lease()

    async def _post_status(self) -> None:
        await self.kube.merge_patch(f"/api/v1/nodes/{self.node_name}/status", {"status": self._node_status()})

    async def _renew_lease(self) -> None:
        path = namespaced_path("coordination.k8s.io/v1", "leases", "kube-node-lease", self.node_name)
        spec = {
            "holderIdentity": self.node_name,
            "leaseDurationSeconds": LEASE_DURATION_SECONDS,
            "renewTime": _micro_time(),
        }
        if await self.kube.merge_patch(path, {"spec": spec}) is None:
            owner = {"apiVersion": "v1", "kind": "Node", "name": self.node_name, "uid": self._node_uid}
            lease = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.node_name, "namespace": "kube-node-lease", "ownerReferences": [owner]},
                "spec": spec,
            }
            await self.kube.create(namespaced_path("coordination.k8s.io/v1", "leases", "kube-node-lease"), lease)

    async def _every(self, seconds: float, action: str, step: Callable[[], Awaitable[None]]) -> None:
        while not self._closing:
            await asyncio.sleep(seconds)
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                logger.warning("node agent: %s failed: %s", action, error)

    async def _renew_lease_forever(self) -> None:
        await self._every(LEASE_RENEW_SECONDS, "lease renewal", self._renew_lease)

    async def _post_status_forever(self) -> None:
        await self._every(NODE_STATUS_SECONDS, "node status", self._post_status)

    # -- pods -----------------------------------------------------------------------------------------

    @property
    def _pods_path(self) -> str:
        return "/api/v1/pods?fieldSelector=" + quote(f"spec.nodeName={self.node_name}")

    async def _watch_pods(self) -> None:
        while not self._closing:
            try:
                async for _event in self.kube.watch(self._pods_path):
                    self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                logger.debug("node agent: pod watch ended: %s", error)
            self._wake.set()
            await asyncio.sleep(self.settings.resync_interval_seconds)

    async def _reconcile_forever(self) -> None:
        while not self._closing:
            self._wake.clear()
            try:
                await self._sync_pods(await self.kube.list(self._pods_path))
            except asyncio.CancelledError:
                raise
            except Exception as error:
                logger.exception("node agent: pod sync failed")
                self.reconcile_errors.append(error)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.resync_interval_seconds)

    def _start_pod(self, pod: JsonObject) -> None:
        runtime = PodRuntime(
            kube=self.kube,
            pod=pod,
            state_dir=self.state_dir,
            settings=self.settings,
            notify=self.poke,
            pod_addresses=self._pod_addresses,
            runc=self._runc,
        )
        self._runtimes[_key(pod)] = runtime
        runtime.start()

    async def _sync_pods(self, pods: list[JsonObject]) -> None:
        present = set()
        for pod in pods:
            key = _key(pod)
            present.add(key)
            metadata = pod["metadata"]
            runtime = self._runtimes.get(key)
            if runtime is not None and metadata.get("uid") != runtime.pod["metadata"].get("uid"):
                if runtime.finished.is_set():
                    runtime = None  # a new pod under an old name: run it too
                else:
                    runtime.terminate(0, "Deleted")
                    continue
            if runtime is None:
                if not pod_is_terminal(pod) and not metadata.get("deletionTimestamp"):
                    self._start_pod(pod)
                elif metadata.get("deletionTimestamp") and key not in self._final_deletes:
                    await self._final_delete(pod)  # never started here, or started by an earlier agent
                continue
            if metadata.get("deletionTimestamp"):
                if not runtime.finished.is_set():
                    grace = metadata.get("deletionGracePeriodSeconds")
                    runtime.terminate(float(grace) if grace is not None else runtime.default_grace_seconds(), "Deleted")
                elif key not in self._final_deletes:
                    await self._final_delete(pod)
        for key, runtime in self._runtimes.items():
            if key not in present and not runtime.finished.is_set() and not runtime.stopping:
                runtime.terminate(0, "Deleted")  # the pod object is gone: nothing to report to

    async def _final_delete(self, pod: JsonObject) -> None:
        """The kubelet's last word on a deleted pod whose containers are gone: delete it with grace 0 and a uid
        precondition (so a new pod of the same name is never the one removed). Finalizers stay: the Job
        controller removes its own tracking finalizer once it has counted the pod."""
        key = _key(pod)
        self._final_deletes.add(key)
        body = {"gracePeriodSeconds": 0, "preconditions": {"uid": pod["metadata"]["uid"]}}
        try:
            await self.kube.request("DELETE", namespaced_path("v1", "pods", *key), body=body)
        except ApiError as error:
            if error.status not in (404, 409):
                self._final_deletes.discard(key)
                raise

    # -- inspection and chaos, for tests --------------------------------------------------------------

    def runtime(self, namespace: str, pod: str) -> PodRuntime:
        try:
            return self._runtimes[namespace, pod]
        except KeyError:
            raise LookupError(f"node {self.node_name} runs no pod {namespace}/{pod}") from None

    def pod_keys(self) -> list[tuple[str, str]]:
        return list(self._runtimes)

    def runtimes_of(self, namespace: str, label: str, value: str) -> list[PodRuntime]:
        """The pods this node ran whose label ``label`` is ``value`` (e.g. a Job's pods), oldest first."""
        return [
            runtime
            for (pod_namespace, _), runtime in self._runtimes.items()
            if pod_namespace == namespace and (runtime.pod["metadata"].get("labels") or {}).get(label) == value
        ]

    def kill_pod_process(self, namespace: str, pod: str, sig: signal.Signals = signal.SIGKILL) -> None:
        """Signal a pod's container as a crash or the OOM killer would (SIGKILL: exit 137)."""
        self.runtime(namespace, pod).send_signal(sig)

    def read_log(self, namespace: str, pod: str, container: str | None = None) -> str:
        """A container's output so far (stdout and stderr), like `kubectl logs`."""
        runtime = self.runtime(namespace, pod)
        name = container or runtime.pod["spec"]["containers"][0]["name"]
        path = runtime.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""
