"""Leader election between the operator's replicas, on a ``coordination.k8s.io/v1`` Lease.

The Kubernetes convention (client-go's leaderelection, which kube-controller-manager uses): the Lease
names its ``holderIdentity``, and the holder renews ``renewTime`` every ``retry period``; every write is
an update conditional on the resourceVersion read, so of two replicas racing for the Lease exactly one
wins. A standby takes the Lease over once the record has not changed for ``leaseDurationSeconds`` as
measured by its own clock (never by comparing clocks between machines), or at once when the holder
released it: a standby watches the Lease, so a release wakes it without waiting for its next attempt (and
it takes over before a replacement replica that is still starting). The leader steps down when it could not
renew within the renew deadline, which is shorter than the lease duration: its work has stopped before any
standby may take over.

The operator passes two callbacks: ``on_lead`` (start supervising, serve permits) and ``on_follow``
(stop both, and return once stopped). While leading, the replica labels its own pod (when it knows its
pod from the downward API), so the permit Service routes runners only to the leader.
"""

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any

import aiohttp

from agentrun_api import constants
from agentrun_common.settings import Env, PositiveSeconds
from agentrun_operator.kube import ApiError, KubeClient

logger = logging.getLogger(__name__)

LEASES = "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
# The pod label the leader carries; the permit Service selects it.
LEADER_LABEL = f"{constants.GROUP}/leader"


@dataclasses.dataclass(frozen=True)
class LeaderElection:
    """Where the replicas' Lease is and how it is timed (the OperatorSettings part; env vars in brackets)."""

    # Name of the Lease [AGENTRUN_LEADER_ELECTION_LEASE]. Empty: one replica, leader from the start,
    # no Lease (two replicas without a Lease would both reconcile every run).
    lease_name: Annotated[str, Env(name="AGENTRUN_LEADER_ELECTION_LEASE")] = ""
    # Namespace of the Lease [AGENTRUN_LEADER_ELECTION_NAMESPACE], default the pod's own (POD_NAMESPACE).
    namespace: Annotated[str, Env(name="AGENTRUN_LEADER_ELECTION_NAMESPACE", fallbacks=("POD_NAMESPACE",))] = ""
    # This replica's identity in the Lease [POD_NAME from the downward API]; empty: host name and process id.
    identity: Annotated[str, Env(name="POD_NAME")] = ""
    # The pod to label while leading: POD_NAME and POD_NAMESPACE from the downward API. Empty when the
    # operator does not run in a pod (tests, a laptop): no label then.
    pod_name: Annotated[str, Env(name="POD_NAME")] = ""
    pod_namespace: Annotated[str, Env(name="POD_NAMESPACE")] = ""
    # Seconds a Lease lasts without renewal [AGENTRUN_LEASE_DURATION_SECONDS], default 15: the longest a
    # killed leader's runs go unsupervised, and how long a standby waits before taking over.
    lease_duration_seconds: Annotated[PositiveSeconds, Env(name="AGENTRUN_LEASE_DURATION_SECONDS")] = 15.0
    # Seconds the leader keeps trying to renew before it stops leading [AGENTRUN_LEASE_RENEW_DEADLINE_SECONDS],
    # default 10; less than the lease duration, so the leader has stopped before anyone may take over.
    renew_deadline_seconds: Annotated[PositiveSeconds, Env(name="AGENTRUN_LEASE_RENEW_DEADLINE_SECONDS")] = 10.0
    # Seconds between two attempts to acquire or renew [AGENTRUN_LEASE_RETRY_PERIOD_SECONDS], default 2.
    retry_period_seconds: Annotated[PositiveSeconds, Env(name="AGENTRUN_LEASE_RETRY_PERIOD_SECONDS")] = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.retry_period_seconds < self.renew_deadline_seconds < self.lease_duration_seconds:
            raise ValueError(
                "the Lease timing must satisfy 0 < AGENTRUN_LEASE_RETRY_PERIOD_SECONDS < "
                "AGENTRUN_LEASE_RENEW_DEADLINE_SECONDS < AGENTRUN_LEASE_DURATION_SECONDS, got "
                f"{self.retry_period_seconds:g} < {self.renew_deadline_seconds:g} < {self.lease_duration_seconds:g}"
            )
        if self.lease_name and not self.namespace:
            raise ValueError(
                "AGENTRUN_LEADER_ELECTION_LEASE is set but the Lease has no namespace: set "
                "AGENTRUN_LEADER_ELECTION_NAMESPACE (or POD_NAMESPACE from the downward API)"
            )

    @property
    def enabled(self) -> bool:
        return bool(self.lease_name)


def micro_time(moment: datetime) -> str:
    """A Kubernetes MicroTime (RFC 3339 with microseconds), as Lease times are written."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


Callback = Callable[[], Awaitable[None]]


class LeaderElector:
    """Acquires and renews the Lease; calls ``on_lead`` on gaining it and ``on_follow`` on losing it."""

    def __init__(
        self,
        kube: KubeClient,
        settings: LeaderElection,
        *,
        on_lead: Callback,
        on_follow: Callback,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.identity = settings.identity or f"{socket.gethostname()}-{os.getpid()}"
        self._on_lead, self._on_follow = on_lead, on_follow
        self._clock, self._wall = clock, wall_clock
        self._path = LEASES.format(namespace=settings.namespace)
        self.leading = False
        self._renewed_at = 0.0  # local clock, last successful acquire or renew
        # The last Lease record seen, and when (local clock) it last changed: expiry is judged by it.
        self._observed: tuple[str, str, str] | None = None
        self._observed_at = 0.0
        # While following: the Lease watch, and the wake-up it gives when the holder lets the Lease go.
        self._watcher: asyncio.Task[None] | None = None
        self._released = asyncio.Event()

    async def run(self) -> None:
        """Until cancelled: try to acquire or renew every retry period; step down past the renew deadline."""
        try:
            await self._elect()
        finally:
            self._stop_watching()

    async def _elect(self) -> None:
        settings = self.settings
        while True:
            now = self._clock()
            budget = (
                self._renewed_at + settings.renew_deadline_seconds - now
                if self.leading
                else settings.retry_period_seconds
            )
            try:
                held = await asyncio.wait_for(self._try_acquire_or_renew(), timeout=max(budget, 0.05))
            except (ApiError, aiohttp.ClientError, TimeoutError) as error:
                logger.warning(
                    "cannot read or write the Lease %s/%s: %s", settings.namespace, settings.lease_name, error
                )
                held = None
            now = self._clock()
            if held:
                self._renewed_at = now
                if not self.leading:
                    await self._gain()
            elif self.leading and (held is False or now >= self._renewed_at + settings.renew_deadline_seconds):
                await self._lose(
                    "another replica holds the Lease" if held is False else "could not renew the Lease in time"
                )
            await self._pause()

    async def _pause(self) -> None:
        """Until the next attempt: one retry period, cut short for a follower when the Lease is released."""
        if self.leading:
            self._stop_watching()
            await asyncio.sleep(self.settings.retry_period_seconds)
            return
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.create_task(self._watch_for_release(), name="lease watch")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._released.wait(), timeout=self.settings.retry_period_seconds)
        self._released.clear()

    async def _watch_for_release(self) -> None:
        """Set ``_released`` whenever the Lease has no holder (or is deleted). A watch without a resourceVersion
        starts with the Lease as it is, so a release during a gap between two watches is not missed."""
        settings = self.settings
        params = {"fieldSelector": f"metadata.name={settings.lease_name}"}
        what = f"watch Lease {settings.namespace}/{settings.lease_name}"
        last_error = ""
        while True:
            started = self._clock()
            try:
                async for event in self.kube.watch(self._path, params=params, timeout_seconds=300, what=what):
                    spec = (event.get("object") or {}).get("spec") or {}
                    if event.get("type") == "DELETED" or not spec.get("holderIdentity"):
                        self._released.set()
                last_error = ""
            except ApiError as error:
                # Not fatal: without the watch a standby still takes over, at its next attempt.
                if str(error) != last_error:
                    logger.warning("cannot watch the Lease (a release is noticed at the next attempt): %s", error)
                last_error = str(error)
            if self._clock() - started < settings.retry_period_seconds:
                # Refused or ended at once (a proxy closing it, say): watched again after a pause, not in a tight loop.
                await asyncio.sleep(settings.retry_period_seconds)

    def _stop_watching(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None

    async def release(self) -> None:
        """On a clean shutdown: stop leading and clear the holder, so a standby takes over at once."""
        if not self.leading:
            return
        await self._lose("the operator is stopping")
        with contextlib.suppress(ApiError, aiohttp.ClientError, TimeoutError):
            lease = await self.kube.request("GET", f"{self._path}/{self.settings.lease_name}")
            spec = lease.setdefault("spec", {})
            if spec.get("holderIdentity") == self.identity:
                spec["holderIdentity"] = None
                spec["leaseDurationSeconds"] = 1
                await asyncio.wait_for(
                    self.kube.request("PUT", f"{self._path}/{self.settings.lease_name}", body=lease),
                    timeout=self.settings.retry_period_seconds,
                )

    async def _gain(self) -> None:
        self.leading = True
        logger.info("leading: this replica (%s) holds the Lease %s", self.identity, self.settings.lease_name)
        await self._on_lead()
        await self._label_pod(True)

    async def _lose(self, why: str) -> None:
        self.leading = False
        logger.warning("no longer leading (%s): stopping the supervisors", why)
        await self._on_follow()
        await self._label_pod(False)

    async def _label_pod(self, leading: bool) -> None:
        settings = self.settings
        if not (settings.pod_name and settings.pod_namespace):
            return
        patch = {"metadata": {"labels": {LEADER_LABEL: "true" if leading else None}}}
        try:
            await asyncio.wait_for(
                self.kube.merge_patch("Pod", settings.pod_namespace, settings.pod_name, patch),
                timeout=settings.retry_period_seconds,
            )
        except (ApiError, aiohttp.ClientError, TimeoutError) as error:
            # Not fatal: a runner routed to a replica that does not lead is answered 503 and retries.
            logger.warning(
                "cannot %s the leader label of pod %s: %s", "set" if leading else "remove", settings.pod_name, error
            )

    async def _try_acquire_or_renew(self) -> bool | None:
        """True when this replica holds the Lease after the attempt; False when another one does; None
        when the Lease changed under the attempt (409): the next attempt reads it again."""
        settings = self.settings
        now, wall = self._clock(), self._wall()
        try:
            lease = await self.kube.request("GET", f"{self._path}/{settings.lease_name}")
        except ApiError as error:
            if not error.not_found:
                raise
            return await self._create(wall)
        spec: dict[str, Any] = lease.setdefault("spec", {})
        holder = str(spec.get("holderIdentity") or "")
        record = (holder, str(spec.get("renewTime") or ""), str(lease.get("metadata", {}).get("resourceVersion")))
        if record != self._observed:
            self._observed, self._observed_at = record, now
        duration = float(spec.get("leaseDurationSeconds") or settings.lease_duration_seconds)
        if holder and holder != self.identity and now < self._observed_at + duration:
            return False  # held by another replica, and renewed within its duration
        if holder != self.identity:
            spec["acquireTime"] = micro_time(wall)
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        spec["holderIdentity"] = self.identity
        spec["leaseDurationSeconds"] = round(settings.lease_duration_seconds) or 1
        spec["renewTime"] = micro_time(wall)
        try:
            # An update with the resourceVersion read: of two replicas racing, one gets 409 Conflict.
            written = await self.kube.request("PUT", f"{self._path}/{settings.lease_name}", body=lease)
        except ApiError as error:
            if error.conflict:
                return None
            raise
        self._observe_own(written, now)
        return True

    async def _create(self, wall: datetime) -> bool | None:
        settings = self.settings
        lease = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": settings.lease_name, "namespace": settings.namespace},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": round(settings.lease_duration_seconds) or 1,
                "acquireTime": micro_time(wall),
                "renewTime": micro_time(wall),
                "leaseTransitions": 0,
            },
        }
        try:
            written = await self.kube.request("POST", self._path, body=lease)
        except ApiError as error:
            if error.conflict:  # another replica created it first
                return None
            raise
        self._observe_own(written, self._clock())
        return True

    def _observe_own(self, lease: dict[str, Any], now: float) -> None:
        spec = lease.get("spec") or {}
        self._observed = (
            str(spec.get("holderIdentity") or ""),
            str(spec.get("renewTime") or ""),
            str(lease.get("metadata", {}).get("resourceVersion")),
        )
        self._observed_at = now
