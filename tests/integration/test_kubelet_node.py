"""A real kubelet with containerd runs the project's images on the real control plane (``make e2e-kubelet``).

The node agent's runc runtime enforces a pod's securityContext the way the kubelet does (its refusals carry the
kubelet's messages; ``tests/e2e/test_real_images.py`` holds it to them). Here the kubelet itself, built from
k8s.io/kubernetes at the control plane's version, runs the same pods through containerd's CRI: the runner image
under the operator's restricted securityContext, and the two refusals those tests expect from the emulation.

Needs the kubelet (``make kubelet``: built from the pinned module, and Debian's containerd and CNI plugins), root,
buildah and the images ``make images`` builds; the module skips, saying which is missing, otherwise.
"""

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentrun_operator.children import _restricted_container_security
from tests.harness.controlplane import BinariesMissingError
from tests.harness.kubelet_node import KubeletNode, find_node_binaries
from tests.harness.nodeagent.runc import local_image_names
from tests.harness.testbed import LOCAL_IMAGES, KubeTestbed

pytestmark = pytest.mark.integration

RUNNER_IMAGE = LOCAL_IMAGES["ghcr.io/agentrun/agentrun-operator/runner"]
BASE_REPOSITORY = "localhost/agentrun-base/python"


def _why_not() -> str:
    if os.environ.get("AGENTRUN_TEST_KUBELET") != "1":
        return "runs with a real kubelet only: AGENTRUN_TEST_KUBELET=1 (make e2e-kubelet)"
    if os.geteuid() != 0 or shutil.which("buildah") is None:
        return "a kubelet node needs root and buildah (make image-tools)"
    try:
        find_node_binaries()
    except BinariesMissingError as error:
        return str(error)
    images = local_image_names()
    if RUNNER_IMAGE not in images or not any(name.startswith(f"{BASE_REPOSITORY}:") for name in images):
        return f"no {RUNNER_IMAGE} or {BASE_REPOSITORY} image: build them with `make images`"
    return ""


if reason := _why_not():
    print(f"test_kubelet_node skipped: {reason}")
    pytest.skip(reason, allow_module_level=True)

BASE_IMAGE = sorted(name for name in local_image_names() if name.startswith(f"{BASE_REPOSITORY}:"))[-1]


def network_namespaces() -> set[str]:
    """The named network namespaces (`ip netns`), where containerd's CNI keeps each pod sandbox's."""
    folder = Path("/var/run/netns")
    return set(os.listdir(folder)) if folder.is_dir() else set()


@pytest.fixture(scope="module")
def node(testbed: KubeTestbed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeletNode]:
    namespaces_before = network_namespaces()
    started = time.monotonic()
    with KubeletNode(testbed.control_plane, tmp_path_factory.mktemp("kubelet-node")) as kubelet_node:
        print(f"\nkubelet node Ready in {time.monotonic() - started:.1f} s")
        for image in (RUNNER_IMAGE, BASE_IMAGE):
            kubelet_node.load_image(image)
        yield kubelet_node
    # Nothing outlives the node: no shim or container process, no bridge, no mount under its folder.
    shims = subprocess.run(["pgrep", "-f", f"containerd-shim.*{kubelet_node.socket}"], capture_output=True, text=True)
    assert shims.stdout == "", shims.stdout
    assert subprocess.run(["ip", "link", "show", kubelet_node.bridge], capture_output=True).returncode != 0
    assert str(kubelet_node.state_dir) not in Path("/proc/mounts").read_text()
    # The pods' network went with them (the kubelet stopped their sandboxes: CNI DEL), none left to the host.
    assert network_namespaces() <= namespaces_before, network_namespaces()


def create_pod(testbed: KubeTestbed, namespace: str, node: KubeletNode, name: str, container: dict[str, Any]) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeName": node.name,
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "containers": [{"name": "main", "imagePullPolicy": "Never", **container}],
        },
    }
    answer = testbed.control_plane.admin.post(f"/api/v1/namespaces/{namespace}/pods", json=pod)
    assert answer.status_code == 201, answer.text


def wait_for_container_state(
    testbed: KubeTestbed, namespace: str, name: str, node: KubeletNode, *, reason: str = "", timeout: float = 90
) -> dict[str, Any]:
    """The container's state once it has terminated (or waits with ``reason``)."""
    deadline = time.monotonic() + timeout
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        pod = testbed.control_plane.admin.get(f"/api/v1/namespaces/{namespace}/pods/{name}").json()
        statuses = pod.get("status", {}).get("containerStatuses") or [{}]
        state = statuses[0].get("state") or {}
        if "terminated" in state or (reason and state.get("waiting", {}).get("reason") == reason):
            return state
        time.sleep(0.5)
    raise AssertionError(f"pod {name}: {state or 'no container status'} after {timeout:.0f} s\n{node.log('kubelet')}")


def pod_log(testbed: KubeTestbed, namespace: str, name: str) -> str:
    answer = testbed.control_plane.admin.get(f"/api/v1/namespaces/{namespace}/pods/{name}/log")
    assert answer.status_code == 200, answer.text
    return answer.text


SCRIPT = """
import os
try:
    open("/written", "w")
    written = "written"
except OSError as error:
    written = error.strerror
capabilities = next(line.split()[1] for line in open("/proc/self/status") if line.startswith("CapEff"))
print(f"uid {os.getuid()} gid {os.getgid()} root {written} CapEff {capabilities}")
"""


def test_the_runner_image_runs_under_the_operators_restricted_security_context(
    testbed: KubeTestbed, namespace: str, node: KubeletNode
) -> None:
    security = _restricted_container_security()
    created = time.monotonic()
    create_pod(
        testbed,
        namespace,
        node,
        "restricted",
        {"image": RUNNER_IMAGE, "command": ["python", "-c", SCRIPT], "securityContext": security},
    )
    state = wait_for_container_state(testbed, namespace, "restricted", node)
    print(f"\nrestricted runner pod: created -> terminated {time.monotonic() - created:.1f} s")
    assert state["terminated"]["exitCode"] == 0, state
    assert state["terminated"]["containerID"].startswith("containerd://")
    taints = testbed.control_plane.admin.get(f"/api/v1/nodes/{node.name}").json()["spec"].get("taints")
    assert taints == [{"key": "agentrun.dev/kubelet-node", "effect": "NoSchedule"}]
    # The image's user, a read-only root and no capability: as the node agent's runc runtime runs it.
    assert pod_log(testbed, namespace, "restricted").strip() == (
        "uid 65532 gid 65532 root Read-only file system CapEff 0000000000000000"
    )


# The refusals tests/e2e/test_real_images.py expects from the node agent's runc runtime, from the kubelet itself.
REFUSALS = {
    "root-image": (
        BASE_IMAGE,
        "/usr/bin/python3.11",
        {},
        "container has runAsNonRoot and image will run as root (pod: ",
    ),
    "as-root": (RUNNER_IMAGE, "python", {"runAsUser": 0}, "container's runAsUser breaks non-root policy (pod: "),
}


@pytest.mark.parametrize("name", REFUSALS)
def test_run_as_non_root_refuses_with_the_message_the_node_agent_gives(
    testbed: KubeTestbed, namespace: str, node: KubeletNode, name: str
) -> None:
    image, python, security, message = REFUSALS[name]
    container = {
        "image": image,
        "command": [python, "-c", "print('ran')"],
        "securityContext": {"runAsNonRoot": True, **security},
    }
    create_pod(testbed, namespace, node, name, container)
    state = wait_for_container_state(testbed, namespace, name, node, reason="CreateContainerConfigError")
    assert state["waiting"]["message"].startswith(message), state
