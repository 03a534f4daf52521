"""Watch streams of the emulated apiserver: ordering, resuming, 410 Gone, bookmarks, timeouts, selectors, drops."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from tests.harness.apiserver import ApiServerSettings, EmulatedApiServer
from tests.integration.conftest import AGENTRUNS, CONFIGMAPS, MERGE, agentrun

pytestmark = pytest.mark.integration


class Stream:
    """Reads one JSON event per line from a watch response."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def next(self, timeout: float = 2.0) -> dict[str, Any]:
        line = await asyncio.wait_for(self.response.content.readline(), timeout)
        if not line:
            raise EOFError("the watch stream ended")
        event: dict[str, Any] = json.loads(line)
        return event

    async def take(self, count: int) -> list[tuple[str, str]]:
        return [
            (event["type"], event["object"]["metadata"].get("name", ""))
            for event in [await self.next() for _ in range(count)]
        ]


@asynccontextmanager
async def watch(http: aiohttp.ClientSession, path: str, **params: str) -> AsyncIterator[Stream]:
    async with http.get(path, params={"watch": "true", **params}, timeout=aiohttp.ClientTimeout(total=10)) as response:
        assert response.status == 200
        yield Stream(response)


async def test_watch_delivers_added_modified_deleted_in_order(http: aiohttp.ClientSession) -> None:
    async with watch(http, CONFIGMAPS.lstrip("/")) as stream:
        await http.post(CONFIGMAPS.lstrip("/"), json={"metadata": {"name": "a"}})
        await http.patch(CONFIGMAPS.lstrip("/") + "/a", json={"data": {"k": "v"}}, headers=MERGE)
        await http.post(CONFIGMAPS.lstrip("/"), json={"metadata": {"name": "b"}})
        await http.delete(CONFIGMAPS.lstrip("/") + "/a")
        assert await stream.take(4) == [("ADDED", "a"), ("MODIFIED", "a"), ("ADDED", "b"), ("DELETED", "a")]


async def test_watch_without_resource_version_starts_with_the_current_state(http: aiohttp.ClientSession) -> None:
    await http.post(AGENTRUNS.lstrip("/"), json=agentrun("existing"))
    async with watch(http, AGENTRUNS.lstrip("/")) as stream:
        first = await stream.next()
        assert (first["type"], first["object"]["metadata"]["name"]) == ("ADDED", "existing")
        assert first["object"]["kind"] == "AgentRun"


async def test_watch_from_a_resource_version_replays_only_later_events(http: aiohttp.ClientSession) -> None:
    await http.post(CONFIGMAPS.lstrip("/"), json={"metadata": {"name": "before"}})
    listing = await (await http.get(CONFIGMAPS.lstrip("/"))).json()
    await http.post(CONFIGMAPS.lstrip("/"), json={"metadata": {"name": "after"}})
    async with watch(http, CONFIGMAPS.lstrip("/"), resourceVersion=listing["metadata"]["resourceVersion"]) as stream:
        assert await stream.take(1) == [("ADDED", "after")]


async def test_events_carry_increasing_resource_versions(http: aiohttp.ClientSession) -> None:
    async with watch(http, CONFIGMAPS.lstrip("/")) as stream:
        for name in ("a", "b", "c"):
            await http.post(CONFIGMAPS.lstrip("/"), json={"metadata": {"name": name}})
        versions = [int((await stream.next())["object"]["metadata"]["resourceVersion"]) for _ in range(3)]
    assert versions == sorted(versions)
    assert len(set(versions)) == 3


async def test_watch_is_filtered_by_namespace(http: aiohttp.ClientSession) -> None:
    await http.post("api/v1/namespaces", json={"metadata": {"name": "other"}})
    async with watch(http, "api/v1/namespaces/other/configmaps") as stream:
        await http.post(CONFIGMAPS.lstrip("/"), json={"metadata": {"name": "in-default"}})
        await http.post("api/v1/namespaces/other/configmaps", json={"metadata": {"name": "in-other"}})
        assert await stream.take(1) == [("ADDED", "in-other")]


async def test_label_selected_watch_sees_objects_enter_and_leave_the_selection(http: aiohttp.ClientSession) -> None:
    async with watch(http, CONFIGMAPS.lstrip("/"), labelSelector="app=x") as stream:
        await http.post(CONFIGMAPS.lstrip("/"), json={"metadata": {"name": "a", "labels": {"app": "y"}}})
        await http.patch(CONFIGMAPS.lstrip("/") + "/a", json={"metadata": {"labels": {"app": "x"}}}, headers=MERGE)
        await http.patch(CONFIGMAPS.lstrip("/") + "/a", json={"data": {"k": "v"}}, headers=MERGE)
        await http.patch(CONFIGMAPS.lstrip("/") + "/a", json={"metadata": {"labels": {"app": "z"}}}, headers=MERGE)
        assert await stream.take(3) == [("ADDED", "a"), ("MODIFIED", "a"), ("DELETED", "a")]


async def test_field_selected_watch_follows_one_object(http: aiohttp.ClientSession) -> None:
    async with watch(http, CONFIGMAPS.lstrip("/"), fieldSelector="metadata.name=wanted") as stream:
        await http.post(CONFIGMAPS.lstrip("/"), json={"metadata": {"name": "other"}})
        await http.post(CONFIGMAPS.lstrip("/"), json={"metadata": {"name": "wanted"}})
        assert await stream.take(1) == [("ADDED", "wanted")]


async def test_timeout_seconds_ends_the_stream(http: aiohttp.ClientSession) -> None:
    async with watch(http, CONFIGMAPS.lstrip("/"), timeoutSeconds="1") as stream:
        with pytest.raises(EOFError):
            await stream.next(timeout=3)


async def test_bookmarks_are_sent_when_allowed(http: aiohttp.ClientSession) -> None:
    async with watch(http, CONFIGMAPS.lstrip("/"), allowWatchBookmarks="true", resourceVersion="1") as stream:
        event = await stream.next(timeout=3)
    assert event["type"] == "BOOKMARK"
    assert event["object"]["kind"] == "ConfigMap"
    assert int(event["object"]["metadata"]["resourceVersion"]) >= 1


async def test_too_old_resource_version_gets_410_gone() -> None:
    server = EmulatedApiServer(settings=ApiServerSettings(history_limit=3), admission_factory=None)
    async with server, aiohttp.ClientSession(base_url=server.url + "/") as http:
        first = await (await http.post(CONFIGMAPS.lstrip("/"), json={"metadata": {"name": "first"}})).json()
        for name in ("b", "c", "d", "e"):
            await http.post(CONFIGMAPS.lstrip("/"), json={"metadata": {"name": name}})
        async with watch(http, CONFIGMAPS.lstrip("/"), resourceVersion=first["metadata"]["resourceVersion"]) as stream:
            event = await stream.next()
            with pytest.raises(EOFError):
                await stream.next()
    assert event["type"] == "ERROR"
    assert (event["object"]["code"], event["object"]["reason"]) == (410, "Expired")
    assert "too old resource version" in event["object"]["message"]


async def test_dropped_watch_streams_end_abruptly(apiserver: EmulatedApiServer, http: aiohttp.ClientSession) -> None:
    async with watch(http, CONFIGMAPS.lstrip("/")) as stream:
        await http.post(CONFIGMAPS.lstrip("/"), json={"metadata": {"name": "a"}})
        await stream.next()
        assert apiserver.faults.drop_watches() == 1
        with pytest.raises((EOFError, aiohttp.ClientPayloadError)):
            await stream.next()
    assert apiserver.faults.open_watches == []


async def test_table_watch_sends_one_row_tables_as_kubectl_get_watch_asks(http: aiohttp.ClientSession) -> None:
    table_accept = {"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"}
    params = {"watch": "true", "resourceVersion": "1"}
    async with http.get(AGENTRUNS.lstrip("/"), params=params, headers=table_accept) as response:
        await http.post(AGENTRUNS.lstrip("/"), json=agentrun("run"))
        event = await Stream(response).next()
    assert event["type"] == "ADDED"
    assert event["object"]["kind"] == "Table"
    assert [row["cells"][0] for row in event["object"]["rows"]] == ["run"]
