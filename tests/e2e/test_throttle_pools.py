"""Throttle pools end to end: the real operator (with its permit server), real runner processes under
runner pods on the node agent, and the scripted model server, standing in for the provider, recording every
call it answers and how many it answers at once."""

import asyncio
import dataclasses
import itertools
import time
from pathlib import Path

import pytest

from tests.e2e.runs import local_cluster
from tests.harness.agentruns import agent_run, agentruns_path, requests_of, runner_pods, wait_for, wait_for_end
from tests.harness.local_cluster import LocalCluster, OperatorTimings
from tests.harness.model_server import ChatRequest, Hang, Reply, Script, research_script, stepwise_script
from tests.harness.nodeagent.kube import JsonObject, KubeClient
from tests.harness.pool_runs import (
    PoolRunsPlan,
    pool_status,
    pooled_run,
    pools_path,
    run_pool_scenario,
    throttle_pool,
)
from tests.harness.testbed import KubeTestbed

pytestmark = pytest.mark.e2e

# The operator's lease for these tests (AGENTRUN_PERMIT_LEASE_SECONDS): a killed holder's permit is back
# within this long, and each runner renews its leases every third of it.
LEASE_SECONDS = 2.0


# Twenty runs of four calls on 60 a minute: the calls alone take 80 s, and the runs start over ~20 s on a
# two-core machine. Four calls a run is the fewest that makes more than 60 calls, so the one-minute window
# below could fail.
@pytest.mark.timeout(300)
async def test_twenty_runs_on_a_pool_of_two_in_flight_and_sixty_a_minute_keep_its_limits_fairly(
    testbed: KubeTestbed, tmp_path: Path
) -> None:
    plan = PoolRunsPlan(runs=20, max_in_flight=2, requests_per_minute=60, calls_per_run=4, queue_budget_seconds=60)
    async with local_cluster(testbed, tmp_path, plan.model_script()) as cluster:
        outcome = await run_pool_scenario(cluster, plan)
    summary = "\n".join(outcome.summary())

    # No run waited past its queue budget: every one succeeded, its longest wait inside the budget.
    assert {run: s.get("phase") for run, s in outcome.statuses.items()} == dict.fromkeys(
        plan.run_names(), "Succeeded"
    ), summary
    assert all(0 < wait < plan.queue_budget_seconds for wait in outcome.longest_waits().values()), summary
    assert all(len(calls) == plan.calls_per_run for calls in outcome.calls.values()), summary
    # The pool held every call until all runs waited (it grants its first at 1/min only after a minute).
    assert min(outcome.arrivals()) > outcome.opened_at, "the runs took over a minute to start"
    # In flight: never above the pool's limit, and the limit was reached (two in three calls outlast two
    # grant intervals, so without the limit more would have overlapped).
    assert outcome.max_in_flight == plan.max_in_flight, summary
    # The rate: no minute at the model above the limit, and the limit actually reached, so a pool that is
    # too strict fails too. (The slow calls cost some grants while both permits are held.)
    assert 0.85 * plan.requests_per_minute <= outcome.most_in_a_minute() <= plan.requests_per_minute, summary
    assert outcome.achieved_rate_per_minute() >= 0.85 * plan.requests_per_minute, summary
    # Fairness while all runs competed: each run's share of the calls within 20 % of the mean share.
    assert sum(outcome.shares().values()) >= 2 * plan.runs, summary
    assert outcome.fairness_spread() <= 0.2, summary
    print(summary)


def holding_the_first_call_of(run: str, script: Script, hold_seconds: float) -> Script:
    """``script``, except that the run's first call is answered only after ``hold_seconds``."""
    marker = f"(run {run})"
    held: list[int] = []

    def holding(request: ChatRequest) -> Reply:
        reply = script(request)
        if not held and not isinstance(reply, Hang) and any(marker in str(m.get("content")) for m in request.messages):
            held.append(request.index)
            return dataclasses.replace(reply, delay=hold_seconds)
        return reply

    return holding


async def test_a_runner_killed_while_holding_a_permit_gives_it_back_after_the_lease_timeout(
    testbed: KubeTestbed, tmp_path: Path
) -> None:
    hold_seconds = 60.0  # far longer than the test: only the lease timeout can free the permit
    script = holding_the_first_call_of("holder", stepwise_script(3), hold_seconds)
    timings = OperatorTimings(permit_lease_seconds=LEASE_SECONDS)
    async with (
        local_cluster(testbed, tmp_path, script, timings=timings) as cluster,
        KubeClient(str(cluster.kubeconfig_path)) as kube,
    ):
        model = cluster.model_server
        assert model is not None
        await kube.create(
            pools_path(cluster.namespace),
            throttle_pool("one-at-a-time", cluster.namespace, max_in_flight=1, requests_per_minute=600),
        )
        plan = PoolRunsPlan(pool="one-at-a-time", calls_per_run=3)
        await kube.create(agentruns_path(cluster.namespace), pooled_run("holder", cluster, plan))

        async def held() -> bool:
            return model.in_flight == 1 and bool(requests_of(model, "holder"))

        await wait_for(held, "the holder's call to be held at the model")
        await kube.create(agentruns_path(cluster.namespace), pooled_run("waiter", cluster, plan))

        async def waiter_queued() -> JsonObject | None:
            status = await pool_status(kube, "one-at-a-time")
            return status if status.get("queueDepth") == 1 and status.get("inFlight") == 1 else None

        await wait_for(waiter_queued, "the waiter's call to queue behind the held one")
        # While its runner lives, the holder keeps its permit through several lease periods by renewing it.
        await asyncio.sleep(2 * LEASE_SECONDS)
        assert not requests_of(model, "waiter")
        [pod] = await runner_pods(kube, "holder")
        cluster.node.kill_pod_process(cluster.namespace, pod["metadata"]["name"])
        killed_at = time.monotonic()

        async def waiter_called() -> ChatRequest | None:
            calls = requests_of(model, "waiter")
            return calls[0] if calls else None

        first = await wait_for(waiter_called, "the waiter's first call", timeout=5 * LEASE_SECONDS)
        statuses = {run: await wait_for_end(kube, run, timeout=60) for run in ("holder", "waiter")}

    # The killed runner renewed its lease at most a third of a lease before it died, and nobody renews it
    # after: the permit came back one lease after that renewal, and the waiter's call went out then.
    freed_after = first.received_at - killed_at
    assert 2 / 3 * LEASE_SECONDS - 0.3 <= freed_after <= LEASE_SECONDS + 1.5, freed_after
    # The held call stopped counting at the model when its runner died: never two calls at once.
    assert model.max_in_flight == 1
    # The holder's Job replaced the killed pod; the new runner resumed, and both runs finished.
    assert {run: s["phase"] for run, s in statuses.items()} == {"holder": "Succeeded", "waiter": "Succeeded"}
    assert statuses["holder"]["restarts"] == 1
    print(f"the killed runner's permit was back {freed_after:.2f}s after the kill (lease {LEASE_SECONDS:g}s)")


def _shared_pool(namespace: str, max_in_flight: int) -> JsonObject:
    pool = throttle_pool("shared", namespace, max_in_flight=max_in_flight, requests_per_minute=6000)
    pool["spec"]["burstRequests"] = 10
    return pool


async def test_runs_sharing_a_pool_of_one_never_call_the_model_at_once_and_all_succeed(
    testbed: KubeTestbed, tmp_path: Path
) -> None:
    # Each answer takes a while, so calls of different runs would overlap if nothing held them back.
    async with (
        local_cluster(testbed, tmp_path, research_script(delay=0.4)) as cluster,
        KubeClient(str(cluster.kubeconfig_path)) as kube,
    ):
        await kube.create(pools_path(cluster.namespace), _shared_pool(cluster.namespace, max_in_flight=1))
        runs = ["pool-a", "pool-b", "pool-c"]
        for name in runs:
            await kube.create(agentruns_path(cluster.namespace), _throttled_run(name, cluster, "shared"))

        statuses = {name: await wait_for_end(kube, name) for name in runs}
        assert {name: s["phase"] for name, s in statuses.items()} == dict.fromkeys(runs, "Succeeded"), statuses

        server = cluster.model_server
        assert server is not None
        calls = {name: requests_of(server, name) for name in runs}
        assert all(calls.values())
        assert sum(map(len, calls.values())) == len(server.requests)
        # The runs were live at the same time (each one's calls interleave with another's)...
        spans = sorted((c[0].received_at, c[-1].received_at) for c in calls.values())
        assert any(later_start < earlier_end for (_, earlier_end), (later_start, _) in itertools.pairwise(spans))
        # ...yet the pool let only one call at a time reach the model.
        assert server.max_in_flight == 1

        # Every granted permit was given back: nothing in flight, nothing queued.
        async def idle() -> JsonObject | None:
            status = await pool_status(kube, "shared")
            return status if status.get("inFlight") == 0 and status.get("queueDepth") == 0 else None

        await wait_for(idle, "the pool's status to show it idle", timeout=10)


def _throttled_run(name: str, cluster: LocalCluster, pool: str) -> JsonObject:
    # The run's own pace would let every run's calls go at once.
    throttle = {"enabled": True, "pool": pool, "requestsPerMinute": 600}
    # Pods share the host's loopback here, so concurrent runners cannot all serve a stream on its fixed port.
    return agent_run(name, cluster, streaming={"enabled": False}, throttle=throttle)


async def test_a_run_naming_a_pool_that_does_not_exist_runs_on_its_own_limits_and_says_so(
    testbed: KubeTestbed, tmp_path: Path
) -> None:
    async with (
        local_cluster(testbed, tmp_path, research_script(delay=0.4)) as cluster,
        KubeClient(str(cluster.kubeconfig_path)) as kube,
    ):
        await kube.create(agentruns_path(cluster.namespace), _throttled_run("lonely", cluster, "no-such-pool"))

        status = await wait_for_end(kube, "lonely")

        assert status["phase"] == "Succeeded", status
        [pod] = await runner_pods(kube, "lonely")
        log = cluster.node.read_log(cluster.namespace, pod["metadata"]["name"])
    assert f"no ThrottlePool 'no-such-pool' in namespace '{cluster.namespace}'" in log
    assert "use only this run's own spec.throttle limits" in log
