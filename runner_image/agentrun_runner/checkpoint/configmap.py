"""Checkpoint store in ConfigMaps: append-only segments ``<run>-ckpt-<n>``.

Each record is one key (``r<seq>-<part>``; the layout is ``agentrun_common.eventlog.segments``) merged into
the current segment with a small merge patch, so a write sends only the new record, never the history. A
segment is closed when the next key would pass ``CONFIGMAP_SEGMENT_LIMIT_BYTES`` (under the API server's
1 MiB object limit); a record larger than the space left is split into parts across segments.

Checkpoints are bound to the run's uid: every record carries it and every segment is owned by the
run's AgentRun. A segment the run does not own (a deleted run of the same name whose segments the
garbage collector has not removed yet, or one planted by another run) is claimed empty on load, and
a record of another uid is dropped as an unusable one is: a recreated run starts fresh.
"""

from typing import Any

from agentrun_api import constants
from agentrun_api.contract import CONFIGMAP_SEGMENT_LIMIT_BYTES, checkpoint_segment_name
from agentrun_common.eventlog.records import bind_record, encode_record
from agentrun_common.eventlog.segments import RECORD_KEY, RESULT_KEY, decode_segments, record_key
from agentrun_runner.checkpoint.store import CheckpointError, Loaded
from agentrun_runner.kube import ConfigMaps, KubeError

# Do not start a part in a segment with less room than this; start the next segment instead.
_MIN_PART_BYTES = 4096


class ConfigMapStore:
    def __init__(
        self,
        configmaps: ConfigMaps,
        run: str,
        *,
        run_uid: str,
        max_segments: int,
        segment_limit_bytes: int = CONFIGMAP_SEGMENT_LIMIT_BYTES,
    ) -> None:
        self._configmaps = configmaps
        self._run = run
        self._run_uid = run_uid
        self._max_segments = max_segments
        self._limit = segment_limit_bytes
        self._segment = 0  # the segment the next key goes into
        self._used = 0  # bytes of keys and values in that segment
        self._total = 0
        self._labels = {
            constants.LABEL_RUN: run,
            constants.LABEL_ROLE: "checkpoint",
        }

    @property
    def total_bytes(self) -> int:
        return self._total

    async def load(self) -> Loaded:
        segments: list[dict[str, str]] = []
        claimed: list[str] = []
        try:
            for index in range(self._max_segments):
                name = checkpoint_segment_name(self._run, index)
                found = await self._configmaps.get_owned_data(name)
                if found is None:
                    break
                data, owners = found
                if self._run_uid not in owners:
                    await self._configmaps.claim(name, self._labels)
                    claimed.append(name)
                    continue  # the foreign run's later segments are claimed too, before we reach them
                if claimed or not data:
                    break
                segments.append(data)
        except KubeError as error:
            raise CheckpointError(str(error)) from error

        decoded = decode_segments(self._run, segments, self._run_uid)
        records, problem, bad = decoded.records, decoded.problem, decoded.unusable
        if claimed:
            problem = (
                f"checkpoint ConfigMap(s) {', '.join(claimed)} belonged to another run (a deleted run of the same "
                f"name, or planted by another run), not to this run ({self._run_uid}); emptied and not resumed"
            )
        if bad:
            await self._drop(segments, bad)

        # The next key goes where the last kept key is, or into segment 0 for a new run.
        self._segment = 0
        for index, data in enumerate(segments):
            if any(self._kept(key, bad) for key in data):
                self._segment = index
        kept = segments[self._segment] if segments else {}
        self._used = sum(len(k) + len(v) for k, v in kept.items() if self._kept(k, bad))
        self._total = sum(len(k) + len(v) for data in segments for k, v in data.items() if self._kept(k, bad))
        return Loaded(records=records, problem=problem, total_bytes=self._total)

    @staticmethod
    def _kept(key: str, bad: set[int]) -> bool:
        match = RECORD_KEY.match(key)
        return key == RESULT_KEY or (match is not None and int(match[1]) not in bad)

    async def _drop(self, segments: list[dict[str, str]], bad: set[int]) -> None:
        for index, data in enumerate(segments):
            removals: dict[str, str | None] = {
                key: None for key in data if (m := RECORD_KEY.match(key)) and int(m[1]) in bad
            }
            if removals:
                try:
                    await self._configmaps.patch_data(checkpoint_segment_name(self._run, index), removals)
                except KubeError as error:
                    raise CheckpointError(str(error)) from error

    async def append(self, record: dict[str, Any]) -> int:
        frame = encode_record(bind_record(record, self._run_uid)).decode("ascii")
        seq = int(record["seq"])
        offset = 0
        part = 0
        while offset < len(frame):
            key = record_key(seq, part)
            room = self._limit - self._used - len(key)
            if room < min(_MIN_PART_BYTES, len(frame) - offset):
                self._next_segment()
                continue
            piece = frame[offset : offset + room]
            await self._put(key, piece)
            offset += len(piece)
            part += 1
        return len(frame)

    async def save_result(self, text: str) -> str:
        size = len(RESULT_KEY) + len(text.encode("utf-8"))
        if size > self._limit:
            raise CheckpointError(
                f"the result ({size} bytes) is larger than one ConfigMap segment ({self._limit} bytes); "
                "use checkpoint.store: PersistentVolumeClaim for runs with larger results"
            )
        if self._used + size > self._limit:
            self._next_segment()
        name = checkpoint_segment_name(self._run, self._segment)
        await self._put(RESULT_KEY, text)
        return f"configmap/{name}#{RESULT_KEY}"

    def _next_segment(self) -> None:
        if self._segment + 1 >= self._max_segments:
            raise CheckpointError(
                f"checkpoint state of {self._run} fills all {self._max_segments} ConfigMap segments "
                f"({self._total} bytes); use checkpoint.store: PersistentVolumeClaim for runs this large"
            )
        self._segment += 1
        self._used = 0

    async def _put(self, key: str, value: str) -> None:
        name = checkpoint_segment_name(self._run, self._segment)
        try:
            await self._configmaps.put_data(name, {key: value}, self._labels)
        except KubeError as error:
            raise CheckpointError(str(error)) from error
        size = len(key) + len(value.encode("utf-8"))
        self._used += size
        self._total += size

    async def close(self) -> None:
        # The ConfigMaps client is shared with the progress sink; its owner closes it.
        return None
