"""The event log: ids, publishing only what a checkpoint holds, and numbering after a resume."""

import pytest

from agentrun_common.eventlog.events import Event
from agentrun_runner.events import EventLog

pytestmark = pytest.mark.unit


def test_ids_are_monotonic_and_replay_starts_after_the_given_id() -> None:
    log = EventLog()
    for n in range(5):
        log.emit("token", {"n": n})
    log.publish(5)
    assert [e.id for e in log.events] == [1, 2, 3, 4, 5]
    assert [e.data["n"] for e in log.after(2)] == [2, 3, 4]
    assert log.after(5) == []
    assert log.after(99) == []


def test_only_events_a_written_record_holds_are_visible() -> None:
    log = EventLog()
    log.emit("iteration", {})
    log.emit("token", {})
    assert log.after(0) == []
    assert log.pending
    log.publish(1)
    assert [e.id for e in log.after(0)] == [1]
    assert log.pending
    log.publish(2)
    assert not log.pending


def test_a_subscriber_gets_an_event_when_it_is_published_not_when_it_is_emitted() -> None:
    log = EventLog()
    subscription = log.subscribe(8)
    log.emit("token", {"text": "a"})
    assert subscription.queue.empty()
    log.publish(1)
    assert subscription.queue.get_nowait().data == {"text": "a"}


def test_a_resumed_log_numbers_right_after_the_logged_events() -> None:
    # Unlogged events of a lost pod were never shown, so their ids are free again.
    persisted = [Event(1, "iteration", {}), Event(2, "checkpoint", {})]
    log = EventLog(persisted)
    assert [e.id for e in log.after(0)] == [1, 2]
    assert log.emit("iteration", {}).id == 3


def test_a_log_resumed_from_a_reserving_checkpoint_numbers_above_its_reservation() -> None:
    log = EventLog([Event(1, "iteration", {})], numbered_after=1001)
    assert log.emit("iteration", {}).id == 1002


def test_every_emit_tells_the_writer_events_are_pending() -> None:
    log = EventLog()
    told: list[int] = []
    log.on_pending = lambda: told.append(log.events[-1].id)
    for _ in range(3):
        log.emit("token", {})
    assert told == [1, 2, 3]
