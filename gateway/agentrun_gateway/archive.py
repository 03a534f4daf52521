"""The event log of a run whose runner is gone, read from what the runner left in ConfigMaps.

Two places hold it, both written by the runner and read here with the gateway's own credentials
(``get`` on configmaps); the format and its decoding are shared with the runner
(``agentrun_common.eventlog``), so the archive serves exactly what the runner would replay, framed as
the runner frames it:
- the event-log archive ``<run>-events-<n>``, which a run with the PVC checkpoint store writes when it
  ends (the gateway cannot mount every run's claim);
- the checkpoint segments ``<run>-ckpt-<n>`` of a run with the ConfigMap store, which hold the log
  in their records already (and hold it even when the runner never reached its end).

Only the run's own are served, as the runner resumes only from its own: a ConfigMap must be owned by
the AgentRun's uid and a checkpoint record must carry it. What a deleted run of the same name left
behind (not yet garbage-collected) or another run planted is never shown to this run's readers.
"""

from agentrun_api.contract import (
    CONFIGMAP_MAX_SEGMENTS,
    EVENTS_ARCHIVE_MAX_SEGMENTS,
    checkpoint_segment_name,
    events_archive_name,
)
from agentrun_common.eventlog.archive import decode_archive, read_manifest
from agentrun_common.eventlog.events import Event, format_event
from agentrun_common.eventlog.records import events_of
from agentrun_common.eventlog.segments import decode_segments
from agentrun_common.sse import SseEvent, SseParser
from agentrun_gateway.kube import KubeApi


class RunArchive:
    """``EventArchive`` over a run's event-log archive, else its ConfigMap checkpoint segments."""

    def __init__(
        self,
        kube: KubeApi,
        *,
        max_checkpoint_segments: int = CONFIGMAP_MAX_SEGMENTS,
        max_archive_segments: int = EVENTS_ARCHIVE_MAX_SEGMENTS,
    ) -> None:
        self._kube = kube
        self._max_checkpoint_segments = max_checkpoint_segments
        self._max_archive_segments = max_archive_segments

    async def events_after(self, namespace: str, run: str, run_uid: str, last_id: int) -> list[SseEvent] | None:
        if not run_uid:
            return None  # nothing can be proven to be this run's
        events = await self._archived(namespace, run, run_uid)
        if events is None:
            events = await self._checkpointed(namespace, run, run_uid)
        if events is None:
            return None
        parser = SseParser()
        wire = b"".join(format_event(event) for event in events)
        return [event for event in parser.feed(wire) if (event.sequence or 0) > last_id]

    async def _archived(self, namespace: str, run: str, run_uid: str) -> list[Event] | None:
        first = await self._kube.owned_configmap_data(namespace, events_archive_name(run, 0), run_uid)
        manifest = read_manifest(first)
        if first is None or manifest is None or manifest.segments > self._max_archive_segments:
            return None
        segments = [first]
        for index in range(1, manifest.segments):
            data = await self._kube.owned_configmap_data(namespace, events_archive_name(run, index), run_uid)
            if not data:
                return None
            segments.append(data)
        return decode_archive(segments)

    async def _checkpointed(self, namespace: str, run: str, run_uid: str) -> list[Event] | None:
        segments: list[dict[str, str]] = []
        for index in range(self._max_checkpoint_segments):
            data = await self._kube.owned_configmap_data(namespace, checkpoint_segment_name(run, index), run_uid)
            if not data:
                break
            segments.append(data)
        if not segments:
            return None
        records = decode_segments(run, segments, run_uid).records
        if not records:
            return None  # none is this run's: nothing to replay, not an empty log
        return events_of(records)
