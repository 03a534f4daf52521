"""The operator's own registry of live runs: one supervisor task per AgentRun, no kopf daemons.

kopf's per-object daemons and create/resume handlers cost every run a finalizer and kopf's progress
and diff-base annotations: each one a full AgentRun write (CEL admission on the server) before the
run's Job could even be created, plus kopf's per-daemon machinery in memory. A finalizer also keeps
a run from being deleted while no operator runs. So AgentRuns carry neither: the AgentRun watch
event handler hands each event's body here, and the registry

- keeps the latest body of each run (the ``Supervisor``'s live view of its run);
- while this replica leads (``leadership``), keeps one task per live run: it admits the run when it
  is not accepted yet (``reconcile.admit``, retried on temporary errors, at most
  ``max_concurrent_admissions`` at a time) and then runs ``reconcile.Supervisor``;
- restarts a supervision that crashed, after a backoff (``supervision_backoff_seconds``);
- stops the task when the run is deleted (a DELETED event or a deletionTimestamp);
- cleans up after an earlier, kopf-daemon version of the operator: kopf itself removes its finalizer
  from a run no handler needs it for (one JSON patch, on its first sight of the run), so an upgrade
  leaves nothing undeletable; the registry removes kopf's leftover annotations (one merge patch).
"""

import asyncio
import contextvars
import functools
import logging
from collections.abc import Mapping
from typing import Any

import aiohttp
import kopf

from agentrun_api import constants
from agentrun_operator.kube import ApiError
from agentrun_operator.reconcile import Lookup, OperatorContext, RunKey, Supervisor, admit, is_accepted

# What kopf left on every run while runs had kopf handlers and daemons: its default finalizer (which
# kopf removes by itself now that no AgentRun handler requires one), and its bookkeeping annotations
# under the operator's prefix (see the old handlers' storage settings), which the registry removes.
LEGACY_FINALIZER = "kopf.zalando.org/KopfFinalizerMarker"
LEGACY_ANNOTATIONS = tuple(
    f"{constants.GROUP}/{key}" for key in ("kopf-managed", "last-handled-configuration", "touch-dummy", "admit_run")
)
# A stopped supervisor finishes the request it is in (its step then sees the stop) for at most this
# long, then it is cancelled: a leader that lost its Lease must stop well before the Lease expires.
STOP_GRACE_SECONDS = 1.0
# A supervision that crashed starts again after this long, doubled at each further crash up to the maximum.
SUPERVISION_RETRY_FIRST_SECONDS = 1.0
SUPERVISION_RETRY_MAX_SECONDS = 60.0


def supervision_backoff_seconds(failures: int) -> float:
    """The wait before restarting a supervision that has crashed ``failures`` times in a row."""
    return min(SUPERVISION_RETRY_FIRST_SECONDS * 2.0 ** (failures - 1), SUPERVISION_RETRY_MAX_SECONDS)


class StopFlag:
    """What ``Supervisor.run`` polls between steps: false until the run's task is told to stop. A plain flag,
    not an event (one per live run): a stopped run is woken through its wake event, and cancelled after
    ``STOP_GRACE_SECONDS`` wherever else it waits."""

    __slots__ = ("stopped",)

    def __init__(self) -> None:
        self.stopped = False

    def set(self) -> None:
        self.stopped = True

    def __bool__(self) -> bool:
        return self.stopped


class RetryLaterError(Exception):
    """Admission did not finish and is worth retrying after ``delay`` seconds."""

    def __init__(self, message: str, delay: float) -> None:
        super().__init__(message)
        self.delay = delay


def run_logger(key: RunKey) -> logging.LoggerAdapter[logging.Logger]:
    """A logger whose lines name the run (``logs`` formats the reference, as for kopf's own lines)."""
    namespace, name = key
    ref = {"apiVersion": constants.API_VERSION, "kind": constants.KIND, "namespace": namespace, "name": name}
    return logging.LoggerAdapter(logging.getLogger("agentrun_operator.runs"), {"k8s_ref": ref})


def _deleting(body: Mapping[str, Any]) -> bool:
    return bool((body.get("metadata") or {}).get("deletionTimestamp"))


class RunRegistry:
    """Every AgentRun this replica has seen, and the supervisor tasks of those it is responsible for."""

    def __init__(self, op: OperatorContext, *, max_concurrent_admissions: int) -> None:
        self.op = op
        self._bodies: dict[RunKey, dict[str, Any]] = {}  # latest raw body; mutated in place (live views)
        self._tasks: dict[RunKey, asyncio.Task[None]] = {}
        self._stops: dict[RunKey, StopFlag] = {}
        # Runs whose supervisor finished (the run ended and nothing is left to do): not restarted by
        # later events of the same run, as kopf did not restart a daemon that returned.
        self._finished: set[RunKey] = set()
        self._migrating: set[RunKey] = set()
        # Runs whose supervisor has read their status (it keeps its own from then on): their bodies are kept
        # without it. A supervisor started for such a run again (leadership regained) reads the run afresh.
        self._statusless: set[RunKey] = set()
        self._admissions = asyncio.Semaphore(max_concurrent_admissions)
        self._lookups: tuple[Lookup, Lookup, Lookup, Lookup] | None = None
        # The context of kopf's handlers (its Event queue lives there): tasks started later, when
        # leadership is gained, post Events through it too.
        self._context: contextvars.Context | None = None
        self.leading = False

    def __len__(self) -> int:
        return len(self._tasks)

    @property
    def supervised(self) -> set[RunKey]:
        return set(self._tasks)

    def latest(self, key: RunKey) -> Mapping[str, Any] | None:
        """The latest body of a run as kept here (what its supervisor reads), or None."""
        return self._bodies.get(key)

    def attach(self, *, jobs: Lookup, pods: Lookup, progress: Lookup, approvals: Lookup | None = None) -> None:
        """The kopf indexes the supervisors observe children through (the same live objects every time)."""
        if self._lookups is None:
            self._lookups = (jobs, pods, progress, approvals or (lambda _key: ()))
            self._context = contextvars.copy_context()

    def observe(self, event_type: str, raw: Mapping[str, Any]) -> None:
        """One watch event of an AgentRun: remember its body; start or stop its supervisor."""
        metadata = raw.get("metadata") or {}
        key: RunKey = (str(metadata.get("namespace") or ""), str(metadata.get("name") or ""))
        if event_type == "DELETED":
            self._bodies.pop(key, None)
            self._finished.discard(key)
            self._statusless.discard(key)
            self._stop(key)
            return
        live = self._bodies.get(key)
        if live is not None and (live.get("metadata") or {}).get("uid") != metadata.get("uid"):
            # Deleted and created again under the same name between two events: a new run.
            self._stop(key)
            self._finished.discard(key)
            self._statusless.discard(key)
            live = None
        kept = _kept(raw, with_status=key not in self._statusless)
        if live is None:
            self._bodies[key] = kept
        else:
            live.clear()
            live.update(kept)
        if not self.leading:
            return
        if _legacy_annotations(raw):
            self._spawn_migration(key, raw)
        if _deleting(raw):
            self._bodies.pop(key, None)
            self._stop(key)
            return
        self._ensure(key)

    async def lead(self) -> None:
        """This replica became the leader: supervise every live run it knows."""
        self.leading = True
        for key, body in list(self._bodies.items()):
            if _legacy_annotations(body):
                self._spawn_migration(key, body)
            if not _deleting(body):
                self._ensure(key)

    async def follow(self) -> None:
        """This replica stopped leading: stop every supervisor, and return once they have stopped."""
        self.leading = False
        tasks = list(self._tasks.values())
        for key in list(self._tasks):
            self._stop(key)
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_GRACE_SECONDS + 0.5)

    def _ensure(self, key: RunKey) -> None:
        if key in self._tasks or key in self._finished or self._lookups is None:
            return
        stop = StopFlag()
        self._stops[key] = stop
        task = asyncio.create_task(self._drive(key, stop), name=f"supervise {key[0]}/{key[1]}", context=self._context)
        self._tasks[key] = task
        # In the registry's context too: a callback's default is a copy of the current one, which in an event
        # handler holds kopf's cause, and with it that event's whole raw body, for the life of the run.
        task.add_done_callback(functools.partial(self._forget, key), context=self._context)

    def _forget(self, key: RunKey, task: "asyncio.Task[None]") -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
            self._stops.pop(key, None)

    def _stop(self, key: RunKey) -> None:
        stop, task = self._stops.pop(key, None), self._tasks.pop(key, None)
        if stop is not None:
            stop.set()
            self.op.wake(key)  # a sleeping supervisor sees the stop at once
        if task is not None:
            asyncio.get_running_loop().call_later(STOP_GRACE_SECONDS, task.cancel)

    def _status_read(self, key: RunKey) -> None:
        self._statusless.add(key)
        body = self._bodies.get(key)
        if body is not None:
            body.pop("status", None)

    async def _drive(self, key: RunKey, stop: StopFlag) -> None:
        """Supervise the run until it ends or is stopped; a supervision that crashes starts again after a backoff.

        Expected failures (API errors, an unreachable server) are retried where they happen; anything else (a
        garbled answer, a bug) ends the attempt, and without a retry the run would stay Running forever, with no
        TTL and no webhook: so it is logged, counted and retried, reading the run afresh."""
        logger = run_logger(key)
        failures = 0
        while not stop:
            try:
                await self._supervise(key, stop, logger)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                failures += 1
                delay = supervision_backoff_seconds(failures)
                logger.exception("supervising the run failed (failure %d); retrying in %.0fs", failures, delay)
                self.op.metrics.reconcile_errors_total.labels(handler="supervise").inc()
                self._statusless.add(key)  # the crashed supervisor's status copy is gone: read the run again
                await _sleep(stop, delay)

    async def _supervise(self, key: RunKey, stop: StopFlag, logger: logging.LoggerAdapter[logging.Logger]) -> None:
        raw = self._bodies.get(key)
        if raw is None or self._lookups is None:
            return
        if key in self._statusless and not await self._refresh(key, raw, stop):
            return
        # A view of the dict that later events update in place: the Supervisor reads the latest body.
        body = kopf.Body(raw)  # type: ignore[arg-type]
        if not is_accepted(body) and not await self._admit(body, logger, stop):
            self._finished.add(key)
            return
        jobs, pods, progress, approvals = self._lookups
        supervisor = Supervisor(
            body,
            self.op,
            logger,
            jobs=jobs,
            pods=pods,
            progress=progress,
            approvals=approvals,
            on_status_read=functools.partial(self._status_read, key),
        )
        await supervisor.run(stop)
        if not stop:
            self._finished.add(key)
            self._bodies.pop(key, None)  # nothing left to do for it; a later event stores it again

    async def _refresh(self, key: RunKey, raw: dict[str, Any], stop: StopFlag) -> bool:
        """Read a run kept without its status afresh, for a new supervisor. False when it is gone or stopped."""
        self._statusless.discard(key)  # events from now on keep the status
        while not stop:
            try:
                fresh = await self.op.kube.get(constants.KIND, key[0], key[1])
            except ApiError as error:
                if error.not_found:
                    return False
                await _sleep(stop, error.retry_after or self.op.settings.retry_delay_seconds)
            except (aiohttp.ClientError, TimeoutError):
                await _sleep(stop, self.op.settings.retry_delay_seconds)
            else:
                if "status" not in raw:  # no event brought it meanwhile
                    raw.clear()
                    raw.update(_kept(fresh, with_status=True))
                return True
        return False

    async def _admit(self, body: kopf.Body, logger: logging.LoggerAdapter[logging.Logger], stop: StopFlag) -> bool:
        """Admit the run, retrying while that is worth it. False when the run cannot be admitted ever."""
        while not stop:
            try:
                async with self._admissions:
                    await self._admit_once(body, logger)
                return True
            except kopf.PermanentError as error:
                logger.error("the run cannot be admitted: %s", error)
                return False
            except RetryLaterError as retry:
                logger.warning("admission did not finish, retrying in %.1fs: %s", retry.delay, retry)
                await _sleep(stop, retry.delay)
        return False

    async def _admit_once(self, body: kopf.Body, logger: logging.LoggerAdapter[logging.Logger]) -> None:
        op = self.op
        try:
            await admit(body, op, logger)
        except kopf.TemporaryError as error:
            raise RetryLaterError(str(error), error.delay or op.settings.retry_delay_seconds) from error
        except ApiError as error:
            # Overload (429) and server errors pass: retry, as soon as the API server asked if it did.
            op.metrics.reconcile_errors_total.labels(handler="admit").inc()
            raise RetryLaterError(str(error), error.retry_after or op.settings.retry_delay_seconds) from error
        except (aiohttp.ClientError, TimeoutError) as error:
            op.metrics.reconcile_errors_total.labels(handler="admit").inc()
            raise RetryLaterError(f"API server unreachable: {error}", op.settings.retry_delay_seconds) from error

    def _spawn_migration(self, key: RunKey, raw: Mapping[str, Any]) -> None:
        if key in self._migrating:
            return
        self._migrating.add(key)
        task = asyncio.create_task(
            self._remove_legacy_annotations(key, _legacy_annotations(raw)), context=self._context
        )
        task.add_done_callback(lambda _: self._migrating.discard(key), context=self._context)

    async def _remove_legacy_annotations(self, key: RunKey, names: list[str]) -> None:
        """One merge patch removing exactly kopf's annotations (by key: the user's own are untouched)."""
        patch = {"metadata": {"annotations": dict.fromkeys(names)}}
        try:
            await self.op.kube.merge_patch(constants.KIND, key[0], key[1], patch)
        except ApiError as error:
            if not error.not_found:  # gone: nothing to clean; otherwise the run's next event tries again
                run_logger(key).warning("could not remove an earlier operator version's annotations: %s", error)
        except (aiohttp.ClientError, TimeoutError) as error:
            run_logger(key).warning("could not remove an earlier operator version's annotations: %s", error)
        else:
            run_logger(key).info("removed the annotations an earlier operator version left on the run")


# What a real API server sends along that no supervisor reads: field managers (a few KiB per writer) and
# kubectl's copy of the whole last applied object. Not kept: thousands of runs are held at once.
_UNREAD_METADATA = ("managedFields",)
_UNREAD_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",)


def _kept(raw: Mapping[str, Any], *, with_status: bool) -> dict[str, Any]:
    """The body as the registry keeps it: the event's, less what nothing here reads."""
    body = dict(raw)
    if not with_status:
        body.pop("status", None)
    metadata = body.get("metadata")
    if isinstance(metadata, Mapping) and (
        any(key in metadata for key in _UNREAD_METADATA)
        or any(key in (metadata.get("annotations") or {}) for key in _UNREAD_ANNOTATIONS)
    ):
        metadata = {key: value for key, value in metadata.items() if key not in _UNREAD_METADATA}
        annotations = metadata.get("annotations")
        if annotations:
            metadata["annotations"] = {k: v for k, v in annotations.items() if k not in _UNREAD_ANNOTATIONS}
        body["metadata"] = metadata
    return body


def _legacy_annotations(body: Mapping[str, Any]) -> list[str]:
    present = (body.get("metadata") or {}).get("annotations") or {}
    return [name for name in LEGACY_ANNOTATIONS if name in present]


async def _sleep(stop: StopFlag, seconds: float) -> None:
    """A retry delay; a stop during it cancels the task (after the grace), so no need to wait on the flag."""
    if not stop:
        await asyncio.sleep(seconds)
