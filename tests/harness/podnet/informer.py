"""A list-and-watch cache of one resource, as client-go's informers keep one: list, then watch from the list's
resourceVersion, and list again when the watch ends or is too old (410 Gone)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from tests.harness.nodeagent.kube import ApiError, JsonObject, KubeClient

logger = logging.getLogger(__name__)

RELIST_DELAY_SECONDS = 0.5


def object_key(obj: JsonObject) -> tuple[str, str]:
    return (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])


class Informer:
    """``objects`` mirrors the API server's objects at ``path``; ``on_change()`` is called after each change."""

    def __init__(self, kube: KubeClient, path: str, on_change: Callable[[], None]) -> None:
        self._kube = kube
        self._path = path
        self._on_change = on_change
        self.objects: dict[tuple[str, str], JsonObject] = {}
        self.synced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"informer {self._path}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                listed = await self._kube.request("GET", self._path)
                self.objects = {object_key(item): item for item in listed.get("items") or []}
                self.synced.set()
                self._on_change()
                await self._watch(str(listed["metadata"]["resourceVersion"]))
            except asyncio.CancelledError:
                raise
            except Exception as error:  # an API server restart, a 410: list again
                logger.debug("informer %s: %s; listing again", self._path, error)
            await asyncio.sleep(RELIST_DELAY_SECONDS)

    async def _watch(self, resource_version: str) -> None:
        async for event in self._kube.watch(self._path, resource_version=resource_version):
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                raise ApiError(int(obj.get("code") or 500), "WATCH", self._path, str(obj.get("message")))
            if kind in ("ADDED", "MODIFIED"):
                self.objects[object_key(obj)] = obj
            elif kind == "DELETED":
                self.objects.pop(object_key(obj), None)
            else:
                continue
            self._on_change()
