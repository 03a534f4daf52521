"""The run registry's book-keeping of AgentRun events, without a server: what it keeps, forgets and starts."""

from typing import Any

import aiohttp
import kopf
import pytest

from agentrun_operator.kube import KubeClient
from agentrun_operator.metrics import Metrics
from agentrun_operator.reconcile import OperatorContext
from agentrun_operator.settings import OperatorSettings
from agentrun_operator.supervisors import RunRegistry

pytestmark = pytest.mark.unit


def event_body(uid: str = "u1", **metadata: Any) -> dict[str, Any]:
    return {
        "apiVersion": "agentrun.dev/v1alpha1",
        "kind": "AgentRun",
        "metadata": {"name": "q3", "namespace": "team-a", "uid": uid, **metadata},
        "spec": {"input": "x"},
    }


async def registry() -> RunRegistry:
    op = OperatorContext(
        settings=OperatorSettings(),
        kube=KubeClient(kopf.ConnectionInfo(server="http://127.0.0.1:9")),
        metrics=Metrics.create(),
        http=aiohttp.ClientSession(),
    )
    return RunRegistry(op, max_concurrent_admissions=4)


async def close(runs: RunRegistry) -> None:
    await runs.op.kube.close()
    await runs.op.http.close()


async def test_a_standby_keeps_the_latest_body_without_what_nothing_reads_and_starts_nothing() -> None:
    runs = await registry()
    try:
        runs.observe(
            "ADDED",
            event_body(
                managedFields=[{"manager": "kubectl"}],
                annotations={"kubectl.kubernetes.io/last-applied-configuration": "{...}", "team": "a"},
            ),
        )
        runs.observe("MODIFIED", {**event_body(), "status": {"phase": "Pending"}})
        latest = runs.latest(("team-a", "q3"))
        assert latest is not None
        assert latest["status"] == {"phase": "Pending"}
        assert "managedFields" not in latest["metadata"]
        runs.observe("ADDED", event_body(managedFields=[{"manager": "kubectl"}], annotations={"team": "a"}))
        assert runs.latest(("team-a", "q3"))["metadata"]["annotations"] == {"team": "a"}  # type: ignore[index]
        assert runs.supervised == set()  # not leading: warm, but no supervisor
    finally:
        await close(runs)


async def test_a_deleted_run_is_forgotten() -> None:
    runs = await registry()
    try:
        runs.observe("ADDED", event_body())
        runs.observe("DELETED", event_body())
        assert runs.latest(("team-a", "q3")) is None
    finally:
        await close(runs)
