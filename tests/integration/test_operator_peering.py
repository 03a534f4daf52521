"""Two operator replicas peering through a ClusterKopfPeering: one serves, the other stands by and
takes over when the first stops (what the chart's replicaCount > 1 relies on)."""

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from tests.harness.apiserver import EmulatedApiServer
from tests.harness.inprocess_operator import Cluster, eventually, run_manifest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PEERING = "agentrun-operator"


class OperatorReplica:
    """`python -m agentrun_operator` as a process, with its output collected as it runs."""

    def __init__(self, apiserver: EmulatedApiServer) -> None:
        self.env = {
            **os.environ,
            "KUBECONFIG": str(apiserver.kubeconfig_path),
            "PYTHONPATH": os.pathsep.join(str(ROOT / part) for part in ("api", "operator", "runner_image", ".")),
            "AGENTRUN_HEALTH_PORT": "0",
            "AGENTRUN_METRICS_PORT": "0",
            # Each replica's permit server on a free loopback port (in a cluster each pod has its own IP).
            "AGENTRUN_PERMIT_HOST": "127.0.0.1",
            "AGENTRUN_PERMIT_PORT": "0",
            "AGENTRUN_PEERING_NAME": PEERING,
        }
        self.output = ""
        self.process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    @property
    def peering_state(self) -> str:
        """serving or paused, from kopf's last peering decision in the log (paused until the first)."""
        resumed = self.output.rfind("Resuming operations")
        paused = self.output.rfind("Pausing operations")
        return "serving" if resumed > paused else "paused"

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "agentrun_operator",
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process is not None
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            self.output += line.decode(errors="replace")

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(self.process.wait(), timeout=20)
        if self._reader is not None:
            await asyncio.wait_for(self._reader, timeout=5)


async def test_one_replica_serves_and_the_standby_takes_over_when_it_stops(apiserver: EmulatedApiServer) -> None:
    cluster = Cluster(apiserver)
    cluster.add_api_key_secret()
    store = apiserver.store
    store.create(
        store.resource("ClusterKopfPeering"),
        None,
        {
            "apiVersion": "kopf.dev/v1",
            "kind": "ClusterKopfPeering",
            "metadata": {"name": PEERING},
        },
    )
    replicas = [OperatorReplica(apiserver), OperatorReplica(apiserver)]
    try:
        for replica in replicas:
            await replica.start()

        # Both start paused (mandatory peering). A replica that sees no rival yet resumes, and pauses
        # again when the higher-priority record appears: kopf peering is not a lock, and the brief
        # overlap at start is harmless because every child has a deterministic name. The steady
        # state is what this test holds the operator to: both records, exactly one replica resumed.
        def settled() -> bool:
            peering = store.try_get("ClusterKopfPeering", None, PEERING) or {}
            return len(peering.get("status") or {}) == 2 and [r.peering_state for r in replicas].count("serving") == 1

        await eventually(settled, timeout=30, message="both replicas peered, exactly one serving")
        cluster.create(run_manifest("q1"))
        await eventually(lambda: cluster.get("Job", "q1-runner"), timeout=30, message="the Job of q1")
        [active] = await eventually(
            lambda: [r for r in replicas if "default/q1" in r.output], timeout=10, message="a replica to log q1"
        )
        [waiting] = [r for r in replicas if r is not active]
        assert "default/q1" not in waiting.output  # the standby did not reconcile it

        await active.stop()
        await eventually(lambda: "Resuming operations" in waiting.output, timeout=30, message="the standby to resume")
        cluster.create(run_manifest("q2"))
        await eventually(lambda: cluster.get("Job", "q2-runner"), timeout=20, message="the Job of q2 from the standby")
        assert "default/q2" in waiting.output
        assert [job["metadata"]["name"] for job in store.all_of("Job", "default")] == ["q1-runner", "q2-runner"]
    finally:
        for replica in replicas:
            await replica.stop()
