"""Chaos through the whole path: runner SIGKILLs at random points, operator crashes, pod deletion,
API server and model endpoint faults, suspend and cancel in the middle, a deadline in a hung call.

Each run fetches three sources from a tool server that counts executions per Idempotency-Key, so
every test asserts that nothing was lost (each fetch executed) and nothing duplicated (each key once,
no new keys minted on resume). ``AGENTRUN_SOAK=N`` multiplies the random-kill trials by N.
"""

import asyncio
import collections
import os
import random
from pathlib import Path

import kubernetes
import pytest

from tests.e2e.runs import (
    assert_each_source_fetched_once,
    assert_result,
    condition,
    conversation,
    fetching_run,
    fetching_script,
    kubectl,
    local_cluster,
    needs_scripted_model,
    tool_ledger,
    wait_for_iteration,
    with_model_faults,
)
from tests.harness.agentruns import (
    agentruns_path,
    requests_of,
    run_object,
    runner_pods,
    wait_for,
    wait_for_end,
    wait_for_status,
)
from tests.harness.local_cluster import LocalCluster
from tests.harness.model_server import Answer, Failure, Hang, Reply, Script, by_turn, call, research_script
from tests.harness.nodeagent.kube import KubeClient
from tests.harness.runner import ToolServer
from tests.harness.testbed import KubeTestbed

pytestmark = pytest.mark.e2e

SEED = int(os.environ.get("AGENTRUN_CHAOS_SEED", "20261122"))
SOAK = max(1, int(os.environ.get("AGENTRUN_SOAK", "0") or 0))
RANDOM_KILL_RUNS_PER_BATCH = 3


def answer_with(cluster: LocalCluster, script: Script) -> None:
    """Have the scripted model server answer with `script` (the test is skipped where a real model is set)."""
    needs_scripted_model(cluster)
    assert cluster.model_server is not None
    cluster.model_server.script = script


async def create_fetching_run(cluster: LocalCluster, kube: KubeClient, name: str) -> str:
    """Create run `name`, which fetches the tool server's sources; returns its uid."""
    created = await kube.create(agentruns_path(cluster.namespace), fetching_run(name, cluster))
    uid: str = created["metadata"]["uid"]
    return uid


async def start_reference_run(cluster: LocalCluster, kube: KubeClient, tools: ToolServer) -> str:
    """An uninterrupted run of the same script, to compare the disturbed runs' conversations with."""
    return await create_fetching_run(cluster, kube, "reference")


async def assert_same_conversation_as_reference(
    cluster: LocalCluster, kube: KubeClient, name: str, uid: str, reference_uid: str
) -> None:
    reference = await wait_for_end(kube, "reference")
    assert reference["phase"] == "Succeeded", reference
    assert cluster.model_server is not None
    assert conversation(cluster.model_server, name, uid) == conversation(
        cluster.model_server, "reference", reference_uid
    )


async def kill_runner_after(cluster: LocalCluster, kube: KubeClient, name: str, delay: float) -> bool:
    """SIGKILL the run's live runner process ``delay`` seconds after it started; False if there was none."""
    await asyncio.sleep(delay)
    for pod in await runner_pods(kube, name):
        runtime = cluster.node.runtime(cluster.namespace, pod["metadata"]["name"])
        if runtime.exit_code is None and pod["status"].get("phase") == "Running":
            cluster.node.kill_pod_process(cluster.namespace, pod["metadata"]["name"])
            return True
    return False


@pytest.mark.timeout(90 * SOAK)
async def test_runs_resume_without_loss_after_sigkills_at_random_points(cluster, kube, tools):
    answer_with(cluster, fetching_script(tools, delay=0.3))
    chooser = random.Random(SEED)
    reference_uid = await start_reference_run(cluster, kube, tools)
    kills: dict[str, int] = {}
    uids: dict[str, str] = {}
    for batch in range(SOAK):  # three runs at a time: enough overlap, within two cores
        names = [f"kill-{batch}-{trial}" for trial in range(RANDOM_KILL_RUNS_PER_BATCH)]
        for name in names:
            uids[name] = await create_fetching_run(cluster, kube, name)
        # Each run loses its runner once or twice, at seeded random moments of its ~3 s of work.
        plans = {name: sorted(chooser.uniform(0.2, 2.5) for _ in range(chooser.randint(1, 2))) for name in names}
        landed = await asyncio.gather(*(kill_by_plan(cluster, kube, name, plans[name]) for name in names))
        kills |= dict(zip(names, landed, strict=True))
        for name in names:
            status = await wait_for_end(kube, name)
            assert status["phase"] == "Succeeded", (name, plans[name], status)
            assert status["restarts"] == kills[name], (name, plans[name], status)
            assert_result(status)
            assert_each_source_fetched_once(tools, uids[name])
            await assert_same_conversation_as_reference(cluster, kube, name, uids[name], reference_uid)
    assert sum(kills.values()) >= len(kills)
    ledgers = [tool_ledger(tools, uid) for uid in uids.values()]
    print(
        f"random SIGKILLs (seed {SEED}): {sum(kills.values())} kills over {len(kills)} runs {kills}; "
        f"{sum(sum(ledger.executions.values()) for ledger in ledgers)} fetches executed, "
        f"{sum(sum(ledger.deliveries.values()) for ledger in ledgers)} delivered"
    )


async def kill_by_plan(cluster: LocalCluster, kube: KubeClient, name: str, delays: list[float]) -> int:
    """Wait until the run is Running, then SIGKILL its runner at each delay (from the last kill's
    replacement on); returns how many kills hit a live runner."""
    await wait_for_status(kube, name, lambda s: s.get("phase") == "Running", "Running")
    kills = 0
    for delay in delays:
        kills += await kill_runner_after(cluster, kube, name, delay)
        await wait_for(lambda: _live_runner(cluster, kube, name), f"{name}: a live runner", timeout=20)
    return kills


async def test_runner_killed_during_a_fetch_replays_its_key_and_the_tool_runs_once(cluster, kube, tools):
    answer_with(cluster, fetching_script(tools, delay=0.2))
    uid = await create_fetching_run(cluster, kube, "mid-fetch")
    await wait_for(lambda: _tool_in_flight(tools), "the slow fetch to start", timeout=30)
    [pod] = await runner_pods(kube, "mid-fetch")
    cluster.node.kill_pod_process(cluster.namespace, pod["metadata"]["name"])

    status = await wait_for_end(kube, "mid-fetch")
    assert status["phase"] == "Succeeded", status
    assert status["restarts"] == 1
    assert_result(status)
    ledger = assert_each_source_fetched_once(tools, uid)
    # The replacement asked again under the same key: delivered twice, executed once.
    assert max(ledger.deliveries.values()) == 2, ledger
    print(
        f"kill during a fetch: {sum(ledger.executions.values())} executed, {sum(ledger.deliveries.values())} delivered"
    )


async def _live_runner(cluster: LocalCluster, kube: KubeClient, name: str) -> bool:
    if (await run_object(kube, name)).get("status", {}).get("phase") in ("Succeeded", "Failed"):
        return True
    return any(
        cluster.node.runtime(cluster.namespace, p["metadata"]["name"]).exit_code is None
        for p in await runner_pods(kube, name)
        if p["status"].get("phase") == "Running"
    )


async def test_run_completes_once_when_the_operator_crashes_at_several_points(cluster, kube, tools):
    answer_with(cluster, fetching_script(tools, delay=0.3))
    reference_uid = await start_reference_run(cluster, kube, tools)
    uid = await create_fetching_run(cluster, kube, "crashy")
    await cluster.operator.restart(crash=True)  # before or while it creates the children
    await wait_for_status(kube, "crashy", lambda s: s.get("phase") == "Running", "Running")
    await cluster.operator.restart(crash=True)  # while the runner works
    await wait_for_iteration(kube, "crashy", 3)
    await cluster.operator.restart(crash=True)  # after the parallel fetches were checkpointed

    status = await wait_for_end(kube, "crashy")
    assert status["phase"] == "Succeeded", status
    assert status["restarts"] == 0
    assert_result(status)
    assert cluster.operator.starts == 4
    assert len(await runner_pods(kube, "crashy")) == 1  # every new operator adopted the Job
    assert_each_source_fetched_once(tools, uid)
    await assert_same_conversation_as_reference(cluster, kube, "crashy", uid, reference_uid)
    assert "Traceback" not in cluster.operator.log()


async def test_run_resumes_after_its_pod_is_deleted_with_kubectl(cluster, kube, tools):
    answer_with(cluster, fetching_script(tools, delay=0.3))
    uid = await create_fetching_run(cluster, kube, "deleted")
    await wait_for_iteration(kube, "deleted", 2)
    [first] = await runner_pods(kube, "deleted")
    code, out, err = await kubectl(cluster, "delete", "pod", first["metadata"]["name"], "--wait=false")
    assert code == 0, err
    assert "deleted" in out

    status = await wait_for_end(kube, "deleted")
    assert status["phase"] == "Succeeded", status
    assert_result(status)
    pods = await runner_pods(kube, "deleted")
    assert [p["metadata"]["name"] for p in pods] != [first["metadata"]["name"]]  # a replacement finished it
    assert status["restarts"] <= 1
    assert_each_source_fetched_once(tools, uid)


async def test_run_succeeds_through_api_server_errors_throttling_and_dropped_watches(
    testbed: KubeTestbed, tmp_path: Path, tools: ToolServer
) -> None:
    async with (
        local_cluster(testbed, tmp_path, fetching_script(tools, delay=0.3), operator_behind_proxy=True) as cluster,
        KubeClient(str(cluster.kubeconfig_path)) as kube,
    ):
        proxy = cluster.api_proxy
        assert proxy is not None
        uid = await create_fetching_run(cluster, kube, "flaky-api")
        await wait_for_status(kube, "flaky-api", lambda s: s.get("phase") == "Running", "Running")
        faults = proxy.faults
        # The operator's writes and lists (its requests go through the proxy; this test's own do not).
        writes_and_lists = ("patch", "update", "create", "list")
        errors = faults.inject(500, count=6, match=lambda r: r.verb in writes_and_lists)
        await asyncio.sleep(0.5)
        throttled = faults.inject(429, count=6, retry_after=1, match=lambda r: r.verb in writes_and_lists)
        dropped = faults.drop_watches()
        await asyncio.sleep(1.0)
        dropped += faults.drop_watches()

        status = await wait_for_end(kube, "flaky-api")
        assert status["phase"] == "Succeeded", (status, cluster.operator.log()[-5000:])
        assert status["restarts"] == 0
        assert_result(status)
        assert (errors.hits, throttled.hits) == (6, 6), (errors.hits, throttled.hits, proxy.requests.summary())
        assert dropped >= 2
        assert_each_source_fetched_once(tools, uid)
        assert "Traceback" not in cluster.operator.log()


async def test_run_succeeds_through_model_429_storms_500s_and_a_hang_past_the_request_timeout(cluster, kube, tools):
    faults: dict[int, list[Reply]] = {
        0: [Failure(429, retry_after="1")] * 3,  # a storm, each answer asking for a second of quiet
        2: [Failure(500), Failure(503)],
        3: [Hang()],  # past the 2 s request timeout: the SDK gives up and retries
    }
    answer_with(cluster, with_model_faults(fetching_script(tools, delay=0.2), "model-faults", faults))
    reference_uid = await start_reference_run(cluster, kube, tools)
    model = {"requestTimeout": "2s", "maxRetries": 4}
    run = fetching_run("model-faults", cluster)
    run["spec"]["model"].update(model)
    uid = (await kube.create(agentruns_path(cluster.namespace), run))["metadata"]["uid"]

    status = await wait_for_end(kube, "model-faults")
    assert status["phase"] == "Succeeded", status
    assert status["restarts"] == 0
    assert_result(status)
    assert_each_source_fetched_once(tools, uid)
    turns = collections.Counter(r.turn for r in requests_of(cluster.model_server, "model-faults"))
    assert turns == {0: 4, 1: 1, 2: 3, 3: 2, 4: 1, 5: 1}, turns  # each fault retried, nothing asked twice else
    await assert_same_conversation_as_reference(cluster, kube, "model-faults", uid, reference_uid)


async def patch_spec(cluster: LocalCluster, name: str, **fields: object) -> None:
    """A merge patch of spec fields through the kubernetes client, as a user's script would send it."""

    def patch() -> None:
        with kubernetes.config.new_client_from_config(str(cluster.kubeconfig_path)) as api:
            kubernetes.client.CustomObjectsApi(api).patch_namespaced_custom_object(
                "agentrun.dev", "v1alpha1", cluster.namespace, "agentruns", name, {"spec": fields}
            )

    await asyncio.to_thread(patch)


async def test_suspended_run_stops_its_runner_and_resumes_where_it_was(cluster, kube, tools):
    answer_with(cluster, fetching_script(tools, delay=0.4))
    uid = await create_fetching_run(cluster, kube, "pausing")
    await wait_for_iteration(kube, "pausing", 2)
    await patch_spec(cluster, "pausing", suspend=True)
    suspended = await wait_for_status(kube, "pausing", lambda s: s.get("phase") == "Suspended", "Suspended")
    assert condition(suspended, "Suspended")["status"] == "True"
    await wait_for(lambda: _no_live_runner(cluster, kube, "pausing"), "the runner to stop", timeout=20)
    asked = len(requests_of(cluster.model_server, "pausing"))
    await asyncio.sleep(1.0)
    assert len(requests_of(cluster.model_server, "pausing")) == asked  # suspended means no model calls

    await patch_spec(cluster, "pausing", suspend=False)
    status = await wait_for_end(kube, "pausing")
    assert status["phase"] == "Succeeded", status
    assert status["restarts"] == 0  # a suspension is not a failure
    assert_result(status)
    assert_each_source_fetched_once(tools, uid)


async def _no_live_runner(cluster: LocalCluster, kube: KubeClient, name: str) -> bool:
    return not await _live_runner(cluster, kube, name)


async def test_cancel_during_a_slow_tool_call_ends_the_run_cancelled(cluster, kube, tools):
    answer_with(cluster, research_script(fetch_urls=[tools.url("slow/20")], delay=0.1))
    await kube.create(agentruns_path(cluster.namespace), fetching_run("cancelled", cluster))
    await wait_for(lambda: _tool_in_flight(tools), "the slow fetch to start", timeout=30)
    code, _, err = await kubectl(
        cluster, "patch", "agentruns", "cancelled", "--type=merge", "-p", '{"spec": {"cancel": true}}'
    )
    assert code == 0, err

    status = await wait_for_end(kube, "cancelled", timeout=15)  # well before the 20 s fetch would answer
    assert status["phase"] == "Cancelled", status
    assert status["reason"] == "Cancelled"
    await wait_for(lambda: _no_live_runner(cluster, kube, "cancelled"), "the runner to stop", timeout=15)
    assert sum(tools.executions.values()) == 0  # the cancelled fetch never completed
    assert max(tools.deliveries.values()) == 1


async def _tool_in_flight(tools: ToolServer) -> bool:
    return tools.in_flight > 0


async def test_model_call_hanging_past_max_execution_time_ends_the_run_timed_out(cluster, kube, tools):
    answer_with(cluster, by_turn([Answer(tool_calls=[call("list_files")]), Hang()]))
    # The runner keeps a 10 s margin of maxExecutionTime for its last checkpoint: 15 s leaves it 5.
    run = fetching_run("hung", cluster, maxExecutionTime="15s")
    run["spec"]["model"]["requestTimeout"] = "1h"
    await kube.create(agentruns_path(cluster.namespace), run)

    status = await wait_for_end(kube, "hung", timeout=25)
    assert status["phase"] == "TimedOut", status
    assert status["reason"] == "MaxExecutionTimeExceeded", status
    assert status["restarts"] == 0
    assert status["iteration"] == 1
    assert [r.turn for r in requests_of(cluster.model_server, "hung")] == [0, 1]
