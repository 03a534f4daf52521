"""A node agent on a background event loop: one node for a whole test session, whatever loop each test runs
on. Test code inspects and signals the node's pods through it."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

from tests.harness.background import BackgroundLoop
from tests.harness.controlplane.pki import CertificatePair
from tests.harness.nodeagent.agent import NodeAgent
from tests.harness.nodeagent.pods import PodRuntime
from tests.harness.nodeagent.settings import NodeSettings

START_TIMEOUT_SECONDS = 60.0
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"


class NodeAgentThread:
    """``start()`` registers the Node and returns once the agent runs; ``stop()`` kills its pods and ends."""

    def __init__(
        self,
        background: BackgroundLoop,
        kubeconfig: Path,
        serving: CertificatePair,
        ca_file: Path,
        *,
        state_dir: Path,
        settings: NodeSettings,
        kubernetes_version: str,
    ) -> None:
        self._background = background
        self.agent = NodeAgent(
            kubeconfig,
            serving,
            ca_file,
            state_dir=state_dir,
            settings=settings,
            kubernetes_version=kubernetes_version,
        )
        self.node_name = settings.node_name

    def start(self) -> None:
        self._background.call(self.agent.__aenter__, timeout=START_TIMEOUT_SECONDS)

    def stop(self) -> None:
        self._background.call(lambda: self.agent.__aexit__(None, None, None), timeout=60)

    # -- what tests ask of the node, from their own thread --------------------------------------------

    def runtime(self, namespace: str, pod: str) -> PodRuntime:
        return self.agent.runtime(namespace, pod)

    def job_runtimes(self, namespace: str, job: str) -> list[PodRuntime]:
        """The pods this node ran for a Job, oldest first."""
        return self.agent.runtimes_of(namespace, JOB_NAME_LABEL, job)

    def kill_pod_process(self, namespace: str, pod: str, sig: signal.Signals = signal.SIGKILL) -> None:
        self.agent.kill_pod_process(namespace, pod, sig)

    def read_log(self, namespace: str, pod: str, container: str | None = None) -> str:
        return self.agent.read_log(namespace, pod, container)

    async def wait_finished(self, namespace: str, pod: str, timeout: float = 60.0) -> PodRuntime:
        """Wait (on the caller's loop) until the pod's containers have ended."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                runtime = self.runtime(namespace, pod)
            except LookupError:
                runtime = None
            if runtime is not None and runtime.finished.is_set():
                return runtime
            await asyncio.sleep(0.05)
        raise TimeoutError(f"pod {namespace}/{pod} did not finish on node {self.node_name} within {timeout} s")

    @property
    def reconcile_errors(self) -> list[Any]:
        return self.agent.reconcile_errors
