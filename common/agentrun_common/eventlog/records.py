"""Checkpoint records: their framing, their binding to the run's uid, and the event log they hold.

Each record carries its length and SHA-256, so a truncated or altered record is detected instead of being
half-applied.

Frame: ``<length, 10 digits> <sha256 hex>\\n<payload>\\n`` where the payload is ASCII JSON. ASCII
(non-ASCII escaped) keeps characters and bytes equal, so a ConfigMap value can be split anywhere.
"""

import hashlib
import json
from typing import Any

from agentrun_common.eventlog.events import Event

HEADER_BYTES = 10 + 1 + 64 + 1


class CorruptRecordError(ValueError):
    """A record whose frame, length or checksum is wrong."""


class ForeignRecordError(CorruptRecordError):
    """A record of another run: a deleted run of the same name, or one a foreign runner wrote."""


def bind_record(record: dict[str, Any], run_uid: str) -> dict[str, Any]:
    """The record as stored: stamped with the uid of the run it belongs to."""
    return {**record, "uid": run_uid}


def check_owner(record: dict[str, Any], run_uid: str) -> None:
    """Checkpoints are trusted by the run's uid, never by its name alone."""
    owner = record.get("uid")
    if owner != run_uid:
        raise ForeignRecordError(
            f"it belongs to run uid {owner!r}, not to this run ({run_uid}): left by a deleted run of the same "
            "name, or written by another run; it is not resumed"
        )


def encode_record(record: dict[str, Any]) -> bytes:
    payload = json.dumps(record, ensure_ascii=True, separators=(",", ":")).encode("ascii")
    return b"%010d %s\n%s\n" % (len(payload), hashlib.sha256(payload).hexdigest().encode("ascii"), payload)


def decode_record(frame: bytes) -> dict[str, Any]:
    """Decode exactly one frame."""
    record, end = decode_next(frame, 0)
    if end != len(frame):
        raise CorruptRecordError(f"{len(frame) - end} unexpected bytes after the record")
    return record


def decode_next(buffer: bytes, offset: int) -> tuple[dict[str, Any], int]:
    """Decode the frame starting at ``offset``; returns the record and the offset after it."""
    header = buffer[offset : offset + HEADER_BYTES]
    if len(header) < HEADER_BYTES or header[10:11] != b" " or header[-1:] != b"\n" or not header[:10].isdigit():
        raise CorruptRecordError("truncated or malformed record header")
    length = int(header[:10])
    start = offset + HEADER_BYTES
    payload = buffer[start : start + length]
    if len(payload) < length or buffer[start + length : start + length + 1] != b"\n":
        raise CorruptRecordError(f"record truncated: {len(payload)} of {length} bytes")
    if hashlib.sha256(payload).hexdigest().encode("ascii") != header[11:75]:
        raise CorruptRecordError("record checksum mismatch")
    try:
        record = json.loads(payload)
    except ValueError as error:
        raise CorruptRecordError(f"record is not JSON: {error}") from None
    if not isinstance(record, dict):
        raise CorruptRecordError("record is not a JSON object")
    return record, start + length + 1


def check_follows(record: dict[str, Any], seq: int, messages: int) -> None:
    """Records are deltas: one follows on when it is the next in sequence and its messages start where the
    previous records' end. Raises ValueError when it does not."""
    if record.get("seq") != seq:
        raise ValueError(f"record {record.get('seq')} does not follow record {seq - 1}")
    if record["messagesFrom"] != messages:
        raise ValueError(f"record {record['seq']} starts at message {record['messagesFrom']}, not {messages}")


def events_of(records: list[dict[str, Any]]) -> list[Event]:
    """The event log held in a run's checkpoint records (what a resumed runner would replay); stops
    before the first record that does not follow on."""
    events: list[Event] = []
    messages = 0
    for seq, record in enumerate(records):
        try:
            check_follows(record, seq, messages)
            logged = [Event.from_json(raw) for raw in record["events"]]
            messages += len(record["messages"])
        except (ValueError, KeyError, TypeError):
            break
        events.extend(logged)
    return events
