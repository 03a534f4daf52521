"""Two operator replicas electing a leader on a Lease: one supervises runs and serves permits, the other
stands by with warm indexes, and takes over when the leader is killed (what replicaCount > 1 relies on)."""

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from agentrun_operator import permissions
from agentrun_operator.leadership import LEADER_LABEL
from agentrun_operator.permissions import Mode
from tests.harness.apiproxy import ApiProxy
from tests.harness.identities import SYSTEM_NAMESPACE
from tests.harness.inprocess_operator import Cluster, eventually, run_manifest
from tests.harness.local_cluster import free_port
from tests.harness.source_roots import pythonpath
from tests.integration.test_operator_rbac import granted

pytestmark = pytest.mark.integration

# Short Lease timing so a takeover takes seconds; the chart's defaults are 15 / 10 / 2.
LEASE_SECONDS, RENEW_DEADLINE_SECONDS, RETRY_SECONDS = 3, 2, 0.5
# A retry period far longer than the test: a standby that takes over within seconds was woken by its Lease watch.
SLOW_TIMING = (90, 60, 30)


class OperatorReplica:
    """`python -m agentrun_operator` as a process in the role of pod `pod`, with its output collected."""

    def __init__(
        self,
        cluster: Cluster,
        pod: str,
        timing: tuple[float, float, float] = (LEASE_SECONDS, RENEW_DEADLINE_SECONDS, RETRY_SECONDS),
    ) -> None:
        lease_seconds, renew_deadline_seconds, retry_seconds = timing
        self.pod = pod
        self.namespace = cluster.namespace
        self.permit_port = free_port()
        self.env = {
            **os.environ,
            # The operator's ServiceAccount token and the chart's RBAC, its Lease in its own namespace.
            "KUBECONFIG": str(cluster.operator_kubeconfig),
            "AGENTRUN_WATCH_NAMESPACE": cluster.namespace,
            "PYTHONPATH": pythonpath(),
            "AGENTRUN_HEALTH_PORT": "0",
            "AGENTRUN_METRICS_PORT": "0",
            # Each replica's permit server on its own loopback port (in a cluster each pod has its own IP).
            "AGENTRUN_PERMIT_HOST": "127.0.0.1",
            "AGENTRUN_PERMIT_PORT": str(self.permit_port),
            "AGENTRUN_PERMIT_LEASE_SECONDS": "1",
            "AGENTRUN_LEADER_ELECTION_LEASE": lease_name(cluster),
            "AGENTRUN_LEASE_DURATION_SECONDS": str(lease_seconds),
            "AGENTRUN_LEASE_RENEW_DEADLINE_SECONDS": str(renew_deadline_seconds),
            "AGENTRUN_LEASE_RETRY_PERIOD_SECONDS": str(retry_seconds),
            # What the chart passes from the downward API: the Lease identity and the pod to label.
            "POD_NAME": pod,
            "POD_NAMESPACE": SYSTEM_NAMESPACE,
        }
        self.output = ""
        self.process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

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

    async def ask_for_permit(self) -> tuple[int, str]:
        """A runner's permit request to this replica's permit server: the status and Retry-After."""
        url = f"http://127.0.0.1:{self.permit_port}/pools/{self.namespace}/shared/permits"
        headers = {"Authorization": "Bearer not-checked-first", "X-AgentRun-Run": "q1"}
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, json={"requestId": "r1", "maxWaitSeconds": 1}, headers=headers) as response,
        ):
            return response.status, response.headers.get("Retry-After", "")

    async def kill(self) -> None:
        """SIGKILL: no cleanup, the Lease is not released, the pod label stays."""
        assert self.process is not None
        self.process.kill()
        await self.process.wait()

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(self.process.wait(), timeout=20)
        if self._reader is not None:
            await asyncio.wait_for(self._reader, timeout=5)


def lease_name(cluster: Cluster) -> str:
    """The test's Lease in the operator's own namespace, which every test of the session shares."""
    return f"agentrun-operator-{cluster.namespace}"


def system(cluster: Cluster) -> Cluster:
    """The operator's own namespace, where its Lease and its pods are."""
    return Cluster(cluster.testbed, SYSTEM_NAMESPACE, cluster.operator_kubeconfig)


def add_operator_pod(cluster: Cluster, name: str) -> None:
    """The replica's own pod object in the operator's namespace, which the leader labels. The process plays
    it; no node runs it (its node selector matches none)."""
    system(cluster).create(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "agentrun-operator"}},
            "spec": {
                "nodeSelector": {"agentrun.dev/test-node": "none"},
                "containers": [{"name": "operator", "image": "agentrun-operator:test"}],
            },
        }
    )


def lease(cluster: Cluster) -> dict[str, Any] | None:
    return system(cluster).get("Lease", lease_name(cluster))


def holder(cluster: Cluster) -> str:
    found: dict[str, Any] = lease(cluster) or {}
    return str((found.get("spec") or {}).get("holderIdentity") or "")


def labelled(cluster: Cluster, pod: str) -> bool:
    obj = system(cluster).get("Pod", pod) or {}
    return (obj.get("metadata", {}).get("labels") or {}).get(LEADER_LABEL) == "true"


@contextlib.asynccontextmanager
async def two_replicas_one_leading(
    cluster: Cluster, **timing: tuple[float, float, float]
) -> AsyncIterator[tuple[OperatorReplica, OperatorReplica]]:
    """Two started replicas (with the API key Secret and their pods), one holding the Lease: (leader, standby).
    Both are stopped on the way out."""
    cluster.add_api_key_secret()
    suffix = cluster.namespace.rsplit("-", 1)[-1]
    replicas = {
        name: OperatorReplica(cluster, name, **timing) for name in (f"operator-a-{suffix}", f"operator-b-{suffix}")
    }
    for name in replicas:
        add_operator_pod(cluster, name)
    try:
        for replica in replicas.values():
            await replica.start()
        for replica in replicas.values():
            await eventually(
                lambda replica=replica: "agentrun operator started" in replica.output, timeout=30, message="started"
            )
        leader_name = await eventually(lambda: holder(cluster), timeout=30, message="a replica holding the Lease")
        leader = replicas[leader_name]
        [standby] = [r for r in replicas.values() if r is not leader]
        yield leader, standby
    finally:
        for replica in replicas.values():
            await replica.stop()
        for name in replicas:
            system(cluster).delete("Pod", name)
        system(cluster).delete("Lease", lease_name(cluster))
        # What the real API server refused, it refused to the replicas: with the chart's RBAC nothing is.
        for replica in replicas.values():
            assert "Forbidden" not in replica.output, replica.output[-3000:]
            assert " 403" not in replica.output, replica.output[-3000:]


async def test_the_standby_takes_over_within_the_lease_when_the_leader_is_killed(
    cluster: Cluster, proxy: ApiProxy
) -> None:
    async with two_replicas_one_leading(cluster) as (leader, standby):
        held = lease(cluster)
        assert held is not None
        assert held["spec"]["leaseDurationSeconds"] == LEASE_SECONDS
        assert held["spec"]["renewTime"].endswith("Z")
        await eventually(lambda: labelled(cluster, leader.pod), timeout=10, message="the leader's pod labelled")
        assert not labelled(cluster, standby.pod)

        cluster.create(run_manifest("q1"))
        await eventually(lambda: cluster.get("Job", "q1-runner"), timeout=30, message="the Job of q1")
        admitted = f"[{cluster.namespace}/q1] run admitted"
        await eventually(lambda: admitted in leader.output, timeout=10, message="the leader to admit q1")
        assert admitted not in standby.output  # the standby saw the run (warm) but did not admit it
        # Runners that reach the standby (the Service's label lagging behind the Lease) are told to ask again.
        status, retry_after = await standby.ask_for_permit()
        assert (status, retry_after) == (503, "1")

        transitions = held["spec"].get("leaseTransitions", 0)
        await leader.kill()
        killed_at = time.monotonic()
        await eventually(lambda: holder(cluster) == standby.pod, timeout=15, message="the standby to take the Lease")
        # The standby waits for the Lease to go unrenewed for its duration, by its own clock, and notices within
        # one retry period of that.
        assert time.monotonic() - killed_at <= LEASE_SECONDS + 2 * RETRY_SECONDS + 1
        taken = lease(cluster)
        assert taken is not None
        assert taken["spec"]["leaseTransitions"] == transitions + 1
        await eventually(lambda: labelled(cluster, standby.pod), timeout=10, message="the new leader's pod labelled")

        # The run admitted by the dead leader is supervised by the new one, and new runs are admitted.
        pod = await cluster.start_pod("q1")
        await eventually(lambda: cluster.status("q1").get("phase") == "Running", timeout=15, message="q1 Running")
        cluster.report("q1", iteration=2, pod=pod)
        await eventually(lambda: cluster.status("q1").get("iteration") == 2, timeout=15, message="q1 at iteration 2")
        cluster.create(run_manifest("q2"))
        await eventually(
            lambda: cluster.get("Job", "q2-runner"), timeout=20, message="the Job of q2 from the new leader"
        )
        assert sorted(job["metadata"]["name"] for job in cluster.items("Job")) == [
            "q1-runner",
            "q2-runner",
        ]
        status, _ = await standby.ask_for_permit()
        assert status != 503  # it leads now: the pool is looked up (unknown here), not refused for leadership
        # Everything both replicas asked of the API server, Lease and pod label included, is in the chart's RBAC
        # for the namespace they watch and their own.
        rules = permissions.rules_for(Mode.NAMESPACED) + permissions.own_namespace_rules()
        refused = {(r.verb, r.resource, r.subresource) for r in proxy.requests if r.verb and not granted(r, rules)}
        assert refused == set()


async def test_a_stopping_leader_hands_over_at_once_and_unlabels_its_pod(cluster: Cluster) -> None:
    # The standby's next attempt is a retry period (30 s) away: it takes over within seconds only when its watch
    # of the Lease wakes it on the release, as it must to win over a replacement replica still starting.
    async with two_replicas_one_leading(cluster, timing=SLOW_TIMING) as (leader, standby):
        await eventually(lambda: labelled(cluster, leader.pod), timeout=10, message="the leader's pod labelled")

        await leader.stop()  # SIGTERM: the operator releases the Lease on its way out
        assert not labelled(cluster, leader.pod)
        released = lease(cluster)
        assert released is not None
        assert released["spec"].get("holderIdentity") in (None, "", standby.pod)
        await eventually(lambda: holder(cluster) == standby.pod, timeout=5, message="the standby leading")
        await eventually(lambda: labelled(cluster, standby.pod), timeout=5, message="the standby's pod labelled")
