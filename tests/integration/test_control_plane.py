"""The ground itself: a real control plane that enforces RBAC, schedules onto the node agent, and goes away."""

import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.harness.controlplane import ControlPlane

pytestmark = pytest.mark.integration


def test_the_session_control_plane_is_the_pinned_release_and_enforces_rbac(testbed) -> None:
    version = testbed.control_plane.version()
    assert version["gitVersion"] == testbed.control_plane.binaries.kube_apiserver.parent.name  # .tools/kube/<version>/
    trust = ssl.create_default_context(cafile=str(testbed.control_plane.ca_file))
    anonymous = httpx.get(f"{testbed.control_plane.url}/api/v1/secrets", verify=trust)
    assert anonymous.status_code == 403  # authenticated as system:anonymous, refused by RBAC


def test_the_node_is_ready_untainted_and_leased(testbed) -> None:
    node = testbed.admin.get("/api/v1/nodes/agentrun-node").json()
    ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    assert not node["spec"].get("taints")
    lease = testbed.admin.get("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/agentrun-node").json()
    assert lease["spec"]["holderIdentity"] == "agentrun-node"


def test_a_control_plane_of_its_own_starts_and_leaves_no_process_behind(tmp_path: Path) -> None:
    with ControlPlane(tmp_path / "own") as control_plane:
        assert control_plane.admin.get("/readyz").text == "ok"
        pids = [component.process.pid for component in control_plane.components if component.process]
        assert len(pids) == 4  # etcd, kube-apiserver, kube-controller-manager, kube-scheduler
    alive = subprocess.run(["ps", "-o", "pid=", "-p", ",".join(map(str, pids))], capture_output=True, text=True)
    assert alive.stdout.strip() == "", alive.stdout


def test_kubectl_talks_to_it_with_the_admin_kubeconfig(testbed) -> None:
    kubectl = Path(sys.executable).parent / "kubectl"
    done = subprocess.run(
        [str(kubectl), "--kubeconfig", str(testbed.kubeconfig), "get", "crd", "agentruns.agentrun.dev", "-o", "name"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "customresourcedefinition.apiextensions.k8s.io/agentruns.agentrun.dev"
