"""Throttle pools end to end: the real operator (with its permit server), real runner processes under
the local Job executor, and the scripted model server counting how many calls it answers at once."""

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.harness.executor import MountNamespaceUnavailableError
from tests.harness.executor.kube import JsonObject, KubeClient, namespaced_path
from tests.harness.local_cluster import LocalCluster
from tests.harness.model_server import ChatRequest, research_script

pytestmark = pytest.mark.e2e

NAMESPACE = "default"
AGENTRUNS = namespaced_path("agentrun.dev/v1alpha1", "agentruns", NAMESPACE)
POOLS = namespaced_path("agentrun.dev/v1alpha1", "throttlepools", NAMESPACE)
ENDED = ("Succeeded", "Failed", "TimedOut", "Cancelled")
T = TypeVar("T")


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    # Each answer takes a while, so calls of different runs would overlap if nothing held them back.
    try:
        async with LocalCluster(tmp_path, model_script=research_script(delay=0.4)) as running:
            if running.model.real:
                pytest.skip("counts calls in flight at the scripted model server; OPENAI_BASE_URL is set")
            await running.create_model_secret("model-key", "api-key")
            yield running
    except MountNamespaceUnavailableError as error:
        pytest.skip(str(error))


@pytest.fixture
async def kube(cluster: LocalCluster) -> AsyncIterator[KubeClient]:
    async with KubeClient(str(cluster.kubeconfig_path)) as client:
        yield client


def throttled_run(name: str, cluster: LocalCluster, pool: str) -> JsonObject:
    return {
        "apiVersion": "agentrun.dev/v1alpha1",
        "kind": "AgentRun",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "instructions": "You are a careful research assistant.",
            # Each run's own task, so the model server's log tells the runs apart.
            "input": f"Compare three vendors and write a report ({name}).",
            "model": {
                "name": cluster.model.model,
                "baseURL": cluster.model.base_url,
                "apiKeySecretRef": {"name": "model-key", "key": "api-key"},
            },
            "maxExecutionTime": "2m",
            "maxIterations": 10,
            # Pods share the host's loopback here, so concurrent runners cannot all serve a stream on
            # its fixed port; the pool's credential, the stream token, is minted all the same.
            "streaming": {"enabled": False},
            # The run's own limits would let all its calls and every run's calls go at once.
            "throttle": {"enabled": True, "pool": pool, "maxConcurrentRequests": 4, "requestsPerMinute": 600},
        },
    }


async def wait_for(probe: Callable[[], Awaitable[T | None]], what: str, timeout: float = 45.0) -> T:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        found = await probe()
        if found:
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def ended_status(kube: KubeClient, name: str) -> JsonObject:
    async def probe() -> JsonObject | None:
        run = await kube.get(f"{AGENTRUNS}/{name}")
        status: JsonObject = (run or {}).get("status") or {}
        return status if status.get("phase") in ENDED else None

    return await wait_for(probe, f"run {name} to end")


def run_of(request: ChatRequest) -> str:
    task = next(m["content"] for m in request.messages if m.get("role") == "user")
    return str(task).rsplit("(", 1)[-1].rstrip(").")


async def runner_log(cluster: LocalCluster, kube: KubeClient, run: str) -> str:
    pods = await kube.list(namespaced_path("v1", "pods", NAMESPACE))
    names = [
        p["metadata"]["name"]
        for p in pods
        if (p["metadata"].get("labels") or {}).get("batch.kubernetes.io/job-name") == f"{run}-runner"
    ]
    return "".join(cluster.executor.read_log(NAMESPACE, name) for name in names)


async def test_runs_sharing_a_pool_of_one_never_call_the_model_at_once_and_all_succeed(
    cluster: LocalCluster, kube: KubeClient
) -> None:
    pool: dict[str, Any] = {
        "apiVersion": "agentrun.dev/v1alpha1",
        "kind": "ThrottlePool",
        "metadata": {"name": "shared", "namespace": NAMESPACE},
        "spec": {"maxRequestsInFlight": 1, "requestsPerMinute": 6000, "burstRequests": 10},
    }
    await kube.create(POOLS, pool)
    runs = ["pool-a", "pool-b", "pool-c"]
    for name in runs:
        await kube.create(AGENTRUNS, throttled_run(name, cluster, "shared"))

    statuses = {name: await ended_status(kube, name) for name in runs}
    assert {name: s["phase"] for name, s in statuses.items()} == dict.fromkeys(runs, "Succeeded"), statuses

    server = cluster.model_server
    assert server is not None
    calls: dict[str, list[ChatRequest]] = {}
    for request in server.requests:
        calls.setdefault(run_of(request), []).append(request)
    assert sorted(calls) == runs
    # The runs were live at the same time (each one's calls interleave with another's)...
    spans = sorted((c[0].received_at, c[-1].received_at) for c in calls.values())
    assert any(later_start < earlier_end for (_, earlier_end), (later_start, _) in itertools.pairwise(spans))
    # ...yet the pool let only one call at a time reach the model.
    assert server.max_in_flight == 1
    # Every granted permit was given back: nothing in flight, nothing queued.
    await wait_for(lambda: _pool_idle(kube), "the pool's status to show it idle", timeout=10)


async def _pool_idle(kube: KubeClient) -> JsonObject | None:
    body = await kube.get(f"{POOLS}/shared")
    status: JsonObject = (body or {}).get("status") or {}
    return status if status.get("inFlight") == 0 and status.get("queueDepth") == 0 else None


async def test_a_run_naming_a_pool_that_does_not_exist_runs_on_its_own_limits_and_says_so(
    cluster: LocalCluster, kube: KubeClient
) -> None:
    await kube.create(AGENTRUNS, throttled_run("lonely", cluster, "no-such-pool"))

    status = await ended_status(kube, "lonely")

    assert status["phase"] == "Succeeded", status
    log = await runner_log(cluster, kube, "lonely")
    assert "no ThrottlePool 'no-such-pool' in namespace 'default'" in log
    assert "use only this run's own spec.throttle limits" in log
