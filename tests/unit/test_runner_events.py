"""The event log: ids, the checkpointed ceiling, and numbering after a resume."""

import pytest

from agentrun_runner.events import Event, EventLog

pytestmark = pytest.mark.unit


def test_ids_are_monotonic_and_replay_starts_after_the_given_id() -> None:
    log = EventLog()
    for n in range(5):
        log.emit("token", {"n": n})
    log.raise_ceiling(log.next_ceiling())
    assert [e.id for e in log.events] == [1, 2, 3, 4, 5]
    assert [e.data["n"] for e in log.after(2)] == [2, 3, 4]
    assert log.after(5) == []
    assert log.after(99) == []


def test_only_events_under_the_ceiling_are_visible() -> None:
    log = EventLog(reserve=10)
    log.emit("iteration", {})
    log.emit("token", {})
    assert log.after(0) == []
    log.raise_ceiling(1)
    assert [e.id for e in log.after(0)] == [1]
    assert log.next_ceiling() == 12


def test_a_resumed_log_numbers_above_the_persisted_ceiling() -> None:
    persisted = [Event(1, "iteration", {}), Event(2, "checkpoint", {})]
    log = EventLog(persisted, ceiling=1002, reserve=1000)
    assert [e.id for e in log.after(0)] == [1, 2]
    event = log.emit("iteration", {})
    assert event.id == 1003
    log.raise_ceiling(log.next_ceiling())
    assert [e.id for e in log.after(2)] == [1003]


def test_running_low_on_reserved_ids_asks_for_a_checkpoint() -> None:
    log = EventLog(reserve=10)
    log.raise_ceiling(10)
    asked: list[int] = []
    log.on_low_headroom = lambda: asked.append(log.events[-1].id)
    for _ in range(6):
        log.emit("token", {})
    assert asked == [6]
