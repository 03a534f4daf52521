"""The event log of an ended run, archived into ConfigMaps so the stream gateway can replay it.

With the PVC checkpoint store the event log lives on a claim that only the runner's pod mounts; once
that pod is gone, nothing else can read it. So when the run has ended, the runner writes its whole
event log, as the stream served it, into ConfigMaps ``<run>-events-<n>`` (owned by the AgentRun, so
deleting the run collects them): JSON lines, gzip-compressed, base64 in ``data`` and split into parts
of at most ``CONFIGMAP_SEGMENT_LIMIT_BYTES`` (under the API server's 1 MiB object limit), at most
``EVENTS_ARCHIVE_MAX_SEGMENTS`` of them. Segment 0 also holds the manifest (part count, event count,
SHA-256 of the compressed log) and is written last, so a reader that finds the manifest finds every
part; a log too large for the cap is not archived at all (a reader never gets a replay with a gap).

Events hold what the stream shows its readers (model output, tool calls and results), never a
secret: the API key and the stream token are only in the runner's environment.
"""

import base64
import gzip
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from agentrun_api import constants
from agentrun_api.contract import CONFIGMAP_SEGMENT_LIMIT_BYTES, EVENTS_ARCHIVE_MAX_SEGMENTS, events_archive_name
from agentrun_runner.events import Event
from agentrun_runner.kube import KubeError

log = logging.getLogger(__name__)

PART_KEY: Final = "events.jsonl.gz.b64"
MANIFEST_KEY: Final = "manifest.json"
ROLE_EVENTS_ARCHIVE: Final = "events-archive"
# Room left in segment 0 for the manifest and the keys.
_MANIFEST_ROOM_BYTES: Final = 1024


class ArchiveTooLargeError(ValueError):
    """The compressed event log does not fit the archive's ConfigMaps."""


class ArchiveWriter(Protocol):
    async def put_data(self, name: str, data: dict[str, str], labels: dict[str, str]) -> None: ...


@dataclass(frozen=True)
class Manifest:
    segments: int
    events: int
    last_id: int
    sha256: str
    """Of the compressed log (before base64), so a reader detects a part from another attempt."""

    def to_json(self) -> str:
        return json.dumps(
            {"segments": self.segments, "events": self.events, "lastId": self.last_id, "sha256": self.sha256},
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        raw = json.loads(text)
        return cls(
            segments=int(raw["segments"]), events=int(raw["events"]), last_id=int(raw["lastId"]), sha256=raw["sha256"]
        )


def encode_archive(
    events: Sequence[Event],
    *,
    segment_limit_bytes: int = CONFIGMAP_SEGMENT_LIMIT_BYTES,
    max_segments: int = EVENTS_ARCHIVE_MAX_SEGMENTS,
) -> list[dict[str, str]]:
    """The data of each archive ConfigMap, segment 0 (with the manifest) first."""
    lines = b"".join(json.dumps(e.to_json(), separators=(",", ":")).encode() + b"\n" for e in events)
    compressed = gzip.compress(lines, mtime=0)
    text = base64.b64encode(compressed).decode("ascii")
    part_size = segment_limit_bytes - _MANIFEST_ROOM_BYTES
    parts = [text[i : i + part_size] for i in range(0, len(text), part_size)] or [""]
    if len(parts) > max_segments:
        raise ArchiveTooLargeError(
            f"the event log ({len(events)} events, {len(compressed)} bytes compressed) needs {len(parts)} "
            f"ConfigMaps; the archive holds at most {max_segments}"
        )
    manifest = Manifest(
        segments=len(parts),
        events=len(events),
        last_id=events[-1].id if events else 0,
        sha256=hashlib.sha256(compressed).hexdigest(),
    )
    segments = [{PART_KEY: part} for part in parts]
    segments[0][MANIFEST_KEY] = manifest.to_json()
    return segments


def read_manifest(segment0: dict[str, str] | None) -> Manifest | None:
    """The manifest in segment 0's data; None when there is none (no archive, or not finished)."""
    if not segment0 or MANIFEST_KEY not in segment0:
        return None
    try:
        return Manifest.from_json(segment0[MANIFEST_KEY])
    except (ValueError, KeyError, TypeError):
        return None


def decode_archive(segments: Sequence[dict[str, str]]) -> list[Event] | None:
    """The events held in the archive's ConfigMaps (segment 0 first); None when the parts are missing,
    from another attempt, or damaged."""
    manifest = read_manifest(segments[0] if segments else None)
    if manifest is None or len(segments) < manifest.segments:
        return None
    try:
        text = "".join(segment[PART_KEY] for segment in segments[: manifest.segments])
        compressed = base64.b64decode(text, validate=True)
        if hashlib.sha256(compressed).hexdigest() != manifest.sha256:
            return None
        events = [Event.from_json(json.loads(line)) for line in gzip.decompress(compressed).splitlines() if line]
    except (KeyError, ValueError, TypeError, OSError, EOFError):
        return None
    return events if len(events) == manifest.events else None


async def write_archive(writer: ArchiveWriter, run: str, events: Sequence[Event]) -> int:
    """Archive the ended run's event log; returns the number of ConfigMaps written. Raises
    ArchiveTooLargeError when it does not fit (nothing is written then)."""
    segments = encode_archive(events)
    labels = {constants.LABEL_RUN: run, constants.LABEL_ROLE: ROLE_EVENTS_ARCHIVE}
    # The parts first and segment 0 with the manifest last: a manifest always finds its parts.
    for index in range(len(segments) - 1, -1, -1):
        await writer.put_data(events_archive_name(run, index), segments[index], labels)
    return len(segments)


async def archive_ended_run(writer: ArchiveWriter, run: str, events: Sequence[Event]) -> None:
    """``write_archive``, for the end of the run: a failure is logged, never fails the run (its outcome
    is recorded already; only a late reader's replay is lost)."""
    try:
        written = await write_archive(writer, run, events)
    except (ArchiveTooLargeError, KubeError) as error:
        log.warning("the event log is not archived, so it cannot be replayed once this pod is gone: %s", error)
        return
    log.info("archived %d events into %d ConfigMap(s) for replay after the end", len(events), written)
