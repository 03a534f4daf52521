"""The whole path on one machine: AgentRun in, Succeeded out, through the real operator, the local Job
executor and the real runner, with a model server scripted per test."""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.executor import MountNamespaceUnavailableError
from tests.harness.executor.kube import JsonObject, KubeClient, namespaced_path
from tests.harness.local_cluster import LocalCluster
from tests.harness.model_server import research_script

pytestmark = pytest.mark.e2e

AGENTRUNS = namespaced_path("agentrun.dev/v1alpha1", "agentruns", "default")


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    # Slow answers keep the run going long enough to kill its pod in the middle.
    try:
        async with LocalCluster(tmp_path, model_script=research_script(delay=0.4)) as running:
            await running.create_model_secret("model-key", "api-key")
            yield running
    except MountNamespaceUnavailableError as error:
        pytest.skip(str(error))


@pytest.fixture
async def kube(cluster: LocalCluster) -> AsyncIterator[KubeClient]:
    async with KubeClient(str(cluster.kubeconfig_path)) as client:
        yield client


def agent_run(name: str, cluster: LocalCluster, **spec: Any) -> JsonObject:
    return {
        "apiVersion": "agentrun.dev/v1alpha1",
        "kind": "AgentRun",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "instructions": "You are a careful research assistant.",
            "input": "Compare three vendors and write a report.",
            "model": {
                "name": cluster.model.model,
                "baseURL": cluster.model.base_url,
                "apiKeySecretRef": {"name": "model-key", "key": "api-key"},
            },
            "maxExecutionTime": "2m",
            "maxIterations": 10,
            **spec,
        },
    }


def runner_logs(cluster: LocalCluster) -> str:
    """Every pod's output, for an assertion message that explains a failed run."""
    return "\n".join(f"--- {ns}/{pod}\n{cluster.executor.read_log(ns, pod)}" for ns, pod in cluster.executor.pod_keys())


def needs_scripted_model(cluster: LocalCluster) -> None:
    if cluster.model.real:
        pytest.skip("needs the scripted model's slow, multi-step answers; a real endpoint (OPENAI_BASE_URL) is set")


async def wait_for(probe, what: str, timeout: float = 45.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last = None
    while loop.time() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def run_status(kube: KubeClient, name: str) -> JsonObject:
    run = await kube.get(f"{AGENTRUNS}/{name}")
    assert run is not None
    return run.get("status") or {}


async def runner_pods(kube: KubeClient, run: str) -> list[JsonObject]:
    pods = await kube.list(namespaced_path("v1", "pods", "default"))
    return [
        p for p in pods if (p["metadata"].get("labels") or {}).get("batch.kubernetes.io/job-name") == f"{run}-runner"
    ]


async def test_agent_run_succeeds_through_operator_executor_and_runner(cluster, kube):
    await kube.create(AGENTRUNS, agent_run("q1", cluster))

    async def succeeded():
        status = await run_status(kube, "q1")
        return status if status.get("phase") in ("Succeeded", "Failed", "TimedOut") else None

    status = await wait_for(succeeded, "run q1 to end")
    assert status["phase"] == "Succeeded", (status, runner_logs(cluster))
    assert status["iteration"] >= 1

    async def pod_succeeded():
        pods = await runner_pods(kube, "q1")
        return pods if [p["status"].get("phase") for p in pods] == ["Succeeded"] else None

    [pod] = await wait_for(pod_succeeded, "the runner pod to exit 0")
    log = await kube.session.get(
        f"{cluster.apiserver.url}{namespaced_path('v1', 'pods', 'default', pod['metadata']['name'])}/log"
    )
    assert log.status == 200
    assert await log.text() == cluster.executor.read_log("default", pod["metadata"]["name"])


async def test_run_resumes_from_its_checkpoint_after_the_runner_pod_is_sigkilled(cluster, kube):
    needs_scripted_model(cluster)
    await kube.create(AGENTRUNS, agent_run("q2", cluster, checkpoint={"store": "PersistentVolumeClaim"}))

    async def checkpointed():
        status = await run_status(kube, "q2")
        return status if (status.get("lastCheckpoint") or {}).get("iteration", 0) >= 2 else None

    await wait_for(checkpointed, "a checkpoint at iteration 2")
    [first] = await runner_pods(kube, "q2")
    cluster.executor.kill_pod_process("default", first["metadata"]["name"])

    async def ended():
        status = await run_status(kube, "q2")
        return status if status.get("phase") in ("Succeeded", "Failed", "TimedOut") else None

    status = await wait_for(ended, "run q2 to end")
    assert status["phase"] == "Succeeded", (status, runner_logs(cluster))
    assert status["restarts"] == 1
    assert cluster.executor.runtime("default", first["metadata"]["name"]).exit_code == 137
    second_log = cluster.executor.read_log("default", (await runner_pods(kube, "q2"))[-1]["metadata"]["name"])
    assert second_log  # the replacement ran the runner again


async def test_run_completes_when_the_operator_is_restarted_in_the_middle(cluster, kube):
    needs_scripted_model(cluster)
    await kube.create(AGENTRUNS, agent_run("q3", cluster))

    async def running():
        status = await run_status(kube, "q3")
        return status if status.get("phase") == "Running" else None

    await wait_for(running, "run q3 to be Running")
    await cluster.operator.restart(crash=True)

    async def ended():
        status = await run_status(kube, "q3")
        return status if status.get("phase") in ("Succeeded", "Failed", "TimedOut") else None

    status = await wait_for(ended, "run q3 to end")
    assert status["phase"] == "Succeeded", (status, runner_logs(cluster))
    assert cluster.operator.starts == 2
    assert len(await runner_pods(kube, "q3")) == 1  # the new operator adopted the Job, no second runner


async def test_evicted_runner_resumes_without_using_up_a_restart(cluster, kube):
    needs_scripted_model(cluster)
    await kube.create(AGENTRUNS, agent_run("q4", cluster, retries={"maxRestarts": 0}))

    async def checkpointed():
        status = await run_status(kube, "q4")
        return status if (status.get("lastCheckpoint") or {}).get("iteration", 0) >= 2 else None

    await wait_for(checkpointed, "a checkpoint at iteration 2")
    [first] = await runner_pods(kube, "q4")
    await cluster.executor.evict("default", first["metadata"]["name"])

    async def ended():
        status = await run_status(kube, "q4")
        return status if status.get("phase") in ("Succeeded", "Failed", "TimedOut") else None

    status = await wait_for(ended, "run q4 to end")
    assert status["phase"] == "Succeeded", (
        status,
        runner_logs(cluster),
    )  # maxRestarts 0, yet the eviction did not fail the run
    job = await kube.get(namespaced_path("batch/v1", "jobs", "default", "q4-runner"))
    assert job is not None
    assert job["status"]["failed"] == 0
    evicted, replacement = cluster.executor.job_runtimes("default", "q4-runner")
    assert evicted.name == first["metadata"]["name"]
    assert evicted.exit_code is not None
    await asyncio.wait_for(replacement.finished.wait(), 10)
    assert replacement.exit_code == 0
