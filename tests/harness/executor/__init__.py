"""A local stand-in for the Job controller and kubelet: runs each Job's pod as local processes.

Test tooling, not the product; see README.md in this package for what it does and does not emulate.
"""

from tests.harness.executor.executor import LocalJobExecutor
from tests.harness.executor.logs import ExecutorPodLogs
from tests.harness.nodeagent.pods import MountNamespaceUnavailableError, PodRuntime, check_mount_namespaces
from tests.harness.nodeagent.settings import ExecutorSettings

__all__ = [
    "ExecutorPodLogs",
    "ExecutorSettings",
    "LocalJobExecutor",
    "MountNamespaceUnavailableError",
    "PodRuntime",
    "check_mount_namespaces",
]
