"""The chart installed with Helm on the real control plane: its operator pods run the runs, through an upgrade,
a leader's deletion, and an uninstall and reinstall.

One release for the module (tests.harness.installed_chart): its operator watches every namespace, so no other
operator may run meanwhile; the release is uninstalled at the end of the module.
"""

import asyncio
import base64
import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.runs import assert_result
from tests.harness.agentruns import (
    agent_run,
    agentruns_path,
    requests_of,
    run_status,
    runner_pods,
    wait_for,
    wait_for_end,
    wait_for_status,
)
from tests.harness.chart import CHART_DIR
from tests.harness.installed_chart import ChartRelease, ground_values, merged_values
from tests.harness.local_cluster import LocalCluster
from tests.harness.model_server import research_script
from tests.harness.nodeagent.kube import KubeClient, namespaced_path
from tests.harness.podnet.resolver import ClusterResolver
from tests.harness.pool_runs import pool_status, pools_path, throttle_pool
from tests.harness.testbed import KubeTestbed

pytestmark = pytest.mark.e2e

TURNS = 5  # research_script's model calls for a run without fetches
CRDS = ("agentruns.agentrun.dev", "throttlepools.agentrun.dev", "clusterthrottlepools.agentrun.dev")


# The release with its stream gateway: two replicas behind their Service (the Ingress is created, no controller
# serves it here), the operator granting the gateway's ServiceAccount each streaming run's token.
VALUES = ground_values(gateway={"enabled": True, "route": {"host": "agents.test"}})


def values(**overrides: Any) -> dict[str, Any]:
    return merged_values(VALUES, overrides)


@pytest.fixture(scope="module")
def release(testbed: KubeTestbed) -> Iterator[ChartRelease]:
    release = ChartRelease(testbed)
    release.install(VALUES)
    yield release
    if release.installed():
        release.uninstall()


@pytest.fixture
async def runs(testbed: KubeTestbed, tmp_path: Path) -> AsyncIterator[LocalCluster]:
    """A namespace with the model Secret and a scripted model whose every answer takes 1.5 s (a run lasts ~8 s);
    no operator of its own: the release's runs it."""
    async with LocalCluster(testbed, tmp_path, model_script=research_script(delay=1.5), start_operator=False) as ground:
        await ground.create_model_secret("model-key", "api-key")
        yield ground


@pytest.fixture
async def kube(runs: LocalCluster) -> AsyncIterator[KubeClient]:
    async with KubeClient(str(runs.kubeconfig_path)) as client:
        yield client


async def create_run(kube: KubeClient, runs: LocalCluster, name: str) -> None:
    await kube.create(agentruns_path(runs.namespace), agent_run(name, runs, streaming={"enabled": False}))


async def wait_running(kube: KubeClient, name: str) -> dict[str, Any]:
    return await wait_for_status(kube, name, lambda s: s.get("phase") == "Running", "Running", 60)


async def jobs_of(kube: KubeClient, run: str) -> list[dict[str, Any]]:
    jobs = await kube.list(namespaced_path("batch/v1", "jobs", kube.namespace))
    return [
        job for job in jobs if any(owner.get("name") == run for owner in job["metadata"].get("ownerReferences") or [])
    ]


async def assert_ran_once(kube: KubeClient, runs: LocalCluster, name: str) -> None:
    """Succeeded with its result, one Job, one pod, no restart counted, and each model call made once."""
    status = await wait_for_end(kube, name, 90)
    assert status["phase"] == "Succeeded", status
    assert_result(status)
    assert status.get("restarts", 0) == 0, status
    assert len(await jobs_of(kube, name)) == 1
    assert len(await runner_pods(kube, name)) == 1
    assert runs.model_server is not None
    assert len(requests_of(runs.model_server, name)) == TURNS


def dashboard_metric_families() -> set[str]:
    """The metric families the chart's Grafana dashboard queries (a histogram's by its own name)."""
    dashboard = json.loads((CHART_DIR / "files" / "grafana-dashboard.json").read_text())
    names = set(re.findall(r"agentrun_[a-z_]+", json.dumps(dashboard)))
    return {re.sub(r"_(bucket|count|sum)$", "", name) for name in names}


async def test_the_metrics_service_serves_the_figures_the_dashboard_queries(
    release: ChartRelease, runs: LocalCluster, kube: KubeClient
) -> None:
    await release.wait_for_leader()
    await create_run(kube, runs, "measured")
    await assert_ran_once(kube, runs, "measured")

    # Scraped as Prometheus would: the Service's name, resolved by the cluster DNS, routed to the operator pod.
    url = f"http://{release.name}-metrics.{release.namespace}.svc:8000/metrics"
    connector = aiohttp.TCPConnector(resolver=ClusterResolver(release.testbed.network_plan.dns_ip))
    async with aiohttp.ClientSession(connector=connector) as session, session.get(url) as response:
        assert response.status == 200
        text = await response.text()
    families = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    assert dashboard_metric_families() <= families, dashboard_metric_families() - families
    samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert float(samples["agentrun_run_duration_seconds_count"]) >= 1
    assert float(samples["agentrun_status_writes_total"]) >= 1


async def test_a_throttled_runner_draws_its_permits_from_the_leader_through_the_permits_service(
    release: ChartRelease, runs: LocalCluster, kube: KubeClient
) -> None:
    await release.wait_for_leader()
    await kube.create(
        pools_path(runs.namespace), throttle_pool("shared", runs.namespace, max_in_flight=1, requests_per_minute=600)
    )
    throttle = {"enabled": True, "pool": "shared", "requestsPerMinute": 600, "maxSecondsToWaitInQueue": 60}
    run = agent_run("pooled", runs, streaming={"enabled": False}, throttle=throttle)
    await kube.create(agentruns_path(runs.namespace), run)

    await assert_ran_once(kube, runs, "pooled")

    # The runner was given the chart's permits Service address; the leader's permit server granted its calls.
    async def granted() -> dict[str, Any] | None:
        status = await pool_status(kube, "shared")
        return status if status.get("grantedLastMinute", 0) >= TURNS else None

    await wait_for(granted, "the pool's status to count the run's permits", 30)


async def test_a_reader_follows_a_run_through_the_gateway_pods_by_the_gateways_service_name(
    release: ChartRelease, runs: LocalCluster, kube: KubeClient
) -> None:
    await release.wait_for_leader()
    gateways = release.pods("stream-gateway")
    assert len(gateways) == 2
    assert all(_ready(pod) for pod in gateways), gateways  # their readiness probes passed
    run = agent_run("followed", runs, streaming={"enabled": True})
    await kube.create(agentruns_path(runs.namespace), run)
    await wait_running(kube, "followed")
    secret = await kube.get(namespaced_path("v1", "secrets", runs.namespace, "followed-stream-token"))
    assert secret is not None
    token = base64.b64decode(secret["data"]["token"]).decode()

    service = f"{release.name}-stream-gateway"
    answer = release.testbed.admin.get(f"/api/v1/namespaces/{release.namespace}/services/{service}")
    answer.raise_for_status()
    port = answer.json()["spec"]["ports"][0]["port"]
    url = f"http://{service}.{release.namespace}.svc:{port}/runs/{runs.namespace}/followed/events"
    connector = aiohttp.TCPConnector(resolver=ClusterResolver(release.testbed.network_plan.dns_ip))
    events: list[str] = []
    async with (
        aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session,
        session.get(url, headers={"Authorization": f"Bearer {token}"}) as response,
    ):
        assert response.status == 200, await response.text()
        async for line in response.content:
            if line.startswith(b"event:"):
                events.append(line.decode().split(":", 1)[1].strip())
                if events[-1] == "finished":
                    break
    assert "iteration" in events
    assert events[-1] == "finished", events
    await assert_ran_once(kube, runs, "followed")
    assert release.rbac_refusals() == []


def _ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


async def test_an_upgrade_to_changed_values_keeps_a_running_run_running(
    release: ChartRelease, runs: LocalCluster, kube: KubeClient
) -> None:
    first = await release.wait_for_leader()
    await create_run(kube, runs, "through-upgrade")
    await wait_running(kube, "through-upgrade")

    # Changed values change the operator's pod template: the Deployment replaces the operator pod (Recreate).
    await asyncio.to_thread(release.upgrade, values(operator={"statusMinIntervalSeconds": 0.3}))
    assert [entry["revision"] for entry in await asyncio.to_thread(release.history)] == [1, 2]
    assert (await run_status(kube, "through-upgrade")).get("phase") == "Running"
    second = await release.wait_for_leader(other_than=first)

    await assert_ran_once(kube, runs, "through-upgrade")
    assert release.lease_holder() == second
    assert release.rbac_refusals() == []


async def test_the_standby_replica_takes_over_when_the_leaders_pod_is_deleted(
    release: ChartRelease, runs: LocalCluster, kube: KubeClient
) -> None:
    await asyncio.to_thread(release.upgrade, values(replicaCount=2))
    await wait_for(lambda: _true(len(release.pods()) == 2), "two operator pods", 60)
    leader = await release.wait_for_leader()
    (standby,) = [p["metadata"]["name"] for p in release.pods() if p["metadata"]["name"] != leader]
    await create_run(kube, runs, "before-hand-over")
    await wait_running(kube, "before-hand-over")

    deleted_at = time.monotonic()
    answer = release.testbed.admin.delete(f"/api/v1/namespaces/{release.namespace}/pods/{leader}")
    answer.raise_for_status()
    assert await release.wait_for_leader(other_than=leader) == standby
    lease_taken_at = time.monotonic()
    await create_run(kube, runs, "after-hand-over")
    await wait_for(lambda: _jobs_exist(kube, "after-hand-over"), "the new run's Job", 60)
    job_at = time.monotonic()
    print(
        f"\nleader hand-over: leader pod deleted -> standby holds the Lease {lease_taken_at - deleted_at:.2f} s; "
        f"-> a new run's Job exists {job_at - deleted_at:.2f} s"
    )

    await assert_ran_once(kube, runs, "before-hand-over")
    await assert_ran_once(kube, runs, "after-hand-over")
    assert release.rbac_refusals() == []


async def test_uninstall_keeps_runs_and_results_and_a_reinstall_supervises_them_again(
    release: ChartRelease, runs: LocalCluster, kube: KubeClient
) -> None:
    await release.wait_for_leader()
    await create_run(kube, runs, "done-before")
    await assert_ran_once(kube, runs, "done-before")
    await create_run(kube, runs, "in-flight")
    await wait_running(kube, "in-flight")
    assert release.rbac_refusals() == []

    await asyncio.to_thread(release.uninstall)
    assert not await asyncio.to_thread(release.installed)
    assert release.pods() == []
    admin = release.testbed.admin
    for crd in CRDS:  # crds.keep: the CRDs and so every AgentRun outlive the release
        assert admin.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd}").status_code == 200
    assert_result(await run_status(kube, "done-before"))
    assert (await run_status(kube, "in-flight")).get("phase") == "Running"  # nobody supervises it now

    reinstalled_at = time.monotonic()
    await asyncio.to_thread(release.install, VALUES)
    await release.wait_for_leader()
    print(f"\nreinstall -> leading: {time.monotonic() - reinstalled_at:.1f} s")
    await assert_ran_once(kube, runs, "in-flight")
    assert_result(await run_status(kube, "done-before"))


async def _true(value: bool) -> bool:
    return value


async def _jobs_exist(kube: KubeClient, run: str) -> bool:
    return bool(await jobs_of(kube, run))
