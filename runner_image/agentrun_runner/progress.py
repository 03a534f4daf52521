"""Progress to the operator: a ProgressReport in ConfigMap <run>-progress, at a bounded rate.

The sink is an interface so that the runner can also report into a file (runs outside a cluster,
tests without an API server). Reports are coalesced: at most one write per interval, except that a
report with an outcome is written at once. The loop says *that* something changed (several times an
iteration); the report itself is built only when one is written.
"""

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from agentrun_api import constants
from agentrun_api.contract import PROGRESS_KEY, ProgressReport, progress_name
from agentrun_runner.kube import ConfigMaps, KubeError

log = logging.getLogger(__name__)


class ProgressSink(Protocol):
    async def write(self, report: ProgressReport) -> None: ...


def _render(report: ProgressReport) -> str:
    return report.model_dump_json(by_alias=True, exclude_none=True)


class ConfigMapProgressSink:
    """Writes into <run>-progress. A write that fails is tried again a few times, a second apart: a deleted
    ConfigMap the runner may not create itself (its Role grants create only with the ConfigMap checkpoint store)
    is created again by the operator within about a second, and the outcome must not be lost meanwhile."""

    ATTEMPTS = 5
    RETRY_SECONDS = 1.0

    def __init__(self, configmaps: ConfigMaps, run: str) -> None:
        self._configmaps = configmaps
        self._name = progress_name(run)
        # The operator's labels: should the runner have to create the ConfigMap again (it was deleted), the
        # operator's watch, which selects on them, still sees the outcome.
        self._labels = {
            constants.LABEL_MANAGED_BY: constants.MANAGED_BY,
            constants.LABEL_RUN: run,
            constants.LABEL_ROLE: "progress",
        }

    async def write(self, report: ProgressReport) -> None:
        data = {PROGRESS_KEY: _render(report)}
        for attempt in range(1, self.ATTEMPTS + 1):
            try:
                await self._configmaps.put_data(self._name, data, self._labels)
                return
            except KubeError as error:
                if attempt == self.ATTEMPTS:
                    raise
                log.warning("progress report not written (attempt %d), trying again: %s", attempt, error)
                await asyncio.sleep(self.RETRY_SECONDS)


class FileProgressSink:
    """Writes the report JSON to a file, atomically (readers never see half a report)."""

    def __init__(self, path: Path) -> None:
        self._path = path

    async def write(self, report: ProgressReport) -> None:
        await asyncio.to_thread(self._write, _render(report))

    def _write(self, text: str) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self._path.with_name(self._path.name + ".tmp")
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, self._path)


class ProgressReporter:
    """Keeps the latest report and writes it at most once per ``interval`` seconds."""

    def __init__(self, sink: ProgressSink, interval: float) -> None:
        self._sink = sink
        self._interval = interval
        self._pending: Callable[[], ProgressReport] | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.failures = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="progress-reporter")

    def submit(self, build: Callable[[], ProgressReport]) -> None:
        """Something changed: when the interval allows, the writer calls ``build`` for the report
        as of then and sends it."""
        self._pending = build
        self._wake.set()

    async def write_now(self, report: ProgressReport) -> None:
        """Write at once (a terminal outcome); errors propagate, so the outcome is not lost silently."""
        self._pending = None
        async with self._lock:
            await self._sink.write(report)

    async def flush(self) -> None:
        """Write what is pending; on return, every report submitted before the call is written.
        The pending report is taken under the lock, so a flush that finds nothing pending still waits
        for the background write that took it: a stop right after must not cancel that write unstarted."""
        async with self._lock:
            if self._pending is not None:
                build, self._pending = self._pending, None
                await self._sink.write(build())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
            except Exception as error:  # a lost progress write is repeated by the next one
                self.failures += 1
                log.warning("progress report not written: %s", error)
            await asyncio.sleep(self._interval)
