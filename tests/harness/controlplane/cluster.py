"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager and kube-scheduler.

Started the way controller-runtime's envtest and hack/local-up-cluster.sh start them, with what a
controller-manager makes possible on top (ServiceAccounts and their tokens, the root CA ConfigMap, Jobs,
garbage collection). Every process listens on 127.0.0.1 only, dies with the process that started it
(PR_SET_PDEATHSIG), and is stopped by ``stop()``. Nodes are not part of it: the node agent
(tests.harness.nodeagent) registers one.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.harness.controlplane.binaries import KubeBinaries, find_binaries
from tests.harness.controlplane.pki import CertificateAuthority, CertificatePair, write_service_account_keys
from tests.harness.lifecycle import StartStop

LOOPBACK = "127.0.0.1"
# The default Service range; the testbed gives each session a random one, which its pod network routes
# (tests.harness.podnet).
SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
START_TIMEOUT_SECONDS = 90.0
STOP_GRACE_SECONDS = 10.0

# The controllers a kubelet-less cluster of Jobs needs (names from
# cmd/kube-controller-manager/names/controller_names.go). The Endpoints controller is left out: Endpoints
# validation refuses loopback addresses, and EndpointSlices carry the same facts.
CONTROLLERS = (
    "job-controller",
    # The chart's operator and stream gateway are Deployments.
    "deployment-controller",
    "replicaset-controller",
    "garbage-collector-controller",
    "ttl-after-finished-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "node-lifecycle-controller",
    "taint-eviction-controller",
    "pod-garbage-collector-controller",
    "endpointslice-controller",
    "persistentvolume-binder-controller",
)

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child between fork and exec: SIGKILL it when the test process goes, however it goes."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


class ControlPlaneError(RuntimeError):
    """A component did not start; the message carries the end of its log."""


def write_kubeconfig(
    path: Path,
    server: str,
    ca_file: Path,
    *,
    user: str,
    client: CertificatePair | None = None,
    token: str | None = None,
    namespace: str | None = None,
) -> Path:
    """A kubeconfig with one cluster, one user (a client certificate or a bearer token) and one context."""
    credentials: dict[str, str] = {}
    if client is not None:
        credentials = {"client-certificate": str(client.cert), "client-key": str(client.key)}
    if token is not None:
        credentials["token"] = token
    context: dict[str, str] = {"cluster": "agentrun-test", "user": user}
    if namespace:
        context["namespace"] = namespace
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "agentrun-test", "cluster": {"server": server, "certificate-authority": str(ca_file)}}],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": "agentrun-test", "context": context}],
        "current-context": "agentrun-test",
    }
    path.write_text(yaml.safe_dump(document))
    path.chmod(0o600)
    return path


class Component:
    """One control-plane process and its log file."""

    def __init__(self, name: str, argv: Sequence[str], log: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, characters: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-characters:]
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


class ControlPlane(StartStop):
    """etcd, kube-apiserver, kube-controller-manager and kube-scheduler with a fresh PKI in ``state_dir``.

    ``with ControlPlane(tmp) as cp:`` gives ``cp.url``, ``cp.ca_file``, ``cp.admin_kubeconfig`` and
    ``cp.admin`` (an httpx client authenticated as system:masters); ``cp.issue_node_credentials(name)`` makes the
    client and serving certificates a node agent needs.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        binaries: KubeBinaries | None = None,
        service_cluster_ip_range: str = SERVICE_CLUSTER_IP_RANGE,
    ) -> None:
        self.state_dir = state_dir.resolve()
        self.service_cluster_ip_range = service_cluster_ip_range
        self.binaries = binaries or find_binaries()
        self.pki_dir = self.state_dir / "pki"
        self.logs_dir = self.state_dir / "logs"
        self.components: list[Component] = []
        self._admin: httpx.Client | None = None
        self.etcd_port = free_port()
        self.apiserver_port = free_port()
        self.url = f"https://{LOOPBACK}:{self.apiserver_port}"

    # -- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> None:
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self._make_pki()
        self._start_etcd()
        self._start_apiserver()
        self._start_controller_manager()
        self._start_scheduler()

    def stop(self) -> None:
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        for component in reversed(self.components):
            component.stop()
        self.components.clear()

    # -- PKI and kubeconfigs --------------------------------------------------------------------------

    def _make_pki(self) -> None:
        self.ca = CertificateAuthority(self.pki_dir)
        self.ca_file = self.ca.cert
        self.apiserver_serving = self.ca.issue(
            "apiserver",
            "kube-apiserver",
            dns_names=(
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
            ip_addresses=(LOOPBACK, str(ipaddress.IPv4Network(self.service_cluster_ip_range)[1])),
            server=True,
        )
        self.kubelet_client = self.ca.issue(
            "apiserver-kubelet-client", "kube-apiserver-kubelet-client", organizations=("system:masters",), client=True
        )
        self.service_account_keys = write_service_account_keys(self.pki_dir)
        admin = self.ca.issue("admin", "agentrun-test-admin", organizations=("system:masters",), client=True)
        self.admin_credentials = admin
        self.admin_kubeconfig = self._kubeconfig("admin", admin)
        self._controller_manager_kubeconfig = self._kubeconfig(
            "controller-manager", self.ca.issue("controller-manager", "system:kube-controller-manager", client=True)
        )
        self._scheduler_kubeconfig = self._kubeconfig(
            "scheduler", self.ca.issue("scheduler", "system:kube-scheduler", client=True)
        )

    def _kubeconfig(self, user: str, client: CertificatePair) -> Path:
        return write_kubeconfig(self.state_dir / f"{user}.kubeconfig", self.url, self.ca_file, user=user, client=client)

    def issue_node_credentials(
        self, node_name: str, *, addresses: tuple[str, ...] = (LOOPBACK,)
    ) -> tuple[Path, CertificatePair]:
        """A node's kubeconfig (system:node:<name> in system:nodes, as the Node authorizer expects) and the
        serving certificate of its kubelet endpoint (logs) at ``addresses``, which the API server checks against
        the CA."""
        client = self.ca.issue(
            f"node-{node_name}", f"system:node:{node_name}", organizations=("system:nodes",), client=True
        )
        serving = self.ca.issue(f"node-{node_name}-serving", node_name, ip_addresses=addresses, server=True)
        return self._kubeconfig(f"node-{node_name}", client), serving

    def admin_kubeconfig_for(self, path: Path, namespace: str) -> Path:
        """A cluster admin's kubeconfig whose context names ``namespace``, as kubectl users keep one per team."""
        return write_kubeconfig(
            path, self.url, self.ca_file, user="admin", client=self.admin_credentials, namespace=namespace
        )

    def kubeconfig_for_token(self, path: Path, token: str, *, user: str, namespace: str | None = None) -> Path:
        return write_kubeconfig(path, self.url, self.ca_file, user=user, token=token, namespace=namespace)

    @property
    def admin(self) -> httpx.Client:
        """An HTTP client on the API server authenticated as a cluster admin (system:masters)."""
        if self._admin is None:
            context = ssl.create_default_context(cafile=str(self.ca_file))
            context.load_cert_chain(str(self.admin_credentials.cert), str(self.admin_credentials.key))
            self._admin = httpx.Client(base_url=self.url, verify=context, timeout=30.0)
        return self._admin

    # -- components -----------------------------------------------------------------------------------

    def _launch(self, name: str, argv: Sequence[str]) -> Component:
        component = Component(name, argv, self.logs_dir / f"{name}.log")
        component.start()
        self.components.append(component)
        return component

    def _wait(self, component: Component, what: str, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if not component.running:
                raise ControlPlaneError(f"{component.name} exited before {what}:\n{component.log_tail()}")
            with contextlib.suppress(httpx.HTTPError, OSError):
                if ready():
                    return
            time.sleep(0.2)
        raise ControlPlaneError(
            f"{component.name}: no {what} within {START_TIMEOUT_SECONDS:.0f} s:\n{component.log_tail()}"
        )

    def _start_etcd(self) -> None:
        client_url = f"http://{LOOPBACK}:{self.etcd_port}"
        peer_url = f"http://{LOOPBACK}:{free_port()}"
        etcd = self._launch(
            "etcd",
            [
                str(self.binaries.etcd),
                f"--data-dir={self.state_dir / 'etcd'}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=default={peer_url}",
                # Test data only: a lost write on a host crash does not matter, the fsync latency would.
                "--unsafe-no-fsync=true",
                "--quota-backend-bytes=8589934592",
                "--log-level=warn",
            ],
        )
        self._wait(etcd, "health", lambda: httpx.get(f"{client_url}/health", timeout=2).json()["health"] == "true")

    def _start_apiserver(self) -> None:
        pki = self.pki_dir
        apiserver = self._launch(
            "kube-apiserver",
            [
                str(self.binaries.kube_apiserver),
                f"--etcd-servers=http://{LOOPBACK}:{self.etcd_port}",
                f"--bind-address={LOOPBACK}",
                f"--advertise-address={LOOPBACK}",
                f"--secure-port={self.apiserver_port}",
                f"--tls-cert-file={self.apiserver_serving.cert}",
                f"--tls-private-key-file={self.apiserver_serving.key}",
                f"--client-ca-file={self.ca_file}",
                f"--service-cluster-ip-range={self.service_cluster_ip_range}",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={self.service_account_keys.cert}",
                f"--service-account-signing-key-file={self.service_account_keys.key}",
                "--authorization-mode=Node,RBAC",
                # PodNodeSelector: a namespace's annotation can keep its pods off every node (tests that play the
                # kubelet themselves use it).
                "--enable-admission-plugins=NodeRestriction,PodNodeSelector",
                f"--kubelet-client-certificate={self.kubelet_client.cert}",
                f"--kubelet-client-key={self.kubelet_client.key}",
                f"--kubelet-certificate-authority={pki / 'ca.crt'}",
                "--kubelet-preferred-address-types=InternalIP",
                # Endpoints validation refuses a loopback address for the kubernetes Service.
                "--endpoint-reconciler-type=none",
                "--allow-privileged=true",
                "--profiling=false",
            ],
        )
        self._wait(apiserver, "/readyz", lambda: self.admin.get("/readyz").status_code == 200)

    def _controller_flags(self, kubeconfig: Path) -> list[str]:
        return [
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--leader-elect=false",
            # Client-side rate limits sized for a test that makes thousands of Jobs, not a 20 QPS trickle.
            "--kube-api-qps=200",
            "--kube-api-burst=400",
        ]

    def _start_controller_manager(self) -> None:
        controller_manager = self._launch(
            "kube-controller-manager",
            [
                str(self.binaries.kube_controller_manager),
                *self._controller_flags(self._controller_manager_kubeconfig),
                # No serving endpoint: readiness is the default ServiceAccount (below).
                "--secure-port=0",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={self.service_account_keys.key}",
                f"--root-ca-file={self.ca_file}",
                f"--controllers={','.join(CONTROLLERS)}",
                f"--service-cluster-ip-range={self.service_cluster_ip_range}",
                "--concurrent-job-syncs=20",
            ],
        )
        # The serviceaccount controller's first work: a namespace without its default ServiceAccount cannot
        # run pods, so this is the moment the control plane can take a test's Jobs.
        self._wait(
            controller_manager,
            "default ServiceAccount",
            lambda: self.admin.get("/api/v1/namespaces/default/serviceaccounts/default").status_code == 200,
        )

    def _start_scheduler(self) -> None:
        port = free_port()
        serving = self.ca.issue("scheduler-serving", "kube-scheduler", ip_addresses=(LOOPBACK,), server=True)
        scheduler = self._launch(
            "kube-scheduler",
            [
                str(self.binaries.kube_scheduler),
                *self._controller_flags(self._scheduler_kubeconfig),
                f"--bind-address={LOOPBACK}",
                f"--secure-port={port}",
                f"--tls-cert-file={serving.cert}",
                f"--tls-private-key-file={serving.key}",
            ],
        )
        # /readyz is open to anonymous clients (--authorization-always-allow-paths), and turns 200 once the
        # scheduler's informers have synced.
        probe = httpx.Client(verify=ssl.create_default_context(cafile=str(self.ca_file)), timeout=2)
        try:
            self._wait(scheduler, "/readyz", lambda: probe.get(f"https://{LOOPBACK}:{port}/readyz").status_code == 200)
        finally:
            probe.close()

    # -- convenience ----------------------------------------------------------------------------------

    def version(self) -> dict[str, Any]:
        version: dict[str, Any] = self.admin.get("/version").json()
        return version
