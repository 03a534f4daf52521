"""Every phase transition, driven by the real Job controller, pod status and the runner's progress reports.

The test plays the kubelet (pod status) and the runner (its progress report); the Job's conditions
(DeadlineExceeded, BackoffLimitExceeded, PodFailurePolicy) are the real Job controller's."""

from datetime import datetime, timedelta
from typing import Any

import pytest

from agentrun_api import conditions as c
from tests.harness.inprocess_operator import (
    Cluster,
    ShiftableClock,
    eventually,
    run_manifest,
    running_operator,
)

pytestmark = pytest.mark.integration


# A model whose calls are short enough for a run of one iteration to fit a budget of seconds.
FAST_MODEL = {"name": "gpt-4.1-mini", "apiKeySecretRef": {"name": "openai", "key": "api-key"}, "requestTimeout": "1s"}


def job_failure_reason(cluster: Cluster) -> str:
    """The reason of the Failed condition the real Job controller wrote on q3's Job."""
    job = cluster.get("Job", "q3-runner")
    assert job is not None
    failed = next(c for c in job["status"]["conditions"] if c["type"] == "Failed" and c["status"] == "True")
    return str(failed["reason"])


async def started(cluster: Cluster, **spec: Any) -> str:
    cluster.add_api_key_secret()
    cluster.create(run_manifest(**spec))
    await eventually(lambda: cluster.get("Job", "q3-runner"), message="the Job")
    pod = await cluster.start_pod()
    await eventually(lambda: cluster.status().get("phase") == "Running", message="phase Running")
    return pod


def phase_and_reason(cluster: Cluster) -> tuple[str, str]:
    status = cluster.status()
    return status.get("phase", ""), status.get("reason", "")


async def test_the_deadline_ends_the_run_timed_out_and_the_jobs_hard_stop_is_not_later(cluster: Cluster) -> None:
    # The test's runner never reports an outcome: the operator ends the run at clockStartTime + 2 s, and
    # the Job's activeDeadlineSeconds is the same 2 s (no grace past the budget).
    async with running_operator(cluster):
        await started(cluster, maxExecutionTime="2s", maxIterations=1, model=FAST_MODEL)
        job = cluster.get("Job", "q3-runner")
        assert job is not None
        assert job["spec"]["activeDeadlineSeconds"] == 2
        await eventually(lambda: cluster.status().get("phase") == "TimedOut", timeout=30)
        status = cluster.status()
        budget = status["budget"]
        assert status["reason"] in (c.REASON_TIMED_OUT, c.REASON_DEADLINE_EXCEEDED)  # whichever looked first
        ended, deadline = (datetime.fromisoformat(t) for t in (status["completionTime"], budget["deadline"]))
        assert ended <= deadline + timedelta(seconds=2)
        failed = cluster.condition(c.FAILED)
        assert failed is not None
        assert (failed["status"], failed["reason"]) == ("True", status["reason"])


async def test_crashed_pod_counts_a_restart_and_the_resumed_runner_is_announced(cluster: Cluster) -> None:
    async with running_operator(cluster):
        pod = await started(cluster)
        cluster.report(
            iteration=5, pod=pod, lastCheckpoint={"iteration": 5, "time": "2026-01-01T00:00:00Z", "bytes": 100}
        )
        await eventually(lambda: cluster.status().get("iteration") == 5)
        cluster.fail_pod(pod)
        await eventually(lambda: cluster.status().get("restarts") == 1, message="one restart")
        second = await cluster.start_pod()  # the Job controller's replacement, after its back-off
        cluster.report(iteration=6, pod=second, resumedFromIteration=5)
        await eventually(lambda: cluster.status().get("iteration") == 6)
        await eventually(lambda: {"Restarted", c.REASON_RESUMED, "Checkpointed"} <= set(cluster.event_reasons()))
        # The progress and the pods reach the operator by separate watches: the replacement's report can be
        # mirrored before its pod is seen running.
        await eventually(lambda: cluster.status().get("phase") == "Running", message="Running again")


async def test_backoff_limit_reached_fails_the_run(cluster: Cluster) -> None:
    async with running_operator(cluster):
        pod = await started(cluster, retries={"maxRestarts": 1})
        cluster.fail_pod(pod)
        second = await cluster.start_pod()  # the Job controller's replacement, after its back-off
        cluster.fail_pod(second)
        await eventually(lambda: phase_and_reason(cluster) == ("Failed", c.REASON_BACKOFF_LIMIT), timeout=30)
        assert job_failure_reason(cluster) == "BackoffLimitExceeded"


async def test_runner_exit_with_invalid_config_fails_the_run_as_invalid_spec(cluster: Cluster) -> None:
    async with running_operator(cluster):
        pod = await started(cluster)
        cluster.fail_pod(pod, exit_code=3)
        await eventually(lambda: phase_and_reason(cluster) == ("Failed", c.REASON_INVALID_SPEC), timeout=30)
        assert job_failure_reason(cluster) == "PodFailurePolicy"


async def test_silent_runner_is_restarted_then_the_run_fails_progress_deadline_exceeded(
    cluster: Cluster,
) -> None:
    clock = ShiftableClock()
    async with running_operator(cluster, clock=clock):
        pod = await started(cluster, progressDeadline="60s", retries={"maxRestarts": 1})
        cluster.report(iteration=2, pod=pod)
        await eventually(lambda: cluster.status().get("iteration") == 2)
        clock.advance(61)
        # The kubelet stops the deleted pod's runner; the Job controller then lets the pod go.
        await eventually(lambda: pod in cluster.play_kubelet(), message="the silent pod being deleted")
        await eventually(lambda: cluster.get("Pod", pod) is None, message="the silent pod deleted")
        await eventually(lambda: c.REASON_NO_PROGRESS in cluster.event_reasons())
        # The Job controller counts the replaced pod and starts another, which stays silent too.
        second = await cluster.start_pod()
        await eventually(lambda: cluster.status().get("restarts") == 1)
        assert cluster.get("Pod", second) is not None
        clock.advance(61)
        await eventually(lambda: phase_and_reason(cluster) == ("Failed", c.REASON_NO_PROGRESS))
        job = cluster.get("Job", "q3-runner")
        assert job is not None
        assert job["spec"]["suspend"] is True  # the runner was stopped


async def test_lost_job_is_recreated_while_restarts_remain(cluster: Cluster) -> None:
    clock = ShiftableClock()
    async with running_operator(cluster, clock=clock):
        await started(cluster, retries={"maxRestarts": 1})
        first_uid = cluster.get("Job", "q3-runner")["metadata"]["uid"]  # type: ignore[index]
        cluster.delete("Job", "q3-runner")
        recreated = await eventually(
            lambda: (
                (job := cluster.get("Job", "q3-runner")) is not None and job["metadata"]["uid"] != first_uid and job
            ),
            message="a new Job",
        )
        assert recreated["metadata"]["annotations"]["agentrun.dev/restarts-before"] == "1"
        await eventually(lambda: cluster.status().get("restarts") == 1)
        cluster.delete("Job", "q3-runner")
        await eventually(lambda: phase_and_reason(cluster) == ("Failed", c.REASON_RUNNER_LOST))


async def test_operator_stops_a_run_over_its_token_budget_and_keeps_the_result(cluster: Cluster) -> None:
    async with running_operator(cluster):
        pod = await started(cluster, tokenBudget=1000)
        cluster.report(
            iteration=8,
            pod=pod,
            usage={"promptTokens": 900, "completionTokens": 300, "totalTokens": 1200},
            result={"summary": "partial answer", "ref": "configmap/q3-ckpt-0#result", "bytes": 14},
        )
        await eventually(lambda: phase_and_reason(cluster) == ("Failed", c.REASON_TOKEN_BUDGET))
        assert cluster.status()["result"]["summary"] == "partial answer"
        assert cluster.get("Job", "q3-runner")["spec"]["suspend"] is True  # type: ignore[index]


async def test_suspend_pauses_resume_continues_and_cancel_ends_cancelled(cluster: Cluster) -> None:
    async with running_operator(cluster):
        pod = await started(cluster)
        cluster.patch("AgentRun", "q3", {"spec": {"suspend": True}})
        await eventually(lambda: cluster.status().get("phase") == "Suspended")
        await eventually(lambda: cluster.get("Job", "q3-runner")["spec"]["suspend"] is True)  # type: ignore[index]
        # The Job controller deletes the suspended Job's pods; the kubelet stops them.
        await eventually(lambda: cluster.pod_gone(pod), message="the suspended Job's pod gone")

        cluster.patch("AgentRun", "q3", {"spec": {"suspend": False}})
        await eventually(lambda: cluster.get("Job", "q3-runner")["spec"]["suspend"] is False)  # type: ignore[index]
        # Resuming restarts a Job's deadline timer: the operator gives it only the budget left (of 30m).
        assert cluster.get("Job", "q3-runner")["spec"]["activeDeadlineSeconds"] < 1800  # type: ignore[index]
        await eventually(lambda: cluster.status().get("phase") == "Pending")
        await cluster.start_pod()
        await eventually(lambda: cluster.status().get("phase") == "Running")
        await eventually(lambda: {c.REASON_SUSPENDED, c.REASON_RESUMED} <= set(cluster.event_reasons()))

        cluster.patch("AgentRun", "q3", {"spec": {"cancel": True}})
        await eventually(lambda: phase_and_reason(cluster) == ("Cancelled", c.REASON_CANCELLED))
        await eventually(lambda: cluster.get("Job", "q3-runner")["spec"]["suspend"] is True)  # type: ignore[index]
        failed = cluster.condition(c.FAILED)
        assert failed is not None
        assert failed["reason"] == c.REASON_CANCELLED


async def test_deleting_the_run_removes_all_its_children(cluster: Cluster) -> None:
    async with running_operator(cluster):
        pod = await started(cluster)
        cluster.delete("AgentRun", "q3")
        await eventually(lambda: cluster.get("AgentRun", "q3") is None, message="the AgentRun gone")
        for kind, name in [
            ("Job", "q3-runner"),
            ("Pod", pod),
            ("ConfigMap", "q3-runner-config"),
            ("ConfigMap", "q3-progress"),
            ("Secret", "q3-stream-token"),
            ("Role", "q3-runner"),
            ("Service", "q3-stream"),
        ]:
            await eventually(
                lambda kind=kind, name=name: cluster.get(kind, name) is None, message=f"{kind}/{name} gone"
            )


async def test_ttl_removes_job_and_pods_but_keeps_the_run_and_its_result(cluster: Cluster) -> None:
    clock = ShiftableClock()
    async with running_operator(cluster, clock=clock):
        pod = await started(cluster, ttlSecondsAfterFinished=600)
        cluster.report(
            iteration=3,
            pod=pod,
            outcome="Succeeded",
            result={"summary": "done", "ref": "configmap/q3-ckpt-0#result", "bytes": 4},
        )
        await eventually(lambda: cluster.status().get("phase") == "Succeeded")
        assert cluster.get("Job", "q3-runner") is not None
        clock.advance(601)
        await eventually(lambda: cluster.get("Job", "q3-runner") is None, message="the Job deleted")
        await eventually(lambda: cluster.get("Pod", pod) is None, message="its pod deleted")
        assert cluster.status()["phase"] == "Succeeded"
        assert cluster.status()["result"]["summary"] == "done"
        assert cluster.get("ConfigMap", "q3-progress") is not None
