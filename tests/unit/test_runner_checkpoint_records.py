"""Checkpoint records: framing, corruption detection, and the delta/fold of the state."""

import json

import pytest

from agentrun_common.eventlog.records import CorruptRecordError, decode_record, encode_record
from agentrun_runner.events import EventLog
from agentrun_runner.state import RunState, ToolCallRecord

pytestmark = pytest.mark.unit


def test_a_record_round_trips_and_non_ascii_is_escaped() -> None:
    record = {"seq": 3, "text": "Grüße ✓", "n": [1, 2]}
    frame = encode_record(record)
    assert frame.isascii()
    assert decode_record(frame) == record


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda f: f[:-5], "truncated"),
        (lambda f: f[:40], "truncated or malformed record header"),
        (lambda f: f[:100] + bytes([f[100] ^ 1]) + f[101:], "checksum mismatch"),
        (lambda f: b"x" + f[1:], "malformed record header"),
        (lambda f: f + b"extra", "unexpected bytes"),
    ],
)
def test_damaged_records_are_detected(damage, reason: str) -> None:  # type: ignore[no-untyped-def]
    frame = encode_record({"seq": 0, "payload": "p" * 200})
    with pytest.raises(CorruptRecordError, match=reason):
        decode_record(damage(frame))


def grow(state: RunState, events: EventLog, step: int) -> None:
    state.messages.append({"role": "assistant", "content": f"answer {step}"})
    state.tool_log[f"u:{step}:0"] = ToolCallRecord(f"u:{step}:0", "list_files", "{}", "[]", True)
    state.counters.step = step
    events.emit("iteration", {"iteration": step})
    if step % 3 == 0:
        state.note_file_written(f"f{step}.txt", "x" * 10)


def test_deltas_fold_back_into_the_same_state() -> None:
    state, events = RunState(), EventLog()
    records = []
    for step in range(1, 8):
        grow(state, events, step)
        record = json.loads(json.dumps(state.delta(list(events.events))))
        state.mark_saved(record)
        records.append(record)
    state.result = "final"
    last = state.delta(list(events.events))
    state.mark_saved(last)
    records.append(last)

    rebuilt = RunState()
    for record in records:
        rebuilt.apply(record)
    assert rebuilt.messages == state.messages
    assert rebuilt.tool_log == state.tool_log
    assert rebuilt.files == state.files
    assert rebuilt.events == list(events.events)
    assert rebuilt.counters == state.counters
    assert rebuilt.result == "final"
    # Each record held only its own step's additions.
    assert [len(r["messages"]) for r in records] == [1] * 7 + [0]
    assert all(len(r["tools"]) <= 1 for r in records)
    assert records[-1]["result"] == "final"
    assert records[-2]["result"] is None


def test_a_record_out_of_order_is_refused() -> None:
    state, events = RunState(), EventLog()
    grow(state, events, 1)
    first = state.delta(list(events.events))
    state.mark_saved(first)
    grow(state, events, 2)
    second = state.delta(list(events.events))
    with pytest.raises(ValueError, match="does not follow"):
        RunState().apply(second)


def test_record_size_does_not_grow_with_history() -> None:
    state, events = RunState(), EventLog()
    sizes = []
    for step in range(1, 301):
        grow(state, events, step)
        record = state.delta(list(events.events))
        state.mark_saved(record)
        sizes.append(len(encode_record(record)))
    # Steps 10 and 300 both wrote a file: the later record is only a few digits longer.
    assert sizes[299] - sizes[9] < 64
    assert max(sizes) < 2 * min(sizes)
