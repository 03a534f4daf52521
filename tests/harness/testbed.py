"""The ground every integration and end-to-end test stands on: a real control plane, one node, and volumes.

    with KubeTestbed(tmp) as testbed:
        testbed.kubeconfig                 # cluster admin, for test set-up and kubectl
        namespace = testbed.create_namespace("my-test")
        testbed.node.kill_pod_process(namespace, pod)

The control plane is Kubernetes' own (tests.harness.controlplane); the node is the node agent
(tests.harness.nodeagent), which runs pods as local processes with this checkout's code for the project's
images; claims of the default StorageClass get hostPath volumes from the local provisioner. One command
for a person: ``python -m tests.harness.testbed --state-dir DIR`` (``make control-plane``).
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import signal
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import yaml

from agentrun_api import approval
from tests.harness.background import BackgroundLoop
from tests.harness.controlplane import ControlPlane, write_kubeconfig
from tests.harness.controlplane.provisioner import LocalVolumeProvisioner
from tests.harness.lifecycle import StartStop
from tests.harness.nodeagent.settings import InClusterApi, NodeSettings
from tests.harness.nodeagent.threaded import NodeAgentThread
from tests.harness.podnet.addresses import LoopbackAddresses, claim_range, plan_network, release_range
from tests.harness.podnet.network import ClusterNetwork
from tests.harness.podnet.resolver import with_cluster_dns
from tests.harness.source_roots import SOURCE_ROOTS, pythonpath

REPO_ROOT = Path(__file__).resolve().parents[2]
ADMISSION_PLURALS = {
    "ValidatingAdmissionPolicy": "validatingadmissionpolicies",
    "ValidatingAdmissionPolicyBinding": "validatingadmissionpolicybindings",
}
CRD_PATHS = sorted((REPO_ROOT / "crds").glob("*.yaml"))
NODE_NAME = "agentrun-node"
READY_TIMEOUT_SECONDS = 60.0
NODE_SELECTOR_ANNOTATION = "scheduler.alpha.kubernetes.io/node-selector"
UNSCHEDULABLE_SELECTOR = "agentrun.dev/test-node=none"

# The chart's release on the test ground (tests.harness.installed_chart), in a namespace of its own: the child-process
# operators' ServiceAccounts live in agentrun-system (tests.harness.identities).
CHART_RELEASE = "agentrun-operator"
CHART_NAMESPACE = "agentrun-chart"
# What Helm checks before it adopts an object it did not create: the CRDs carry them as a kept CRD of an earlier
# install of the release would, so installing the chart takes them over instead of refusing.
HELM_OWNERSHIP_LABELS = {"app.kubernetes.io/managed-by": "Helm"}
HELM_OWNERSHIP_ANNOTATIONS = {
    "meta.helm.sh/release-name": CHART_RELEASE,
    "meta.helm.sh/release-namespace": CHART_NAMESPACE,
}

# The project's images, as the node has them: each repository's ENTRYPOINT, run from this checkout.
PROJECT_IMAGES = {
    # The release's repositories (the chart's defaults, docs/images.md), then the older and the local names.
    "ghcr.io/agentrun/agentrun-operator/runner": ["python", "-m", "agentrun_runner"],
    "ghcr.io/agentrun/agentrun-operator/operator": ["python", "-m", "agentrun_operator"],
    "ghcr.io/agentrun/agentrun-operator/gateway": ["python", "-m", "agentrun_gateway"],
    "ghcr.io/agentrun/agentrun-runner": ["python", "-m", "agentrun_runner"],
    "agentrun-runner": ["python", "-m", "agentrun_runner"],
    "ghcr.io/agentrun/agentrun-operator": ["python", "-m", "agentrun_operator"],
    "agentrun-operator": ["python", "-m", "agentrun_operator"],
    "ghcr.io/agentrun/agentrun-stream-gateway": ["python", "-m", "agentrun_gateway"],
    "agentrun-stream-gateway": ["python", "-m", "agentrun_gateway"],
}
# What every container gets on top of its pod's env, the stand-in for the images' ENV: the checkout on
# PYTHONPATH, and a 1 s linger of a runner's stream after its outcome (30 s in the image) so tests end soon.
IMAGE_ENV = {
    "PYTHONPATH": pythonpath(),
    "AGENTRUN_RUNNER_SSE_LINGER_SECONDS": "1",
}
# AGENTRUN_TEST_CONTAINER_RUNTIME=runc: the node runs each container from its image under runc (the images
# `make images` built, held by buildah), with its pod's securityContext enforced; default: process (README of the
# node agent). The repositories pods name map to the local images of `make images` (tag AGENTRUN_TEST_IMAGE_TAG).
CONTAINER_RUNTIME_ENV = "AGENTRUN_TEST_CONTAINER_RUNTIME"
LOCAL_IMAGE_TAG = os.environ.get("AGENTRUN_TEST_IMAGE_TAG", "dev")
LOCAL_IMAGES = {
    repository: f"localhost/{local}:{LOCAL_IMAGE_TAG}"
    for repository, local in {
        "ghcr.io/agentrun/agentrun-operator/runner": "agentrun-runner",
        "ghcr.io/agentrun/agentrun-operator/operator": "agentrun-operator",
        "ghcr.io/agentrun/agentrun-operator/gateway": "agentrun-stream-gateway",
        "ghcr.io/agentrun/agentrun-runner": "agentrun-runner",
        "agentrun-runner": "agentrun-runner",
        "ghcr.io/agentrun/agentrun-operator": "agentrun-operator",
        "agentrun-operator": "agentrun-operator",
        "ghcr.io/agentrun/agentrun-stream-gateway": "agentrun-stream-gateway",
        "agentrun-stream-gateway": "agentrun-stream-gateway",
    }.items()
}


def container_runtime() -> str:
    """The node's container runtime this session asks for: process (default) or runc."""
    return os.environ.get(CONTAINER_RUNTIME_ENV, "").strip() or "process"


def node_settings(**fields: Any) -> NodeSettings:
    """The node's settings for the container runtime the environment chooses: with runc the images' own ENV and
    code (only the runner's short stream linger is added), else this checkout's code for the project's images."""
    if container_runtime() == "runc":
        return NodeSettings(
            container_runtime="runc",
            image_aliases=LOCAL_IMAGES,
            base_env={"AGENTRUN_RUNNER_SSE_LINGER_SECONDS": IMAGE_ENV["AGENTRUN_RUNNER_SSE_LINGER_SECONDS"]},
            **fields,
        )
    return NodeSettings(
        base_env={**NodeSettings().base_env, **IMAGE_ENV},
        shared_host_paths=(*NodeSettings().shared_host_paths, *(str(root) for root in SOURCE_ROOTS)),
        image_commands=PROJECT_IMAGES,
        **fields,
    )


def namespace_name(prefix: str) -> str:
    """A fresh DNS-1123 namespace name from any text (a test's name, say)."""
    stem = re.sub(r"[^a-z0-9-]+", "-", prefix.lower()).strip("-")[:40].strip("-") or "test"
    return f"{stem}-{secrets.token_hex(3)}"


class KubeTestbed(StartStop):
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir.resolve()
        self.network_plan = plan_network()
        self.control_plane = ControlPlane(
            self.state_dir / "control-plane", service_cluster_ip_range=self.network_plan.service_cidr
        )
        self._background: BackgroundLoop | None = None
        self._network: ClusterNetwork | None = None
        self._range_claimed = False
        self._provisioner: LocalVolumeProvisioner | None = None
        self._node: NodeAgentThread | None = None

    # -- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> None:
        self.control_plane.start()
        self.install_crds()
        self._background = BackgroundLoop("testbed")
        self._start_network()
        provisioner = LocalVolumeProvisioner(self.kubeconfig, self.state_dir / "volumes")
        self._background.call(provisioner.__aenter__, timeout=30)
        self._provisioner = provisioner
        node_kubeconfig, serving = self.control_plane.issue_node_credentials(NODE_NAME)
        settings = node_settings(
            node_name=NODE_NAME,
            in_cluster_api=InClusterApi("127.0.0.1", self.control_plane.apiserver_port),
            pod_cidr=self.network_plan.pod_cidr,
            cluster_dns=self.network_plan.dns_ip,
        )
        node = NodeAgentThread(
            self._background,
            node_kubeconfig,
            serving,
            self.control_plane.ca_file,
            state_dir=self.state_dir / "node",
            settings=settings,
            kubernetes_version=self.version,
        )
        node.start()
        self._node = node
        self._wait_schedulable()

    def stop(self) -> None:
        if self._background is not None:
            if self._node is not None:
                self._node.stop()
                self._node = None
            if self._provisioner is not None:
                provisioner = self._provisioner
                self._background.call(lambda: provisioner.__aexit__(None, None, None), timeout=30)
                self._provisioner = None
            if self._network is not None:
                network = self._network
                self._background.call(lambda: network.__aexit__(None, None, None), timeout=30)
                self._network = None
            self._background.close()
            self._background = None
        if self._range_claimed:
            release_range(self.network_plan.session_cidr)
            self._range_claimed = False
        self.control_plane.stop()

    # -- what tests use -------------------------------------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        return self.control_plane.admin_kubeconfig

    @property
    def admin(self) -> httpx.Client:
        return self.control_plane.admin

    @property
    def node(self) -> NodeAgentThread:
        if self._node is None:
            raise RuntimeError("the testbed is not started")
        return self._node

    @property
    def network(self) -> ClusterNetwork:
        if self._network is None:
            raise RuntimeError("the testbed is not started")
        return self._network

    def resolve(self, host: str) -> list[str]:
        """``host`` as a pod resolves it: a Service name (``svc.ns.svc``, or with ``.cluster.local``) through the
        cluster DNS, an IP as it is; [] for a name the cluster does not know."""
        if self._background is None:
            raise RuntimeError("the testbed is not started")
        network = self.network
        return self._background.call(lambda: network.resolve(host), timeout=10)

    def with_cluster_dns(
        self, argv: list[str], env: Mapping[str, str], *, namespace: str, directory: Path
    ) -> list[str]:
        """``argv`` as a process that resolves names as a pod of ``namespace`` does (Service names through the
        cluster DNS), in a mount namespace of its own; the machine's /etc/resolv.conf is left alone."""
        return with_cluster_dns(argv, env, dns_ip=self.network_plan.dns_ip, namespace=namespace, directory=directory)

    @property
    def version(self) -> str:
        return str(self.control_plane.version()["gitVersion"])

    def install_crds(self) -> None:
        """The project's CRDs from crds/, applied server-side, then waited on until Established."""
        for path in CRD_PATHS:
            crd = yaml.safe_load(path.read_text())
            name = crd["metadata"]["name"]
            crd["metadata"]["labels"] = {**crd["metadata"].get("labels", {}), **HELM_OWNERSHIP_LABELS}
            crd["metadata"]["annotations"] = {**crd["metadata"].get("annotations", {}), **HELM_OWNERSHIP_ANNOTATIONS}
            answer = self.admin.patch(
                f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}",
                params={"fieldManager": "agentrun-tests", "force": "true"},
                headers={"Content-Type": "application/apply-patch+yaml"},
                content=yaml.safe_dump(crd),
            )
            answer.raise_for_status()
        for path in CRD_PATHS:
            name = yaml.safe_load(path.read_text())["metadata"]["name"]
            self._wait(
                f"CRD {name} Established",
                lambda name=name: _has_condition(  # type: ignore[misc]
                    self.admin.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}").json(),
                    "Established",
                ),
            )

        self.install_approval_policy()

    def install_approval_policy(self) -> None:
        """The admission policy the chart installs with the CRDs: an approval's decidedBy is its creator. Stamped,
        as the CRDs are, with the session release's ownership, so the chart's Helm install adopts it."""
        for obj in approval.admission_policy():
            obj["metadata"]["labels"] = {**obj["metadata"].get("labels", {}), **HELM_OWNERSHIP_LABELS}
            obj["metadata"]["annotations"] = {**obj["metadata"].get("annotations", {}), **HELM_OWNERSHIP_ANNOTATIONS}
            plural = ADMISSION_PLURALS[obj["kind"]]
            answer = self.admin.patch(
                f"/apis/admissionregistration.k8s.io/v1/{plural}/{obj['metadata']['name']}",
                params={"fieldManager": "agentrun-tests", "force": "true"},
                headers={"Content-Type": "application/apply-patch+yaml"},
                content=yaml.safe_dump(obj),
            )
            answer.raise_for_status()

    def create_namespace(self, prefix: str, *, schedulable: bool = True) -> str:
        """A new namespace, returned once its default ServiceAccount exists (pods need it).

        ``schedulable=False``: its pods get a node selector no node matches (the PodNodeSelector admission
        plugin), so the real Job controller creates them but no node runs them; the test plays the kubelet
        by writing their status."""
        name = namespace_name(prefix)
        metadata: dict[str, Any] = {"name": name, "labels": {"agentrun.dev/test": "true"}}
        if not schedulable:
            metadata["annotations"] = {NODE_SELECTOR_ANNOTATION: UNSCHEDULABLE_SELECTOR}
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": metadata}
        self.admin.post("/api/v1/namespaces", json=body).raise_for_status()
        self._wait(
            f"namespace {name}'s default ServiceAccount",
            lambda: self.admin.get(f"/api/v1/namespaces/{name}/serviceaccounts/default").status_code == 200,
        )
        return name

    def delete_namespace(self, name: str) -> None:
        """Delete without waiting: the namespace controller removes its content in the background."""
        answer = self.admin.delete(f"/api/v1/namespaces/{name}")
        if answer.status_code not in (200, 202, 404):
            answer.raise_for_status()

    # -- internals ------------------------------------------------------------------------------------

    def _start_network(self) -> None:
        """The kube-proxy and cluster DNS stand-ins (tests.harness.podnet), with kube-proxy's own identity
        (system:kube-proxy, which the bootstrap RBAC lets read Services and EndpointSlices)."""
        assert self._background is not None
        LoopbackAddresses.reap_abandoned()
        claim_range(self.network_plan.session_cidr)
        self._range_claimed = True
        # The cluster DNS's ClusterIP is reserved by its Service, as a kube-dns Service reserves it.
        dns_service = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}},
            "spec": {
                "clusterIP": self.network_plan.dns_ip,
                "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53}],
            },
        }
        self.admin.post("/api/v1/namespaces/kube-system/services", json=dns_service).raise_for_status()
        client = self.control_plane.ca.issue("kube-proxy", "system:kube-proxy", client=True)
        kubeconfig = write_kubeconfig(
            self.state_dir / "kube-proxy.kubeconfig",
            self.control_plane.url,
            self.control_plane.ca_file,
            user="kube-proxy",
            client=client,
        )
        network = ClusterNetwork(kubeconfig, self.network_plan)
        self._background.call(network.__aenter__, timeout=60)
        self._network = network

    def _wait(self, what: str, ready: Any) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if ready():
                return
            time.sleep(0.1)
        raise TimeoutError(f"the testbed: no {what} within {READY_TIMEOUT_SECONDS:.0f} s")

    def _wait_schedulable(self) -> None:
        """The node lifecycle controller removes the not-ready taint once it sees the node Ready."""

        def schedulable() -> bool:
            node = self.admin.get(f"/api/v1/nodes/{NODE_NAME}").json()
            return _has_condition(node, "Ready") and not (node.get("spec") or {}).get("taints")

        self._wait(f"schedulable node {NODE_NAME}", schedulable)


def _has_condition(obj: dict[str, Any], type_: str) -> bool:
    return any(
        entry.get("type") == type_ and entry.get("status") == "True"
        for entry in (obj.get("status") or {}).get("conditions") or []
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Run the real control plane, a node agent and the local volume provisioner until interrupted."
    )
    parser.add_argument("--state-dir", type=Path, required=True, help="PKI, etcd data, logs, pods and volumes")
    args = parser.parse_args()
    with KubeTestbed(args.state_dir) as testbed:
        print(f"Kubernetes {testbed.version} on {testbed.control_plane.url}", flush=True)
        print(f"export KUBECONFIG={testbed.kubeconfig}", flush=True)
        plan = testbed.network_plan
        print(f"Services {plan.service_cidr}, pods {plan.pod_cidr}, cluster DNS {plan.dns_ip}", flush=True)
        print(f"component logs: {testbed.control_plane.logs_dir}", flush=True)
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        while not stop.wait(1.0):
            pass


if __name__ == "__main__":
    main()
