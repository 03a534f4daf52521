"""The operator's own run registry and leader election, on the real control plane with the operator's token:
no finalizer on AgentRuns (a run deleted while no operator runs is gone at once), the finalizer of an
earlier kopf-daemon version removed on upgrade, and a leader that cannot renew its Lease stepping down
before any standby may take over."""

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import kopf
import pytest

from agentrun_api import constants
from agentrun_operator.kube import KubeClient
from agentrun_operator.leadership import LeaderElection, LeaderElector
from agentrun_operator.metrics import Metrics
from agentrun_operator.reconcile import OperatorContext
from agentrun_operator.settings import OperatorSettings
from agentrun_operator.supervisors import LEGACY_ANNOTATIONS, LEGACY_FINALIZER, RunRegistry
from tests.harness.apiproxy import ApiProxy
from tests.harness.identities import SYSTEM_NAMESPACE
from tests.harness.inprocess_operator import Cluster, eventually, run_manifest, running_operator
from tests.harness.local_cluster import free_port

pytestmark = pytest.mark.integration


async def test_a_run_deleted_while_no_operator_runs_is_gone_at_once(cluster: Cluster) -> None:
    cluster.add_api_key_secret()
    async with running_operator(cluster):
        cluster.create(run_manifest("q3"))
        await eventually(lambda: cluster.get("Job", "q3-runner"), message="the Job")
        await eventually(lambda: cluster.status().get("phase") == "Pending", message="Pending")
        assert not cluster.run()["metadata"].get("finalizers")
    cluster.delete(constants.KIND, "q3")  # the operator is stopped
    assert cluster.get(constants.KIND, "q3") is None
    # Its children go with it (owner references, the garbage collector), not through the operator either.
    await eventually(lambda: cluster.get("Job", "q3-runner") is None, message="the garbage collector to delete the Job")


def legacy_run(name: str) -> dict[str, object]:
    """An AgentRun as an earlier operator version (kopf create handler and daemon) left it."""
    run = run_manifest(name)
    run["metadata"] = {
        "name": name,
        "finalizers": [LEGACY_FINALIZER, "example.com/keep-me"],
        # What kopf wrote, in its own formats (it parses them again when it sees the run).
        "annotations": {
            **dict.fromkeys(LEGACY_ANNOTATIONS, '{"success": true}'),
            f"{constants.GROUP}/kopf-managed": "yes",
            f"{constants.GROUP}/last-handled-configuration": json.dumps({"spec": run["spec"]}),
            "example.com/note": "the user's own",
        },
    }
    return run


async def test_the_finalizer_of_an_earlier_version_is_removed_and_nothing_else(
    cluster: Cluster, proxy: ApiProxy
) -> None:
    cluster.add_api_key_secret()
    cluster.create(legacy_run("old"))
    async with running_operator(cluster):
        await eventually(
            lambda: cluster.run("old")["metadata"].get("finalizers") == ["example.com/keep-me"],
            message="kopf's finalizer removed",
        )
        metadata = cluster.run("old")["metadata"]
        assert metadata["annotations"] == {"example.com/note": "the user's own"}
        # The run itself is reconciled as any other.
        await eventually(lambda: cluster.get("Job", "old-runner"), message="the Job of the upgraded run")

        def metadata_writes() -> int:
            return proxy.requests.count(verb="patch", kind=constants.KIND, subresource="")

        # The clean-up is a few writes once per upgraded run (kopf's finalizer removal and the registry's
        # annotation removal, each retried at most on a 409 between them), then no more metadata writes.
        settled = metadata_writes()
        assert 2 <= settled <= 6
        await asyncio.sleep(1.5)
        assert metadata_writes() == settled


async def test_a_run_being_deleted_with_the_old_finalizer_is_released(cluster: Cluster) -> None:
    run = legacy_run("stuck")
    run["metadata"]["finalizers"] = [LEGACY_FINALIZER]  # type: ignore[index]
    cluster.create(run)
    cluster.delete(constants.KIND, "stuck")  # held by the finalizer: deletionTimestamp set, object kept
    assert cluster.get(constants.KIND, "stuck") is not None
    async with running_operator(cluster):
        await eventually(lambda: cluster.get(constants.KIND, "stuck") is None, message="the deletion to complete")


def election(identity: str, lease: str) -> LeaderElection:
    """The chart's election: a Lease in the operator's own namespace (one per test, as tests share it)."""
    return LeaderElection(
        lease_name=lease,
        namespace=SYSTEM_NAMESPACE,
        identity=identity,
        lease_duration_seconds=3,
        renew_deadline_seconds=2,
        retry_period_seconds=0.25,
    )


async def test_a_leader_that_cannot_renew_stops_before_the_lease_could_expire(cluster: Cluster) -> None:
    info = cluster.operator_connection()
    lease = f"agentrun-operator-{cluster.namespace}"
    transitions: list[tuple[str, str, float]] = []

    def recorder(identity: str, what: str) -> Callable[[], Awaitable[None]]:
        async def record() -> None:
            transitions.append((identity, what, time.monotonic()))

        return record

    clients = [KubeClient(info), KubeClient(info)]
    electors = [
        LeaderElector(client, election(name, lease), on_lead=recorder(name, "lead"), on_follow=recorder(name, "follow"))
        for client, name in zip(clients, ("a", "b"), strict=True)
    ]
    tasks = [asyncio.create_task(electors[0].run())]
    try:
        await eventually(lambda: electors[0].leading, message="a leading")
        tasks.append(asyncio.create_task(electors[1].run()))
        await asyncio.sleep(1)
        assert not electors[1].leading  # the Lease is renewed: b stands by
        # From now on a cannot reach the API server (a network partition); b still can.
        partitioned = KubeClient(kopf.ConnectionInfo(server=f"http://127.0.0.1:{free_port()}", token="test"))
        clients.append(partitioned)
        electors[0].kube = partitioned
        await eventually(lambda: electors[1].leading, timeout=10, message="b taking over")
        [(_, _, a_followed)] = [t for t in transitions if t[:2] == ("a", "follow")]
        [(_, _, b_led)] = [t for t in transitions if t[:2] == ("b", "lead")]
        assert a_followed < b_led  # a had stopped its work before b started: never two leaders
        assert not electors[0].leading
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for client in clients:
            await client.close()
        cluster.admin.delete(f"/apis/coordination.k8s.io/v1/namespaces/{SYSTEM_NAMESPACE}/leases/{lease}")


async def test_a_replica_leading_again_reads_runs_afresh_whose_status_it_stopped_keeping(
    cluster: Cluster, proxy: ApiProxy
) -> None:
    cluster.create(run_manifest("q3"))
    accepted = {
        "type": "Accepted",
        "status": "True",
        "reason": "Created",
        "message": "the run's Job and companions exist",
        "lastTransitionTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    cluster.patch(constants.KIND, "q3", {"status": {"phase": "Pending", "conditions": [accepted]}}, status=True)
    op = OperatorContext(
        settings=OperatorSettings(),
        kube=KubeClient(cluster.operator_connection()),
        metrics=Metrics.create(),
        http=aiohttp.ClientSession(),
    )
    runs = RunRegistry(op, max_concurrent_admissions=2)
    nothing: Callable[[tuple[str, str]], list[Any]] = lambda key: []  # noqa: E731 - no Job, pods or report yet
    runs.attach(jobs=nothing, pods=nothing, progress=nothing)
    key = (cluster.namespace, "q3")
    try:
        await runs.lead()
        runs.observe("ADDED", cluster.run())
        # The supervisor took the status it needs; the registry keeps the body without it from then on.
        await eventually(lambda: "status" not in (runs.latest(key) or {"status": 1}), message="the status dropped")
        runs.observe("MODIFIED", cluster.run())
        assert "status" not in (runs.latest(key) or {})
        assert proxy.requests.count(verb="get", kind=constants.KIND) == 0

        await runs.follow()
        assert runs.supervised == set()
        await runs.lead()  # leading again: the new supervisor needs the status, read from the API server
        await eventually(lambda: proxy.requests.count(verb="get", kind=constants.KIND) == 1, message="one GET")
        await eventually(lambda: runs.supervised == {key}, message="supervised again")
        assert cluster.status()["phase"] == "Pending"  # the fresh status was the base, nothing was lost
    finally:
        await runs.follow()
        await op.kube.close()
        await op.http.close()
