"""The node agent under the real Job controller: exit codes, graceful deletion, eviction, deadlines, suspension,
chaos, as a kubelet reports them."""

import signal
from pathlib import Path

import pytest

from tests.integration.node_env import node_env

pytestmark = pytest.mark.integration

# Sleeps until signalled; says so on SIGTERM, then exits 143 like a process that does not handle it.
SLEEPER = """
    import os, signal, sys, time
    def on_term(signum, frame):
        print("got SIGTERM", flush=True)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
    signal.signal(signal.SIGTERM, on_term)
    print("started", flush=True)
    time.sleep(60)
"""

# Sleeps the first time; exits 0 once its marker file exists (the second pod, after a replacement).
SECOND_POD_SUCCEEDS = """
    import os, pathlib, signal, sys, time
    marker = pathlib.Path(os.environ["MARKER"])
    if marker.exists():
        sys.exit(0)
    marker.write_text("first pod was here")
    print("started", flush=True)
    time.sleep(60)
"""


@pytest.fixture
async def env(testbed, namespace, tmp_path: Path):
    async with node_env(testbed, namespace, tmp_path) as running:
        yield running


def condition_types(job):
    return [c["type"] for c in job["status"]["conditions"] if c["status"] == "True"]


def exit_code(pod):
    return pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"]


def marker_env(tmp_path):
    return {"env": [{"name": "MARKER", "value": str(tmp_path / "marker")}]}


async def test_failed_pods_are_replaced_until_the_backoff_limit_then_the_job_fails(env):
    await env.job("flaky", "raise SystemExit(1)", backoffLimit=2)

    failed = await env.job_condition("flaky", "Failed")
    job = await env.get_job("flaky")
    assert failed["reason"] == "BackoffLimitExceeded"
    assert condition_types(job) == ["FailureTarget", "Failed"]
    assert job["status"].get("failed", 0) == 3
    pods = await env.pods("flaky")
    assert len(pods) == 3
    assert {p["status"]["phase"] for p in pods} == {"Failed"}
    assert {exit_code(p) for p in pods} == {1}
    assert {p["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] for p in pods} == {"Error"}


async def test_pod_failure_policy_fails_the_job_at_once_on_a_listed_exit_code(env):
    policy = {
        "rules": [{"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [3]}}]
    }
    await env.job("invalid", "raise SystemExit(3)", backoffLimit=5, podFailurePolicy=policy)

    failed = await env.job_condition("invalid", "Failed")
    assert failed["reason"] == "PodFailurePolicy"
    assert "exit code 3" in failed["message"]
    assert len(await env.pods("invalid")) == 1
    assert (await env.get_job("invalid"))["status"].get("failed", 0) == 1


async def test_eviction_adds_disruption_target_and_an_ignore_rule_does_not_count_it(env, tmp_path):
    policy = {"rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]}
    await env.job("evicted", SECOND_POD_SUCCEEDS, container=marker_env(tmp_path), podFailurePolicy=policy)
    first = await env.running_pod("evicted")

    await env.kube.evict(env.namespace, first)

    await env.job_condition("evicted", "Complete")
    job = await env.get_job("evicted")
    assert job["status"].get("failed", 0) == 0  # backoffLimit 0, yet the Job did not fail
    assert job["status"]["succeeded"] == 1
    runtime = env.node.runtime(env.namespace, first)
    assert runtime.exit_code == 143
    assert len(env.node.job_runtimes(env.namespace, "evicted")) == 2


async def test_active_deadline_sends_sigterm_then_sigkill_after_the_grace_period(env):
    stubborn = SLEEPER.replace("os.kill(os.getpid(), signal.SIGTERM)", "pass  # ignore it")
    # 3 s: time for the script to install its SIGTERM handler even on a loaded machine.
    await env.job("slow", stubborn, activeDeadlineSeconds=3, pod={"terminationGracePeriodSeconds": 1})
    pod = await env.running_pod("slow")

    failed = await env.job_condition("slow", "Failed")
    assert failed["reason"] == "DeadlineExceeded"
    assert condition_types(await env.get_job("slow")) == ["FailureTarget", "Failed"]
    runtime = env.node.runtime(env.namespace, pod)
    assert runtime.exit_code == 137
    assert env.node.read_log(env.namespace, pod) == "started\ngot SIGTERM\n"


async def test_suspend_terminates_the_pod_without_counting_a_failure_and_resume_starts_a_new_one(env, tmp_path):
    await env.job("pausable", SECOND_POD_SUCCEEDS, container=marker_env(tmp_path))
    first = await env.running_pod("pausable")

    await env.kube.merge_patch(env.path("batch/v1", "jobs", "pausable"), {"spec": {"suspend": True}})
    suspended = await env.job_condition("pausable", "Suspended")
    assert suspended["reason"] == "JobSuspended"
    await env.node.wait_finished(env.namespace, first)
    assert env.node.runtime(env.namespace, first).exit_code == 143

    async def settled():
        job = await env.get_job("pausable")
        status = job["status"]
        return job if status.get("active", 0) == 0 and status.get("terminating", 0) == 0 else None

    job = await env.eventually(settled, "the suspended job to have no active pods")
    assert job["status"].get("failed", 0) == 0

    await env.kube.merge_patch(env.path("batch/v1", "jobs", "pausable"), {"spec": {"suspend": False}})
    await env.job_condition("pausable", "Complete")
    job = await env.get_job("pausable")
    resumed = next(c for c in job["status"]["conditions"] if c["type"] == "Suspended")
    assert (resumed["status"], resumed["reason"]) == ("False", "JobResumed")
    assert (job["status"].get("failed", 0), job["status"]["succeeded"]) == (0, 1)


async def test_deleting_a_pod_kills_its_process_and_the_job_starts_a_replacement(env, tmp_path):
    await env.job("deleted", SECOND_POD_SUCCEEDS, container=marker_env(tmp_path), backoffLimit=1)
    first = await env.running_pod("deleted")

    await env.kube.delete(env.path("v1", "pods", first))

    await env.job_condition("deleted", "Complete")
    assert env.node.runtime(env.namespace, first).exit_code == 143
    job = await env.get_job("deleted")
    assert (job["status"].get("failed", 0), job["status"]["succeeded"]) == (1, 1)
    names = {p["metadata"]["name"] for p in await env.pods("deleted")}
    assert first not in names  # gone once kubelet and the Job controller let go of it


async def test_sigkilled_container_exits_137_and_a_replacement_pod_runs(env, tmp_path):
    await env.job("crashy", SECOND_POD_SUCCEEDS, container=marker_env(tmp_path), backoffLimit=1)
    first = await env.running_pod("crashy")

    env.node.kill_pod_process(env.namespace, first, signal.SIGKILL)

    await env.job_condition("crashy", "Complete")
    pods = {p["metadata"]["name"]: p for p in await env.pods("crashy")}
    assert pods[first]["status"]["phase"] == "Failed"
    assert exit_code(pods[first]) == 137
    assert len(pods) == 2
    assert (await env.get_job("crashy"))["status"].get("failed", 0) == 1


async def test_deleting_the_job_terminates_its_pods(env):
    await env.job("doomed", SLEEPER)
    pod = await env.running_pod("doomed")

    # As kubectl deletes: in the background. A plain DELETE of a batch/v1 Job orphans its pods.
    await env.kube.request("DELETE", env.path("batch/v1", "jobs", "doomed"), body={"propagationPolicy": "Background"})

    runtime = env.node.runtime(env.namespace, pod)
    await env.eventually(lambda: _finished(runtime), "the pod's process to end")
    assert runtime.exit_code == 143
    await env.eventually(lambda: _no_pods(env, "doomed"), "the orphaned pod to be collected")


async def test_on_failure_restarts_the_container_in_place_and_counts_restarts(env, tmp_path):
    script = """
        import os, pathlib
        counter = pathlib.Path(os.environ["MARKER"])
        attempts = int(counter.read_text()) + 1 if counter.exists() else 1
        counter.write_text(str(attempts))
        raise SystemExit(0 if attempts == 3 else 1)
    """
    await env.job("inplace", script, container=marker_env(tmp_path), pod={"restartPolicy": "OnFailure"}, backoffLimit=3)

    await env.job_condition("inplace", "Complete")
    [pod] = await env.pods("inplace")
    assert pod["status"]["containerStatuses"][0]["restartCount"] == 2
    assert pod["status"]["phase"] == "Succeeded"


async def _finished(runtime):
    return runtime.finished.is_set()


async def _no_pods(env, job):
    return not await env.pods(job)


async def test_finished_job_is_deleted_after_its_ttl_with_its_pods(env):
    await env.job("shortlived", "print('done')", ttlSecondsAfterFinished=0)

    async def gone():
        return await env.kube.get(env.path("batch/v1", "jobs", "shortlived")) is None

    await env.eventually(gone, "the finished job to be deleted")
    await env.eventually(lambda: _no_pods(env, "shortlived"), "its pod to be collected")
