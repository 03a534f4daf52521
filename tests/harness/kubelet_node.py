"""A real kubelet, built from k8s.io/kubernetes, with containerd's CRI as its runtime: a second node of the test
control plane beside the node agent (``make e2e-kubelet``).

What it takes on this machine, and why:
- containerd (Debian's) on a socket and root of its own, runc as its runtime, the ``cgroupfs`` driver (the host
  has cgroup v1 without systemd), ``failCgroupV1: false`` (the kubelet refuses cgroup v1 otherwise since 1.35).
- ``restrict_oom_score_adj``: the sandbox withholds CAP_SYS_RESOURCE, so no process here may lower its
  ``oom_score_adj``; the kubelet asks -998 for every pod sandbox and runc fails the sandbox on it. containerd then
  raises what the kubelet asks to its own score instead.
- A pause image built here (``pause.c``: a static binary, committed with buildah), since none can be pulled.
- A CNI bridge (Debian's containernetworking-plugins) on a free /24 of this machine; the bridge's address is the
  node's InternalIP (the kubelet refuses a loopback node IP), where the API server reaches the kubelet for logs.
  Nothing outside this machine routes to it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.harness.controlplane import BinariesMissingError, ControlPlane
from tests.harness.controlplane.binaries import REPO_ROOT, build_dirs
from tests.harness.controlplane.cluster import Component
from tests.harness.lifecycle import StartStop
from tests.harness.local_cluster import free_port
from tests.harness.nodeagent.runc import buildah_argv
from tests.harness.podnet.addresses import plan_network

PAUSE_SOURCE = Path(__file__).with_name("pause.c")
PAUSE_IMAGE = "localhost/agentrun-pause:test"
CNI_PLUGINS = Path("/usr/lib/cni")
READY_TIMEOUT_SECONDS = 120.0
STOP_TIMEOUT_SECONDS = 20.0


@dataclass(frozen=True)
class NodeBinaries:
    kubelet: Path
    containerd: str
    ctr: str


def find_node_binaries() -> NodeBinaries:
    """The kubelet `make kubelet` built and Debian's containerd, or an error saying what to run."""
    kubelet = build_dirs()[0] / "node" / "kubelet"
    containerd, ctr = shutil.which("containerd"), shutil.which("ctr")
    missing = [name for name, found in (("kubelet", kubelet.exists()), ("containerd", containerd)) if not found]
    missing += [f"CNI bridge plugin in {CNI_PLUGINS}"] if not (CNI_PLUGINS / "bridge").exists() else []
    missing += ["gcc"] if shutil.which("gcc") is None else []
    if missing or containerd is None or ctr is None:
        raise BinariesMissingError(f"a kubelet node needs {', '.join(missing)}: run `make kubelet`")
    return NodeBinaries(kubelet=kubelet, containerd=containerd, ctr=ctr)


class KubeletNode(StartStop):
    """``with KubeletNode(control_plane, state_dir) as node:`` registers node ``node.name`` and waits until it
    is Ready; ``node.load_image(name)`` gives containerd an image buildah holds. Pods bound to the node
    (``spec.nodeName``) run there. On the way out every container stops and the Node object is deleted."""

    def __init__(self, control_plane: ControlPlane, state_dir: Path, *, name: str = "kubelet-node") -> None:
        self.control_plane = control_plane
        self.name = name
        self.binaries = find_node_binaries()
        self.state_dir = state_dir.resolve()
        self.socket = self.state_dir / "containerd" / "containerd.sock"
        subnet = next(ipaddress.IPv4Network(plan_network().pod_cidr).subnets(new_prefix=24))
        self.subnet = str(subnet)
        self.address = str(subnet[1])
        self.bridge = f"kbr{free_port()}"  # under 15 characters, and not another session's
        self.components: list[Component] = []

    # -- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._add_bridge()
        self._start_containerd()
        self._load_pause_image()
        self._start_kubelet()
        self._wait_ready()

    def stop(self) -> None:
        if self.components and self.components[-1].name == "kubelet" and self.components[-1].running:
            self._drain()
        if self.socket.exists():
            self._remove_containers()
        for component in reversed(self.components):
            component.stop()
        self.components.clear()
        self._kill_shims()
        self._unmount_all()
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, check=False)
        with contextlib.suppress(Exception):
            self.control_plane.admin.delete(f"/api/v1/nodes/{self.name}")

    # -- images ---------------------------------------------------------------------------------------

    def load_image(self, image: str) -> None:
        """Copy ``image`` from buildah's local storage into containerd's (the CRI namespace ``k8s.io``)."""
        archive = self.state_dir / "image.tar"
        _run(buildah_argv("push", "-q", image, f"oci-archive:{archive}:{image}"))
        self.ctr("images", "import", str(archive))
        archive.unlink()

    def ctr(self, *argv: str) -> str:
        return _run([self.binaries.ctr, "--address", str(self.socket), "--namespace", "k8s.io", *argv])

    def log(self, component: str, characters: int = 4000) -> str:
        return next((c.log_tail(characters) for c in self.components if c.name == component), "")

    # -- parts ----------------------------------------------------------------------------------------

    def _add_bridge(self) -> None:
        # The CNI bridge plugin adopts the bridge and its gateway address; made first, it is the node's address.
        _run(["ip", "link", "add", self.bridge, "type", "bridge"])
        _run(["ip", "addr", "add", f"{self.address}/24", "dev", self.bridge])
        _run(["ip", "link", "set", self.bridge, "up"])

    def _start_containerd(self) -> None:
        root = self.socket.parent
        cni = self.state_dir / "cni"
        for folder in (root, cni):
            folder.mkdir(parents=True, exist_ok=True)
        plugin = {
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": True,
            "ipMasq": False,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": self.subnet}]], "dataDir": str(cni / "ipam")},
        }
        conflist = {"cniVersion": "1.0.0", "name": "agentrun-kubelet-node", "plugins": [plugin]}
        (cni / "10-bridge.conflist").write_text(json.dumps(conflist))
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        config = root / "config.toml"
        config.write_text(
            "\n".join(
                [
                    "version = 2",
                    f'root = "{root / "root"}"',
                    f'state = "{root / "state"}"',
                    "[grpc]",
                    f'  address = "{self.socket}"',
                    f"[{cri}]",
                    f'  sandbox_image = "{PAUSE_IMAGE}"',
                    "  restrict_oom_score_adj = true",
                    f"[{cri}.containerd]",
                    '  snapshotter = "overlayfs"',
                    f"[{cri}.containerd.runtimes.runc]",
                    '  runtime_type = "io.containerd.runc.v2"',
                    f"[{cri}.containerd.runtimes.runc.options]",
                    "  SystemdCgroup = false",
                    f"[{cri}.cni]",
                    f'  bin_dir = "{CNI_PLUGINS}"',
                    f'  conf_dir = "{cni}"',
                    "",
                ]
            )
        )
        self._launch("containerd", [self.binaries.containerd, "--config", str(config)])
        deadline = time.monotonic() + 30
        while not self.socket.exists():
            if time.monotonic() > deadline or not self.components[-1].running:
                raise RuntimeError(f"containerd did not start:\n{self.log('containerd')}")
            time.sleep(0.1)

    def _load_pause_image(self) -> None:
        build = self.state_dir / "pause"
        build.mkdir(exist_ok=True)
        _run(["gcc", "-static", "-O2", "-o", str(build / "pause"), str(PAUSE_SOURCE)])
        container = _run(buildah_argv("from", "scratch")).strip()
        try:
            _run(buildah_argv("copy", container, str(build / "pause"), "/pause"))
            _run(buildah_argv("config", "--entrypoint", '["/pause"]', "--user", "65535:65535", container))
            _run(buildah_argv("commit", "-q", container, PAUSE_IMAGE))
        finally:
            subprocess.run(buildah_argv("rm", container), capture_output=True, check=False)
        self.load_image(PAUSE_IMAGE)

    def _start_kubelet(self) -> None:
        port = free_port()
        kubeconfig, serving = self.control_plane.issue_node_credentials(self.name, addresses=(self.address,))
        config: dict[str, Any] = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": self.address,
            "port": port,
            "readOnlyPort": 0,
            "healthzPort": 0,
            "cgroupDriver": "cgroupfs",
            "failCgroupV1": False,
            "failSwapOn": False,
            # No QoS cgroup tree and no allocatable enforcement: the host's cgroups belong to the sandbox.
            "cgroupsPerQOS": False,
            "enforceNodeAllocatable": [],
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            # Only the API server (its kubelet client certificate, from the cluster's CA) reaches the kubelet.
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": False},
                "x509": {"clientCAFile": str(self.control_plane.ca_file)},
            },
            "authorization": {"mode": "AlwaysAllow"},
            "tlsCertFile": str(serving.cert),
            "tlsPrivateKeyFile": str(serving.key),
            "resolvConf": "",
            "podCIDR": self.subnet,
            # Only pods bound to it by name run here: the scheduler keeps the session's other pods on the node agent.
            "registerWithTaints": [{"key": "agentrun.dev/kubelet-node", "effect": "NoSchedule"}],
            # The test machine's disk is shared: neither evict pods nor collect images on its fill level.
            "evictionHard": {},
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
        }
        config_file = self.state_dir / "kubelet.yaml"
        config_file.write_text(yaml.safe_dump(config))
        self._launch(
            "kubelet",
            [
                str(self.binaries.kubelet),
                f"--config={config_file}",
                f"--kubeconfig={kubeconfig}",
                f"--hostname-override={self.name}",
                f"--node-ip={self.address}",
                f"--root-dir={self.state_dir / 'kubelet'}",
                f"--cert-dir={self.state_dir / 'kubelet-pki'}",
                "--v=1",
            ],
        )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if not self.components[-1].running:
                raise RuntimeError(f"the kubelet exited:\n{self.log('kubelet')}")
            answer = self.control_plane.admin.get(f"/api/v1/nodes/{self.name}")
            if answer.status_code == 200:
                conditions = answer.json().get("status", {}).get("conditions") or []
                if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                    return
            time.sleep(0.5)
        raise RuntimeError(f"node {self.name} not Ready within {READY_TIMEOUT_SECONDS:.0f} s:\n{self.log('kubelet')}")

    def _launch(self, name: str, argv: list[str]) -> None:
        (self.state_dir / "logs").mkdir(exist_ok=True)
        component = Component(name, argv, self.state_dir / "logs" / f"{name}.log")
        component.start()
        self.components.append(component)

    def _drain(self) -> None:
        """Delete the node's pods and wait for the kubelet to stop their sandboxes: that tears their network
        down (the CNI DEL: the veth pair and the network namespace), which killing the containers would not."""
        admin = self.control_plane.admin
        with contextlib.suppress(Exception):
            listed = admin.get("/api/v1/pods", params={"fieldSelector": f"spec.nodeName={self.name}"})
            for pod in listed.json().get("items", []):
                meta = pod["metadata"]
                admin.delete(
                    f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}", params={"gracePeriodSeconds": "0"}
                )
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            try:
                tasks = self.ctr("tasks", "list").splitlines()[1:]
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
                return
            if not any(line.split()[-1] == "RUNNING" for line in tasks if line.split()):
                return
            time.sleep(0.5)

    def _remove_containers(self) -> None:
        """Every container's task killed and deleted: they outlive the kubelet and containerd otherwise."""
        with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
            for container in self.ctr("containers", "list", "--quiet").split():
                with contextlib.suppress(subprocess.CalledProcessError):
                    self.ctr("tasks", "delete", "--force", container)

    def _kill_shims(self) -> None:
        """The runc shims containerd started outlive it by design; theirs are named by its socket."""
        subprocess.run(["pkill", "-KILL", "-f", f"containerd-shim.*{self.socket}"], capture_output=True, check=False)

    def _unmount_all(self) -> None:
        """The kubelet's volume and root mounts under the state folder, innermost first."""
        with open("/proc/mounts") as mounts:
            points = [line.split()[1] for line in mounts if line.split()[1].startswith(f"{self.state_dir}/")]
        for point in sorted(points, key=len, reverse=True):
            subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)


def _run(argv: Sequence[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300, cwd=REPO_ROOT)
    if done.returncode != 0:
        raise subprocess.CalledProcessError(done.returncode, argv, done.stdout, done.stderr)
    return done.stdout
