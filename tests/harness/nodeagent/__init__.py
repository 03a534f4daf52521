"""The node agent: plays the kubelet of one Node of the real control plane; pods run as local processes.

Test tooling, not the product; see README.md in this package for what it does and does not do.
"""

from tests.harness.nodeagent.agent import NodeAgent
from tests.harness.nodeagent.pods import MountNamespaceUnavailableError, PodRuntime, check_mount_namespaces
from tests.harness.nodeagent.settings import InClusterApi, NodeSettings

__all__ = [
    "InClusterApi",
    "MountNamespaceUnavailableError",
    "NodeAgent",
    "NodeSettings",
    "PodRuntime",
    "check_mount_namespaces",
]
