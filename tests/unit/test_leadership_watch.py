"""A standby's watch of its Lease: it wakes the elector on a release, and a watch that keeps ending at once is not
restarted in a tight loop. The API server is replaced by a scripted watch (the network boundary)."""

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agentrun_operator.leadership import LeaderElection, LeaderElector

pytestmark = pytest.mark.unit

SETTINGS = LeaderElection(
    lease_name="agentrun-operator",
    namespace="agentrun-system",
    identity="standby",
    lease_duration_seconds=0.3,
    renew_deadline_seconds=0.2,
    retry_period_seconds=0.1,
)


class ScriptedWatch:
    """``watch()`` gives each call's events from ``script`` (the last one again once it runs out)."""

    def __init__(self, script: list[list[dict[str, Any]]]) -> None:
        self.script = script
        self.calls = 0

    async def watch(self, path: str, **_: Any) -> AsyncIterator[dict[str, Any]]:
        events = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        for event in events:
            yield event


async def _nothing() -> None:
    return None


def elector(kube: ScriptedWatch) -> LeaderElector:
    return LeaderElector(kube, SETTINGS, on_lead=_nothing, on_follow=_nothing)  # type: ignore[arg-type]


def lease_event(kind: str, holder: str | None) -> dict[str, Any]:
    return {"type": kind, "object": {"metadata": {"name": "agentrun-operator"}, "spec": {"holderIdentity": holder}}}


async def watch_for(standby: LeaderElector, seconds: float) -> None:
    task = asyncio.create_task(standby._watch_for_release())
    await asyncio.sleep(seconds)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_released_or_deleted_lease_wakes_the_standby_and_a_renewal_does_not() -> None:
    for events, wakes in (
        ([lease_event("ADDED", "leader"), lease_event("MODIFIED", "leader")], False),
        ([lease_event("ADDED", "leader"), lease_event("MODIFIED", None)], True),
        ([lease_event("ADDED", "leader"), lease_event("DELETED", "leader")], True),
    ):
        standby = elector(ScriptedWatch([events]))
        await watch_for(standby, 0.05)
        assert standby._released.is_set() is wakes, events


async def test_a_watch_that_ends_at_once_is_watched_again_after_a_retry_period_not_in_a_tight_loop() -> None:
    kube = ScriptedWatch([[]])
    await watch_for(elector(kube), 0.35)
    # One watch at once, then one a retry period (0.1 s) after each end: four in 0.35 s, not thousands.
    assert 2 <= kube.calls <= 5, kube.calls
