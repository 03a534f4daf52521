"""A local stand-in for the Job controller and kubelet: runs each Job's pod as local processes.

Test tooling, not the product; see README.md in this package for what it does and does not emulate.
"""

from tests.harness.executor.executor import LocalJobExecutor, MountNamespaceUnavailableError, check_mount_namespaces
from tests.harness.executor.logs import ExecutorPodLogs
from tests.harness.executor.pods import PodRuntime
from tests.harness.executor.settings import ExecutorSettings

__all__ = [
    "ExecutorPodLogs",
    "ExecutorSettings",
    "LocalJobExecutor",
    "MountNamespaceUnavailableError",
    "PodRuntime",
    "check_mount_namespaces",
]
