"""The run registry's book-keeping of AgentRun events, without a server: what it keeps, forgets and starts."""

import contextvars
import gc
import weakref
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


class Cause:
    """What kopf keeps in a context variable while it calls a handler: the event, with the object's raw body."""


CAUSE: contextvars.ContextVar[Cause] = contextvars.ContextVar("cause")


async def test_a_supervisor_keeps_nothing_of_the_event_handler_that_started_it() -> None:
    """The supervisor task outlives the AgentRun event handler that started it: it must not keep the handler's
    context, whose cause holds that event's whole raw body (managed fields and all), one per live run."""
    runs = await registry()
    try:
        runs.attach(jobs=lambda key: [], pods=lambda key: [], progress=lambda key: [])
        await runs.lead()
        cause = Cause()
        held = weakref.ref(cause)

        def handler(event_cause: Cause) -> None:
            CAUSE.set(event_cause)
            runs.observe("ADDED", event_body())

        contextvars.copy_context().run(handler, cause)  # kopf calls each handler in a context of its own
        del cause
        gc.collect()
        assert runs.supervised == {("team-a", "q3")}
        assert held() is None, f"the supervisor keeps the handler's cause alive: {gc.get_referrers(held())}"
    finally:
        await runs.follow()
        await close(runs)
