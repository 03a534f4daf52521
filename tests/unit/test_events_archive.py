"""The event-log archive format: ConfigMap-sized, verified parts that decode to exactly the events written."""

import json
import random

import pytest

from agentrun_api.contract import CONFIGMAP_SEGMENT_LIMIT_BYTES
from agentrun_common.eventlog.archive import (
    MANIFEST_KEY,
    PART_KEY,
    ArchiveTooLargeError,
    decode_archive,
    encode_archive,
    read_manifest,
)
from agentrun_common.eventlog.events import Event
from agentrun_runner.archive import write_archive

pytestmark = pytest.mark.unit

# The API server refuses a ConfigMap whose data passes 1 MiB.
CONFIGMAP_MAX_BYTES = 1024 * 1024


def events(count: int, *, text_bytes: int = 40, seed: int = 7) -> list[Event]:
    rng = random.Random(seed)  # incompressible text, so sizes are not flattered by gzip
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789 éß→"
    log = [Event(id=1, type="iteration", data={"iteration": 1})]
    for n in range(2, count):
        log.append(Event(id=n + 10, type="token", data={"text": "".join(rng.choices(alphabet, k=text_bytes))}))
    log.append(Event(id=count + 10, type="finished", data={"outcome": "Succeeded"}))
    return log


def data_bytes(data: dict[str, str]) -> int:
    return sum(len(key.encode()) + len(value.encode()) for key, value in data.items())


def test_a_small_log_fits_one_configmap_and_decodes_to_the_same_events() -> None:
    log = events(50)

    segments = encode_archive(log)

    assert len(segments) == 1
    assert decode_archive(segments) == log
    manifest = read_manifest(segments[0])
    assert manifest is not None
    assert (manifest.segments, manifest.events, manifest.last_id) == (1, 50, 60)


def test_a_large_log_is_split_into_parts_each_inside_the_configmap_limit() -> None:
    log = events(20_000, text_bytes=120)

    segments = encode_archive(log)

    assert len(segments) > 1
    assert all(data_bytes(segment) <= CONFIGMAP_SEGMENT_LIMIT_BYTES < CONFIGMAP_MAX_BYTES for segment in segments)
    assert MANIFEST_KEY in segments[0]
    assert all(MANIFEST_KEY not in segment for segment in segments[1:])
    assert decode_archive(segments) == log


def test_a_log_too_large_for_the_cap_is_refused_whole() -> None:
    with pytest.raises(ArchiveTooLargeError, match="needs 3 ConfigMaps; the archive holds at most 1"):
        encode_archive(events(20_000, text_bytes=120), max_segments=1)


def test_an_empty_log_still_has_a_manifest() -> None:
    segments = encode_archive([])
    assert decode_archive(segments) == []


def test_a_missing_or_altered_part_decodes_to_nothing_never_to_a_log_with_a_gap() -> None:
    segments = encode_archive(events(20_000, text_bytes=120))
    assert len(segments) >= 2

    assert decode_archive(segments[:-1]) is None
    altered = [dict(segment) for segment in segments]
    part = altered[1][PART_KEY]
    altered[1][PART_KEY] = part[:100] + ("A" if part[100] != "A" else "B") + part[101:]
    assert decode_archive(altered) is None


def test_parts_from_another_attempt_do_not_match_the_manifest() -> None:
    first = encode_archive(events(20_000, text_bytes=120, seed=1))
    second = encode_archive(events(20_000, text_bytes=120, seed=2))
    mixed = [first[0], *second[1:]]
    assert decode_archive(mixed) is None


def test_no_manifest_means_no_archive() -> None:
    assert read_manifest(None) is None
    assert read_manifest({PART_KEY: ""}) is None
    assert read_manifest({MANIFEST_KEY: "{not json"}) is None
    assert decode_archive([]) is None
    assert decode_archive([{PART_KEY: ""}]) is None


class RecordingWriter:
    def __init__(self) -> None:
        self.writes: list[tuple[str, dict[str, str], dict[str, str]]] = []

    async def put_data(self, name: str, data: dict[str, str], labels: dict[str, str]) -> None:
        self.writes.append((name, data, labels))


async def test_the_parts_are_written_before_the_manifest_that_names_them() -> None:
    writer = RecordingWriter()
    log = events(20_000, text_bytes=120)

    written = await write_archive(writer, "q3", log)

    names = [name for name, _, _ in writer.writes]
    assert written == len(names) > 1
    assert names[-1] == "q3-events-0"
    assert sorted(names) == sorted(f"q3-events-{n}" for n in range(written))
    assert all(labels["agentrun.dev/run"] == "q3" for _, _, labels in writer.writes)
    by_name = {name: data for name, data, _ in writer.writes}
    assert decode_archive([by_name[f"q3-events-{n}"] for n in range(written)]) == log
    assert json.loads(by_name["q3-events-0"][MANIFEST_KEY])["segments"] == written
