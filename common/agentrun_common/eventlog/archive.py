"""The event-log archive of an ended run: ConfigMaps ``<run>-events-<n>`` the runner writes and the stream
gateway replays.

With the PVC checkpoint store the event log lives on a claim that only the runner's pod mounts; once
that pod is gone, nothing else can read it. So when the run has ended, the runner writes its whole
event log, as the stream served it, into ConfigMaps ``<run>-events-<n>`` (owned by the AgentRun, so
deleting the run collects them): JSON lines, gzip-compressed, base64 in ``data`` and split into parts
of at most ``CONFIGMAP_SEGMENT_LIMIT_BYTES`` (under the API server's 1 MiB object limit), at most
``EVENTS_ARCHIVE_MAX_SEGMENTS`` of them. Segment 0 also holds the manifest (part count, event count,
SHA-256 of the compressed log) and is written last, so a reader that finds the manifest finds every
part; a log too large for the cap is not archived at all (a reader never gets a replay with a gap).
"""

import base64
import gzip
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from agentrun_api.contract import CONFIGMAP_SEGMENT_LIMIT_BYTES, EVENTS_ARCHIVE_MAX_SEGMENTS
from agentrun_common.eventlog.events import Event

PART_KEY: Final = "events.jsonl.gz.b64"
MANIFEST_KEY: Final = "manifest.json"
# Room left in segment 0 for the manifest and the keys.
_MANIFEST_ROOM_BYTES: Final = 1024


class ArchiveTooLargeError(ValueError):
    """The compressed event log does not fit the archive's ConfigMaps."""


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
