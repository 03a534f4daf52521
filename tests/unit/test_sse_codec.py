"""The one SSE codec (agentrun_common.sse): what it encodes parses back to itself, split anywhere; what it
buffers is bounded; it reads the event-stream format as the HTML standard dispatches it."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentrun_common.sse import HEARTBEAT, SseEvent, SseParser, SseTooLargeError, encode_comment, encode_event

pytestmark = pytest.mark.unit

ONE_LINE = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n\0"))


def feed_split(wire: bytes, *splits: int) -> tuple[list[SseEvent], SseParser]:
    parser = SseParser()
    events: list[SseEvent] = []
    previous = 0
    for split in [*sorted(splits), len(wire)]:
        events += parser.feed(wire[previous:split])
        previous = split
    return events, parser


def test_parser_reassembles_events_split_anywhere_with_any_line_end_and_skips_comments() -> None:
    wire = b': heartbeat\n\nid: 7\nevent: token\ndata: {"a":1}\n\nid: 8\r\nevent: finished\r\ndata: x\rdata: y\r\n\r\n'
    for split in range(1, len(wire)):
        events, _ = feed_split(wire, split)
        assert events == [SseEvent("token", '{"a":1}', "7"), SseEvent("finished", "x\ny", "8")]


@given(
    events=st.lists(
        st.tuples(ONE_LINE.filter(bool), st.text(st.characters(blacklist_categories=["Cs"])), st.none() | ONE_LINE),
        max_size=5,
    ),
    splits=st.lists(st.integers(min_value=0, max_value=2000), max_size=4),
)
def test_encoded_events_parse_back_to_themselves_split_anywhere(
    events: list[tuple[str, str, str | None]], splits: list[int]
) -> None:
    wire = b"".join(encode_event(event, data, id=event_id) + HEARTBEAT for event, data, event_id in events)
    parsed, parser = feed_split(wire, *(split for split in splits if split <= len(wire)))
    expected = [
        SseEvent(event, data.replace("\r\n", "\n").replace("\r", "\n"), event_id) for event, data, event_id in events
    ]
    assert parsed == expected
    ids = [event_id for _, _, event_id in events if event_id is not None]
    assert parser.last_event_id == (ids[-1] if ids else None)


def test_encoding_writes_id_event_retry_and_one_data_field_per_line() -> None:
    assert (
        encode_event("token", "a\nb", id=7, retry_ms=1500) == b"id: 7\nevent: token\nretry: 1500\ndata: a\ndata: b\n\n"
    )
    assert encode_event("message", "x") == b"data: x\n\n"  # the default type goes without its field
    assert encode_comment("heartbeat") == HEARTBEAT == b": heartbeat\n\n"


@pytest.mark.parametrize(("event", "event_id"), [("tok\nen", None), ("token", "1\r2"), ("token", "a\0b")])
def test_encoding_refuses_a_type_or_id_that_would_break_the_framing(event: str, event_id: str | None) -> None:
    with pytest.raises(ValueError, match="must be one line without NUL"):
        encode_event(event, "x", id=event_id)


def test_retry_is_read_and_last_event_id_survives_events_without_an_id() -> None:
    parser = SseParser()
    assert parser.feed(b"retry: 2500\nid: 4\ndata: a\n\ndata: b\n\nretry: soon\n\n") == [
        SseEvent(data="a", id="4"),
        SseEvent(data="b"),
    ]
    assert (parser.retry_ms, parser.last_event_id) == (2500, "4")


def test_blocks_without_data_dispatch_nothing_and_an_id_with_nul_is_ignored() -> None:
    parser = SseParser()
    assert parser.feed(b"id: 3\n\nevent: token\n\n:comment\n\nid: 4\0\ndata:\n\n") == [SseEvent(data="", id=None)]
    assert parser.last_event_id == "3"


def test_a_byte_order_mark_at_the_start_is_skipped_even_when_split() -> None:
    events, _ = feed_split(b"\xef\xbb\xbfdata: x\n\n", 1, 2)
    assert events == [SseEvent(data="x")]


@pytest.mark.parametrize(("event_id", "sequence"), [("7", 7), ("0", 0), ("abc", None), ("-1", None), ("", None)])
def test_sequence_is_the_id_as_a_non_negative_integer_or_none(event_id: str, sequence: int | None) -> None:
    assert SseEvent(id=event_id).sequence == sequence


def bytes_fed_until_refused(parser: SseParser, chunk: bytes, most: int) -> int:
    """Feed ``chunk`` again and again: how many bytes the parser took in all, with the chunk it refused."""
    fed = 0
    while fed < most:
        fed += len(chunk)
        try:
            parser.feed(chunk)
        except SseTooLargeError:
            return fed
    raise AssertionError(f"{most} bytes without an end of line were not refused")


def test_a_line_past_the_limit_is_refused_with_the_chunk_that_passes_it() -> None:
    parser = SseParser(max_event_bytes=1000)
    assert parser.feed(b"id: 1\nevent: token\ndata: a\n\n") == [SseEvent("token", "a", "1")]
    # A sender that never ends its line: refused once the limit is passed, not when the sender stops.
    assert 1000 < bytes_fed_until_refused(parser, b"data: " + b"x" * 94, most=1_000_000) <= 1100


def test_an_event_of_many_short_lines_past_the_limit_is_an_error_that_keeps_the_events_before_it() -> None:
    chunk = b"id: 1\nevent: token\ndata: a\n\n" + b"data: 0123456789\n" * 100  # never dispatched
    with pytest.raises(SseTooLargeError, match="more than 1000 bytes") as caught:
        SseParser(max_event_bytes=1000).feed(chunk)
    assert caught.value.complete == [SseEvent("token", "a", "1")]


def test_events_up_to_the_limit_and_endless_heartbeats_pass() -> None:
    parser = SseParser(max_event_bytes=100)
    event = SseEvent("token", "x" * 60, "7")
    assert len(event.encode()) <= 100
    assert parser.feed(event.encode()) == [event]
    for _ in range(1000):  # comments are dropped as they come, so they never add up
        assert parser.feed(HEARTBEAT) == []
    assert parser.feed(event.encode()) == [event]


def test_a_limit_that_is_not_positive_is_refused() -> None:
    with pytest.raises(ValueError, match="max_event_bytes must be a positive number of bytes"):
        SseParser(max_event_bytes=0)
