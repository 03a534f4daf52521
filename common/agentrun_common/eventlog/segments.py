"""The ConfigMap checkpoint store's layout: records in append-only segments ``<run>-ckpt-<n>``.

Each record is one key ``r<seq>-<part>`` of a segment's data; a record larger than the room left in a
segment is split into parts across segments. The full result, when stored, is under ``RESULT_KEY``.
"""

import re
from dataclasses import dataclass
from typing import Any, Final

from agentrun_common.eventlog.records import CorruptRecordError, check_owner, decode_record

RESULT_KEY: Final = "result"
RECORD_KEY: Final = re.compile(r"^r(\d{8})-(\d{3})$")


def record_key(seq: int, part: int) -> str:
    return f"r{seq:08d}-{part:03d}"


@dataclass(frozen=True)
class DecodedSegments:
    records: list[dict[str, Any]]  # the good records, oldest first
    problem: str | None  # why decoding stopped early, if it did
    unusable: set[int]  # sequence numbers of records at and after the first unusable one


def decode_segments(run: str, segments: list[dict[str, str]], run_uid: str | None = None) -> DecodedSegments:
    """The records held in a run's segment ConfigMaps' data (segment 0 first), up to the first that is
    unusable or, given ``run_uid``, of another run. Reads only: the store drops the unusable tail,
    readers such as the stream gateway just stop before it."""
    parts: dict[int, list[tuple[int, int, str]]] = {}  # seq -> (part, segment, value)
    for index, data in enumerate(segments):
        for key, value in data.items():
            match = RECORD_KEY.match(key)
            if match:
                parts.setdefault(int(match[1]), []).append((int(match[2]), index, value))

    records: list[dict[str, Any]] = []
    problem = None
    for seq in range(len(parts)):
        pieces = sorted(parts.get(seq, []))
        try:
            if not pieces or [p[0] for p in pieces] != list(range(len(pieces))):
                raise CorruptRecordError("record parts are missing")
            record = decode_record("".join(p[2] for p in pieces).encode("ascii"))
            if run_uid is not None:
                check_owner(record, run_uid)
            records.append(record)
        except (CorruptRecordError, UnicodeEncodeError) as error:
            problem = f"checkpoint record {seq} in ConfigMap segments of {run} is unusable ({error})"
            break
    bad = {seq for seq in parts if seq >= len(records)}
    if problem is None and bad:
        problem = f"checkpoint records after {len(records) - 1} have no predecessor and were dropped"
    return DecodedSegments(records, problem, bad)
