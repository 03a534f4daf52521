"""Kinds from the upstream API server's discovery: which kind a resource plural (`configmaps`, `agentruns`) holds,
read from the group version's APIResourceList (`/api/v1`, `/apis/<group>/<version>`) on first use and cached."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

# Fetches a discovery document by path with the given request headers (the credentials of the request that
# needs it); answers the decoded JSON, or raises when the server cannot be asked or refuses.
DocumentFetcher = Callable[[str, Mapping[str, str]], Awaitable[Any]]


class DiscoveryError(Exception):
    """A discovery document could not be read (unreachable server, refused credentials, not an APIResourceList)."""


@dataclass
class _GroupVersionKinds:
    kinds: dict[str, str]
    # time.monotonic() when the fetch that produced `kinds` started: resources created after it may be missing.
    fetched_at: float


def group_version_path(group: str, version: str) -> str:
    """The discovery document's path: `/api/v1` for the core group, `/apis/<group>/<version>` for the others."""
    return f"/api/{version}" if not group else f"/apis/{group}/{version}"


def kinds_of_resource_list(document: Any) -> dict[str, str]:
    """Resource plural → kind from an APIResourceList; subresource entries (`pods/log`) are not resources."""
    if not isinstance(document, dict) or document.get("kind") != "APIResourceList":
        raise DiscoveryError(f"not an APIResourceList: {str(document)[:200]}")
    kinds: dict[str, str] = {}
    for entry in document.get("resources") or []:
        name, kind = entry.get("name", ""), entry.get("kind", "")
        if name and kind and "/" not in name:
            kinds[name] = kind
    return kinds


@dataclass
class KindResolver:
    """Resource → kind per group version, fetched lazily through `fetch`.

    A resource missing from a cached document is looked up again once the document is `refresh_seconds` old,
    so a CustomResourceDefinition installed after the first look shows up without refetching on every request.
    """

    fetch: DocumentFetcher
    refresh_seconds: float = 1.0
    # Why a document could not be read, oldest first; the resolver answers "" for its kinds meanwhile.
    errors: list[BaseException] = field(default_factory=list)
    _cache: dict[tuple[str, str], _GroupVersionKinds] = field(default_factory=dict, init=False, repr=False)
    # One fetch per group version at a time: concurrent first requests wait for it instead of fetching too.
    _locks: dict[tuple[str, str], asyncio.Lock] = field(default_factory=dict, init=False, repr=False)

    def cached_kind(self, group: str, version: str, resource: str) -> str:
        """The kind as last read, without asking the server; "" when unknown."""
        entry = self._cache.get((group, version))
        return entry.kinds.get(resource, "") if entry else ""

    async def kind_of(
        self,
        group: str,
        version: str,
        resource: str,
        headers: Mapping[str, str],
        *,
        stale_before: float | None = None,
    ) -> str:
        """The kind of `resource` in group/version, "" when discovery does not list it.

        `stale_before` (a time.monotonic() value) is when the resource is known to have existed, e.g. the arrival
        of a request the server answered: a document fetched before then is read again at once if it lacks it.
        """
        key = (group, version)
        if kind := self.cached_kind(group, version, resource):
            return kind
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            # Another request may have read the document while this one waited.
            entry = self._cache.get(key)
            if entry is not None and resource in entry.kinds:
                return entry.kinds[resource]
            if entry is None or self._stale(entry, stale_before):
                entry = await self._load(group, version, headers)
            return entry.kinds.get(resource, "")

    def _stale(self, entry: _GroupVersionKinds, stale_before: float | None) -> bool:
        if stale_before is not None and entry.fetched_at < stale_before:
            return True
        return time.monotonic() - entry.fetched_at >= self.refresh_seconds

    async def _load(self, group: str, version: str, headers: Mapping[str, str]) -> _GroupVersionKinds:
        started = time.monotonic()
        try:
            kinds = kinds_of_resource_list(await self.fetch(group_version_path(group, version), headers))
        except Exception as exc:
            # An unknown group version (404) or refused credentials: remembered as empty, so the next look
            # waits `refresh_seconds` instead of asking on every request.
            self.errors.append(exc)
            kinds = {}
        entry = _GroupVersionKinds(kinds=kinds, fetched_at=started)
        self._cache[(group, version)] = entry
        return entry
