"""The event log's stored format, shared by the runner (writing) and the stream gateway (replaying): what runners
wrote before it moved to ``agentrun_common.eventlog`` still decodes, byte for byte the same, and the event log a
checkpoint holds is the one a resumed runner rebuilds."""

from typing import Any

import pytest

from agentrun_common.eventlog.archive import MANIFEST_KEY, PART_KEY, decode_archive, encode_archive
from agentrun_common.eventlog.events import Event, format_event
from agentrun_common.eventlog.records import (
    ForeignRecordError,
    bind_record,
    check_owner,
    decode_record,
    encode_record,
    events_of,
)
from agentrun_common.eventlog.segments import decode_segments, record_key
from agentrun_runner.events import EventLog
from agentrun_runner.state import RunState

pytestmark = pytest.mark.unit

# Written by the runner before the format moved out of its package.
RECORD = {
    "seq": 0,
    "messagesFrom": 0,
    "messages": [{"role": "user", "content": "é"}],
    "tools": [],
    "events": [{"id": 1, "type": "token", "data": {"text": "hi"}}],
    "files": {},
    "counters": {"step": 1},
    "result": None,
}
RECORD_FRAME = (
    b"0000000202 6d79280e0d70c5fd6b3de06a59dfcf19d3a6be58bd4522dd61e083db1efe7206\n"
    b'{"seq":0,"messagesFrom":0,"messages":[{"role":"user","content":"\\u00e9"}],"tools":[],"events":[{"id":1,'
    b'"type":"token","data":{"text":"hi"}}],"files":{},"counters":{"step":1},"result":null,"uid":"uid-1"}\n'
)
EVENTS = [Event(1, "token", {"text": "hi"}), Event(2, "finished", {"outcome": "Succeeded"})]
ARCHIVE = [
    {
        PART_KEY: "H4sIAAAAAAACA6tWykxRsjLUUSqpLEhVslIqyc9OzVPSUUpJLElUsqpWKkmtKAEKZ2Qq1dZyVYMVG8EVp2XmZRZnpKYgqc8vLUnOzwV"
        "JBpcmJ6empgBlgToBQuHdE2cAAAA=",
        MANIFEST_KEY: '{"segments":1,"events":2,"lastId":2,"sha256":'
        '"54d327cab9b21aea0e5a28663614f436487fd3b8855db49c2090c7c13f261da9"}',
    }
]


def test_a_record_written_before_the_move_decodes_and_encodes_to_the_same_bytes() -> None:
    assert decode_record(RECORD_FRAME) == {**RECORD, "uid": "uid-1"}
    assert encode_record(bind_record(RECORD, "uid-1")) == RECORD_FRAME


def test_an_archive_written_before_the_move_decodes_and_encodes_to_the_same_data() -> None:
    assert decode_archive(ARCHIVE) == EVENTS
    assert encode_archive(EVENTS) == ARCHIVE


def test_segments_serve_only_the_records_of_the_given_uid() -> None:
    segment = {record_key(0, 0): RECORD_FRAME.decode("ascii")}

    assert decode_segments("demo", [segment], "uid-1").records == [{**RECORD, "uid": "uid-1"}]
    foreign = decode_segments("demo", [segment], "uid-2")
    assert foreign.records == []
    assert foreign.problem is not None
    assert "uid-1" in foreign.problem
    assert "uid-2" in foreign.problem
    with pytest.raises(ForeignRecordError, match="not to this run"):
        check_owner(decode_record(RECORD_FRAME), "uid-2")


def checkpointed_run() -> tuple[list[dict[str, Any]], RunState]:
    """Records as a runner writes them over three checkpoints, and the state a resumed runner folds from them."""
    state, log, records = RunState(), EventLog(), []
    for step in range(3):
        state.messages.append({"role": "assistant", "content": f"step {step}"})
        log.emit("iteration", {"step": step})
        log.emit("token", {"text": f"t{step}"})
        record = state.delta(log.events)
        state.mark_saved(record)
        records.append(record)
    resumed = RunState()
    for record in records:
        resumed.apply(record)
    return records, resumed


def test_the_log_a_reader_replays_is_the_log_a_resumed_runner_rebuilds() -> None:
    records, resumed = checkpointed_run()

    assert events_of(records) == resumed.events
    assert [e.id for e in resumed.events] == [1, 2, 3, 4, 5, 6]


def test_the_replayed_log_stops_before_a_record_that_does_not_follow_on() -> None:
    records, resumed = checkpointed_run()
    gap = [records[0], records[2]]  # record 1 is missing
    shifted = [records[0], {**records[1], "messagesFrom": 0}]

    assert events_of(gap) == resumed.events[:2]
    assert events_of(shifted) == resumed.events[:2]
    with pytest.raises(ValueError, match="does not follow"):
        RunState().apply(records[1])


def test_an_event_is_framed_for_the_stream_as_the_runner_frames_it() -> None:
    assert format_event(EVENTS[0]) == b'id: 1\nevent: token\ndata: {"text":"hi"}\n\n'
