"""Kill the operator at any point and start it again: the same outcome, no duplicates."""

import asyncio

import pytest

from tests.harness.apiproxy import ApiProxy
from tests.harness.inprocess_operator import Cluster, eventually, run_manifest, running_operator, start_operator

pytestmark = pytest.mark.integration

PENDING_PROXY = (
    "pending: counts the operator's requests, which needs the API proxy's request log (tests.harness.apiproxy)"
)


def child_uids(cluster: Cluster) -> dict[str, str]:
    kinds = ["Job", "ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Secret", "Service"]
    return {
        f"{kind}/{obj['metadata']['name']}": obj["metadata"]["uid"]
        for kind in kinds
        for obj in cluster.items(kind)
        if obj["metadata"].get("labels", {}).get("agentrun.dev/run") == "q3"
    }


async def test_restarted_operator_adopts_children_and_creates_no_second_job(cluster: Cluster) -> None:
    cluster.add_api_key_secret()
    first = await start_operator(cluster)
    cluster.create(run_manifest())
    await eventually(lambda: cluster.status().get("phase") == "Pending")
    await eventually(lambda: cluster.get("Job", "q3-runner"))
    before = child_uids(cluster)
    token = cluster.get("Secret", "q3-stream-token")["data"]["token"]  # type: ignore[index]
    await first.kill()

    pod = await cluster.start_pod()  # the cluster goes on while the operator is away
    async with running_operator(cluster):
        await eventually(lambda: cluster.status().get("phase") == "Running", message="Running after the restart")
        assert child_uids(cluster) == before
        assert cluster.get("Secret", "q3-stream-token")["data"]["token"] == token  # type: ignore[index]
        assert len(cluster.items("Job")) == 1
        cluster.report(iteration=2, pod=pod, outcome="Succeeded")
        await eventually(lambda: cluster.status().get("phase") == "Succeeded")


@pytest.mark.parametrize("kill_after_requests", [2, 5, 9])
async def test_operator_killed_midway_through_creating_children_finishes_the_job_once(
    cluster: Cluster, proxy: ApiProxy, kill_after_requests: int
) -> None:
    cluster.add_api_key_secret()
    first = await start_operator(cluster)
    baseline = len(proxy.requests)
    cluster.create(run_manifest())
    creates = 0
    for _ in range(400):
        creates = sum(1 for r in list(proxy.requests)[baseline:] if r.verb == "create" and r.kind != "Event")
        if creates >= kill_after_requests:
            break
        await asyncio.sleep(0.005)
    await first.kill()

    async with running_operator(cluster):
        await eventually(lambda: cluster.get("Job", "q3-runner"), message="the Job")
        await eventually(lambda: (cluster.condition("Accepted") or {}).get("status") == "True", message="Accepted")
        assert len(cluster.items("Job")) == 1
        assert len([s for s in cluster.items("Secret") if s["metadata"]["name"] == "q3-stream-token"]) == 1
        await cluster.start_pod()
        await eventually(lambda: cluster.status().get("phase") == "Running")


async def test_finished_run_is_left_alone_after_a_restart(cluster: Cluster) -> None:
    cluster.add_api_key_secret()
    async with running_operator(cluster):
        cluster.create(run_manifest(ttlSecondsAfterFinished=0))
        await eventually(lambda: cluster.get("Job", "q3-runner"))
        pod = await cluster.start_pod()
        cluster.report(iteration=1, pod=pod, outcome="Succeeded")
        await eventually(lambda: cluster.get("Job", "q3-runner") is None, message="TTL cleanup")
        status = cluster.status()
    async with running_operator(cluster):
        await asyncio.sleep(1.0)
        assert cluster.get("Job", "q3-runner") is None  # not recreated for an ended run
        assert cluster.status()["phase"] == "Succeeded"
        assert cluster.status()["completionTime"] == status["completionTime"]
