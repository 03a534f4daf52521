"""The whole path on one machine: AgentRun in, Succeeded out, through the real operator, the local Job
executor and the real runner, with a model server scripted per test."""

import pytest

from tests.e2e.runs import needs_scripted_model, runner_logs
from tests.harness.agentruns import agent_run, agentruns_path, run_status, runner_pods, wait_for
from tests.harness.nodeagent.kube import namespaced_path

pytestmark = pytest.mark.e2e


async def test_agent_run_succeeds_through_operator_executor_and_runner(cluster, kube):
    await kube.create(agentruns_path(cluster.namespace), agent_run("q1", cluster))

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
    # kubectl logs' request: the API server fetches the log from the node agent's kubelet endpoint.
    log = await kube.request_text(f"{namespaced_path('v1', 'pods', cluster.namespace, pod['metadata']['name'])}/log")
    assert log == cluster.node.read_log(cluster.namespace, pod["metadata"]["name"])
    assert log


async def test_run_resumes_from_its_checkpoint_after_the_runner_pod_is_sigkilled(cluster, kube):
    needs_scripted_model(cluster)
    await kube.create(
        agentruns_path(cluster.namespace), agent_run("q2", cluster, checkpoint={"store": "PersistentVolumeClaim"})
    )

    async def checkpointed():
        status = await run_status(kube, "q2")
        return status if (status.get("lastCheckpoint") or {}).get("iteration", 0) >= 2 else None

    await wait_for(checkpointed, "a checkpoint at iteration 2")
    [first] = await runner_pods(kube, "q2")
    cluster.node.kill_pod_process(cluster.namespace, first["metadata"]["name"])

    async def ended():
        status = await run_status(kube, "q2")
        return status if status.get("phase") in ("Succeeded", "Failed", "TimedOut") else None

    status = await wait_for(ended, "run q2 to end")
    assert status["phase"] == "Succeeded", (status, runner_logs(cluster))
    assert status["restarts"] == 1
    assert cluster.node.runtime(cluster.namespace, first["metadata"]["name"]).exit_code == 137
    second_log = cluster.node.read_log(cluster.namespace, (await runner_pods(kube, "q2"))[-1]["metadata"]["name"])
    assert second_log  # the replacement ran the runner again


async def test_run_completes_when_the_operator_is_restarted_in_the_middle(cluster, kube):
    needs_scripted_model(cluster)
    await kube.create(agentruns_path(cluster.namespace), agent_run("q3", cluster))

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
    await kube.create(agentruns_path(cluster.namespace), agent_run("q4", cluster, retries={"maxRestarts": 0}))

    async def checkpointed():
        status = await run_status(kube, "q4")
        return status if (status.get("lastCheckpoint") or {}).get("iteration", 0) >= 2 else None

    await wait_for(checkpointed, "a checkpoint at iteration 2")
    [first] = await runner_pods(kube, "q4")
    await kube.evict(cluster.namespace, first["metadata"]["name"])

    async def ended():
        status = await run_status(kube, "q4")
        return status if status.get("phase") in ("Succeeded", "Failed", "TimedOut") else None

    status = await wait_for(ended, "run q4 to end")
    assert status["phase"] == "Succeeded", (
        status,
        runner_logs(cluster),
    )  # maxRestarts 0, yet the eviction did not fail the run
    job = await kube.get(namespaced_path("batch/v1", "jobs", cluster.namespace, "q4-runner"))
    assert job is not None
    assert job["status"].get("failed", 0) == 0  # the Job controller leaves a zero count out
    evicted, replacement = cluster.node.job_runtimes(cluster.namespace, "q4-runner")
    assert evicted.name == first["metadata"]["name"]
    assert evicted.exit_code is not None
    await cluster.node.wait_finished(cluster.namespace, replacement.name, timeout=10)
    assert replacement.exit_code == 0
