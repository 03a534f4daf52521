"""maxExecutionTime is wall clock from the run's acceptance, across kills and a lost Job, with a hard stop.

The run's only model call hangs, so nothing but the budget can end it. Its runner is SIGKILLed and its
Job deleted: the old behaviour (each pod counting execution time from its checkpoint, each new Job
getting a fresh activeDeadlineSeconds) ran well past the budget; now it ends TimedOut by the deadline.
"""

from datetime import datetime, timedelta

import pytest

from tests.e2e.runs import needs_scripted_model
from tests.harness.agentruns import agent_run, agentruns_path, runner_pods, wait_for, wait_for_end, wait_for_status
from tests.harness.local_cluster import LocalCluster
from tests.harness.model_server import Hang, by_turn
from tests.harness.nodeagent.kube import JsonObject, KubeClient, namespaced_path

pytestmark = pytest.mark.e2e

BUDGET_SECONDS = 24
# How late the end may be written after the deadline: the operator's look at the deadline plus its write.
END_GRACE_SECONDS = 3.0


def moment(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def job(kube: KubeClient, cluster: LocalCluster, name: str) -> JsonObject | None:
    return await kube.get(namespaced_path("batch/v1", "jobs", cluster.namespace, f"{name}-runner"))


async def test_a_run_killed_and_its_job_lost_ends_timed_out_by_its_wall_clock_deadline(cluster, kube):
    needs_scripted_model(cluster)
    assert cluster.model_server is not None
    cluster.model_server.script = by_turn([Hang()])
    run = agent_run("late", cluster, maxExecutionTime=f"{BUDGET_SECONDS}s", streaming={"enabled": False})
    run["spec"]["model"]["requestTimeout"] = "1h"
    await kube.create(agentruns_path(cluster.namespace), run)

    accepted = await wait_for_status(
        kube, "late", lambda s: bool((s.get("budget") or {}).get("deadline")), "a deadline"
    )
    clock_start = moment(accepted["budget"]["clockStartTime"])
    deadline = moment(accepted["budget"]["deadline"])
    assert deadline - clock_start == timedelta(seconds=BUDGET_SECONDS)
    first_job = await job(kube, cluster, "late")
    assert first_job is not None
    assert first_job["spec"]["activeDeadlineSeconds"] <= BUDGET_SECONDS

    # Time pending and time in the hung call count; then the runner is killed and its Job is lost.
    await wait_for_status(kube, "late", lambda s: s.get("phase") == "Running", "Running")
    [pod] = await runner_pods(kube, "late")
    cluster.node.kill_pod_process(cluster.namespace, pod["metadata"]["name"])
    await kube.delete(namespaced_path("batch/v1", "jobs", cluster.namespace, "late-runner"))

    async def recreated() -> JsonObject | None:
        found = await job(kube, cluster, "late")
        return found if found and found["metadata"]["uid"] != first_job["metadata"]["uid"] else None

    second_job = await wait_for(recreated, "the lost Job recreated", timeout=20)
    created = moment(second_job["metadata"]["creationTimestamp"])
    # The new Job's hard stop is the budget left, never a fresh maxExecutionTime: it ends by the deadline
    # (creationTimestamp has whole seconds, so allow the one second it may have been rounded down by).
    assert created + timedelta(seconds=second_job["spec"]["activeDeadlineSeconds"]) <= deadline + timedelta(seconds=1)
    assert second_job["spec"]["activeDeadlineSeconds"] < BUDGET_SECONDS - 2
    env = {e["name"]: e.get("value") for e in second_job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert moment(env["AGENTRUN_DEADLINE"]) == deadline  # the same absolute deadline for every pod

    status = await wait_for_end(kube, "late", timeout=BUDGET_SECONDS + 20)
    assert status["phase"] == "TimedOut", status
    assert status["restarts"] >= 1, status
    ended = moment(status["completionTime"])
    assert ended <= deadline + timedelta(seconds=END_GRACE_SECONDS), (ended, deadline)
    assert ended - clock_start >= timedelta(seconds=BUDGET_SECONDS * 0.75)  # not before the soft-deadline margin
