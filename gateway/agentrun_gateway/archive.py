"""The event log of a run whose runner is gone, read from the runner's checkpoint.

The runner keeps its event log in its checkpoint records; with the ConfigMap store those are the
segment ConfigMaps ``<run>-ckpt-<n>``, which the gateway reads with its own credentials (``get`` on
configmaps). Decoding is the runner's own code (``decode_segments``, ``events_of``, ``format_event``),
so the archive serves exactly what the runner would replay, formatted as the runner formats it.

PVC store: the gateway cannot mount every run's claim, so it finds no segments and answers None;
for such runs a late reader gets the full replay only while the runner's pod still serves (it
lingers after the end, ``AGENTRUN_RUNNER_SSE_LINGER_SECONDS``). See docs/streaming.md.
"""

from agentrun_api.contract import CONFIGMAP_MAX_SEGMENTS, checkpoint_segment_name
from agentrun_gateway.kube import KubeApi
from agentrun_gateway.sse import SseEvent, SseParser
from agentrun_runner.checkpoint.configmap import decode_segments
from agentrun_runner.state import events_of
from agentrun_runner.stream import format_event


class CheckpointArchive:
    """``EventArchive`` over the runner's ConfigMap checkpoint segments."""

    def __init__(self, kube: KubeApi, *, max_segments: int = CONFIGMAP_MAX_SEGMENTS) -> None:
        self._kube = kube
        self._max_segments = max_segments

    async def events_after(self, namespace: str, run: str, last_id: int) -> list[SseEvent] | None:
        segments: list[dict[str, str]] = []
        for index in range(self._max_segments):
            data = await self._kube.configmap_data(namespace, checkpoint_segment_name(run, index))
            if not data:
                break
            segments.append(data)
        if not segments:
            return None
        parser = SseParser()
        wire = b"".join(format_event(event) for event in events_of(decode_segments(run, segments).records))
        return [event for event in parser.feed(wire) if event.id is not None and event.id > last_id]
