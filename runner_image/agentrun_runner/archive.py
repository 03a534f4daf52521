"""Writing the event-log archive of an ended run (its format: ``agentrun_common.eventlog.archive``), so the
stream gateway can replay a run with the PVC checkpoint store once its pod is gone.

Events hold what the stream shows its readers (model output, tool calls and results), never a
secret: the API key and the stream token are only in the runner's environment.
"""

import logging
from collections.abc import Sequence
from typing import Final, Protocol

from agentrun_api import constants
from agentrun_api.contract import events_archive_name
from agentrun_common.eventlog.archive import ArchiveTooLargeError, encode_archive
from agentrun_common.eventlog.events import Event
from agentrun_runner.kube import KubeError

log = logging.getLogger(__name__)

ROLE_EVENTS_ARCHIVE: Final = "events-archive"


class ArchiveWriter(Protocol):
    async def put_data(self, name: str, data: dict[str, str], labels: dict[str, str]) -> None: ...


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
