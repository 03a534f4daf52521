"""A real Kubernetes control plane for the tests: etcd, kube-apiserver, kube-controller-manager, kube-scheduler."""

from tests.harness.controlplane.binaries import BinariesMissingError, KubeBinaries, find_binaries
from tests.harness.controlplane.cluster import ControlPlane, ControlPlaneError, write_kubeconfig

__all__ = [
    "BinariesMissingError",
    "ControlPlane",
    "ControlPlaneError",
    "KubeBinaries",
    "find_binaries",
    "write_kubeconfig",
]
