"""Mirrors each ThrottlePool's live state (in flight, queued, granted, paused) into its status.

A task of the operator's own rather than a kopf timer: kopf puts its finalizer on every object a
timer watches, and a pool with a finalizer cannot be deleted while no operator runs (after an
uninstall, say). Each pool is looked at every tick; its status is written only when it changed, at
most once per interval per pool, and only by the leader (a standby's pools see no traffic).
"""

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

from agentrun_api import clusterthrottlepool, constants, throttlepool
from agentrun_operator.kube import ApiError, KubeClient
from agentrun_operator.permits.pool import PoolSnapshot
from agentrun_operator.permits.server import CLUSTER_SCOPE, PoolRegistry

logger = logging.getLogger(__name__)

# How often each pool is looked at; looking costs no API call, only a write of a changed status does.
TICK_SECONDS = 1.0


def status_from_snapshot(snapshot: PoolSnapshot, *, generation: int, now: datetime) -> dict[str, Any]:
    """The status fields to write for a pool, as JSON; whole seconds, so an idle pool's status is stable."""
    throttled_until = None
    if snapshot.paused_for_seconds > 0:
        # Rounded up to the whole second, so writes a moment apart agree on the same end.
        exact = now + timedelta(seconds=snapshot.paused_for_seconds)
        throttled_until = exact.replace(microsecond=0) + timedelta(seconds=1 if exact.microsecond else 0)
    status = throttlepool.ThrottlePoolStatus(
        in_flight=snapshot.in_flight,
        queue_depth=snapshot.queue_depth,
        waiting_runs=snapshot.waiting_runs,
        granted_last_minute=snapshot.granted_last_minute,
        current_requests_per_minute=round(snapshot.requests_per_minute),
        throttled_until=throttled_until,
        accepting=snapshot.opens_in_seconds <= 0,
        observed_generation=generation,
    )
    return status.model_dump(mode="json", by_alias=True)


@dataclass
class _Tracked:
    generation: int
    status: dict[str, Any] = field(default_factory=dict)  # as last written, or as found at declaration
    written_at: float = -math.inf


class PoolStatusWriter:
    """Writes the status of the pools it tracks; the ThrottlePool handlers tell it which pools exist."""

    def __init__(
        self,
        kube: KubeClient,
        registry: PoolRegistry,
        *,
        interval_seconds: float,
        tick_seconds: float = TICK_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._kube = kube
        self._registry = registry
        self._interval = interval_seconds
        self._tick = tick_seconds
        self._clock = clock
        self._pools: dict[tuple[str, str], _Tracked] = {}
        self._was_leading = registry.leading
        self._task: asyncio.Task[None] | None = None

    def track(self, namespace: str, name: str, *, generation: int, status: Mapping[str, Any]) -> None:
        """A pool was declared or its spec changed (a new generation)."""
        tracked = self._pools.get((namespace, name))
        if tracked is None:
            self._pools[(namespace, name)] = _Tracked(generation, dict(status))
        else:
            # What this writer wrote last stays: the handler's view of the status may predate it.
            tracked.generation = generation

    def forget(self, namespace: str, name: str) -> None:
        self._pools.pop((namespace, name), None)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="pool-status-writer")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._tick)
            await self.write_changed()

    async def write_changed(self) -> int:
        """One look at every tracked pool; returns how many statuses were written."""
        leading = self._registry.leading
        if leading and not self._was_leading:
            # The previous leader wrote meanwhile: what this replica knows of the statuses is stale.
            for tracked in self._pools.values():
                tracked.status.clear()
        self._was_leading = leading
        if not leading:
            return 0
        written = 0
        for (namespace, name), tracked in list(self._pools.items()):
            now = self._clock()
            snapshot = self._registry.snapshot(namespace, name)
            if snapshot is None or now < tracked.written_at + self._interval:
                continue
            fresh = status_from_snapshot(snapshot, generation=tracked.generation, now=datetime.now(UTC))
            if all(tracked.status.get(key) == value for key, value in fresh.items()):
                continue
            try:
                await self._write(namespace, name, fresh)
            except (ApiError, aiohttp.ClientError, TimeoutError) as error:
                if isinstance(error, ApiError) and error.not_found:
                    self.forget(namespace, name)  # deleted; its DELETED event is on its way
                else:
                    logger.warning("status of pool %s/%s not written, retrying: %s", namespace, name, error)
                continue
            tracked.status.update(fresh)
            tracked.written_at = now
            written += 1
        return written

    async def _write(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        body = {"status": status}
        if namespace != CLUSTER_SCOPE:
            await self._kube.merge_patch(throttlepool.KIND, namespace, name, body, subresource="status")
            return
        path = f"/apis/{constants.API_VERSION}/{clusterthrottlepool.PLURAL}/{name}/status"
        await self._kube.request("PATCH", path, body=body, content_type="application/merge-patch+json")
