"""How many API requests one run costs the operator, by verb and kind: bounded, and no polling."""

import dataclasses

import pytest

from tests.harness.apiproxy import ApiProxy
from tests.harness.inprocess_operator import (
    FAST,
    Cluster,
    RunPace,
    eventually,
    run_manifest,
    running_operator,
    simulate_run_life,
)

pytestmark = pytest.mark.integration


async def test_fifty_iteration_run_costs_a_bounded_number_of_requests_and_no_polling(
    cluster: Cluster, proxy: ApiProxy
) -> None:
    cluster.add_api_key_secret()
    # The runner reports four times faster than the operator may write status.
    settings = dataclasses.replace(FAST, status_min_interval_seconds=0.2)
    pace = RunPace(iterations=50, report_every_seconds=0.05)
    async with running_operator(cluster, settings):
        proxy.requests.clear()
        await simulate_run_life(cluster, pace)
    print("\n" + proxy.requests.summary())  # the figures for the closing note

    by = proxy.requests.by_kind_and_verb()
    status_writes = proxy.requests.count(verb="patch", kind="AgentRun", subresource="status")
    # 50 reports over ~2.5 s at one progress write per 0.2 s, plus phase changes: far fewer than 50.
    assert 3 <= status_writes <= 25, status_writes
    # Children are created once; Jobs, pods and ConfigMaps are watched, never fetched or listed in a loop.
    assert by[("Job", "create")] == 1
    for kind in ("Job", "Pod", "ConfigMap"):
        assert by[(kind, "get")] == 0, kind
        assert by[(kind, "list")] <= 1, kind
    assert by[("Secret", "get")] == 1  # the API key reference checked once at admission


async def test_admission_writes_the_status_the_supervisors_first_look_would(cluster: Cluster, proxy: ApiProxy) -> None:
    """Admission's one status write already says the run waits for a runner pod, so the supervisor's first look
    writes nothing; the next write is the news of why the pod does not run (no node takes it here)."""
    cluster.add_api_key_secret()
    async with running_operator(cluster):
        proxy.requests.clear()
        cluster.create(run_manifest("q3"))
        await eventually(
            lambda: "Unschedulable" in str(cluster.status().get("message")), message="the status to say why"
        )
        status_writes = proxy.requests.count(verb="patch", kind="AgentRun", subresource="status")
    assert status_writes == 2, proxy.requests.summary()
