"""Progress reports are coalesced to one write per interval, and an outcome is written at once.
Virtual time (looptime): the intervals cost no real time."""

import asyncio
import functools
import itertools
from datetime import UTC, datetime

import pytest

from agentrun_api.contract import PROGRESS_KEY, Outcome, ProgressReport
from agentrun_runner.kube import KubeError
from agentrun_runner.progress import ConfigMapProgressSink, ProgressReporter

pytestmark = [pytest.mark.unit, pytest.mark.looptime]


class CollectingSink:
    """A sink that keeps what it was given, with the loop time of each write."""

    def __init__(self) -> None:
        self.writes: list[tuple[float, ProgressReport]] = []

    async def write(self, report: ProgressReport) -> None:
        self.writes.append((asyncio.get_running_loop().time(), report))


def report(iteration: int, outcome: Outcome | None = None) -> ProgressReport:
    return ProgressReport(run_uid="u", pod="p", iteration=iteration, reported_at=datetime.now(UTC), outcome=outcome)


async def test_reports_are_written_at_most_once_per_interval_and_the_newest_wins() -> None:
    sink = CollectingSink()
    reporter = ProgressReporter(sink, interval=2.0)
    reporter.start()
    for iteration in range(1, 101):  # one report every 0.1 s for 10 s
        reporter.submit(functools.partial(report, iteration))
        await asyncio.sleep(0.1)
    await asyncio.sleep(2.5)
    await reporter.stop()

    times = [t for t, _ in sink.writes]
    assert 5 <= len(times) <= 7
    assert all(later - earlier >= 2.0 for earlier, later in itertools.pairwise(times))
    assert sink.writes[-1][1].iteration == 100, "the last report is not lost"


async def test_an_outcome_is_written_at_once() -> None:
    sink = CollectingSink()
    reporter = ProgressReporter(sink, interval=60.0)
    reporter.start()
    reporter.submit(functools.partial(report, 1))
    await asyncio.sleep(0.5)
    started = asyncio.get_running_loop().time()
    await reporter.write_now(report(2, Outcome.SUCCEEDED))
    await reporter.stop()
    assert [r.iteration for _, r in sink.writes] == [1, 2]
    assert sink.writes[-1][0] == started
    assert sink.writes[-1][1].outcome is Outcome.SUCCEEDED


async def test_a_report_is_built_only_when_one_is_written() -> None:
    sink = CollectingSink()
    reporter = ProgressReporter(sink, interval=2.0)
    built: list[int] = []
    state = {"iteration": 0}

    def build() -> ProgressReport:
        built.append(state["iteration"])
        return report(state["iteration"])

    reporter.start()
    for iteration in range(1, 41):  # four changes an iteration would be 160 reports; 10 per second here
        state["iteration"] = iteration
        reporter.submit(build)
        await asyncio.sleep(0.1)
    await asyncio.sleep(2.5)
    await reporter.stop()
    assert len(built) == len(sink.writes) <= 3
    assert [r.iteration for _, r in sink.writes] == built
    assert built[-1] == 40, "the report is as of its write, so the newest state is not lost"


class GatedSink(CollectingSink):
    """A sink whose writes wait for ``gate``, like a file write queued behind a busy thread pool."""

    def __init__(self) -> None:
        super().__init__()
        self.writing = asyncio.Event()
        self.gate = asyncio.Event()

    async def write(self, report: ProgressReport) -> None:
        self.writing.set()
        await self.gate.wait()
        await super().write(report)


async def test_flush_waits_for_the_background_write_of_the_last_report() -> None:
    # A SIGTERM'd runner flushes, then stops the reporter. Had flush returned while the background
    # writer still held the last report, the stop would cancel that write and the report be lost.
    sink = GatedSink()
    reporter = ProgressReporter(sink, interval=2.0)
    reporter.start()
    reporter.submit(functools.partial(report, 7))
    await sink.writing.wait()
    flushing = asyncio.create_task(reporter.flush())
    await asyncio.sleep(0.5)
    assert not flushing.done(), "flush returned before the last report was written"
    sink.gate.set()
    await flushing
    await reporter.stop()
    assert [r.iteration for _, r in sink.writes] == [7]


class ConfigMapsMissingFor:
    """A ConfigMap the runner may not create, gone for the first ``failures`` writes (until the operator
    creates it again)."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.written: list[dict[str, str]] = []

    async def put_data(self, name: str, data: dict[str, str], labels: dict[str, str]) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise KubeError(403, "Forbidden", "configmaps is forbidden", what=f"cannot create ConfigMap ns/{name}")
        self.written.append(data)


async def test_an_outcome_written_while_the_progress_configmap_is_gone_is_written_once_it_is_back() -> None:
    configmaps = ConfigMapsMissingFor(failures=2)
    sink = ConfigMapProgressSink(configmaps, "q3")  # type: ignore[arg-type]
    await sink.write(report(4, Outcome.SUCCEEDED))
    assert len(configmaps.written) == 1
    assert '"outcome":"Succeeded"' in configmaps.written[0][PROGRESS_KEY]


async def test_a_progress_configmap_that_stays_gone_fails_the_write_after_the_attempts() -> None:
    configmaps = ConfigMapsMissingFor(failures=ConfigMapProgressSink.ATTEMPTS)
    sink = ConfigMapProgressSink(configmaps, "q3")  # type: ignore[arg-type]
    with pytest.raises(KubeError, match="HTTP 403"):
        await sink.write(report(4, Outcome.SUCCEEDED))
    assert configmaps.written == []
