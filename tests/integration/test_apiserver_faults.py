"""Fault injection and request accounting of the emulated apiserver."""

from __future__ import annotations

import time

import aiohttp
import pytest

from tests.harness.apiserver import EmulatedApiServer, RequestRecord
from tests.integration.conftest import AGENTRUNS, CONFIGMAPS, MERGE, agentrun

pytestmark = pytest.mark.integration


def is_configmap_write(record: RequestRecord) -> bool:
    return record.resource == "configmaps" and record.verb in ("create", "patch", "update")


async def test_injected_429_carries_retry_after_and_a_status_body(
    apiserver: EmulatedApiServer, http: aiohttp.ClientSession
) -> None:
    apiserver.faults.inject(429, count=1, retry_after=2, match=is_configmap_write)
    throttled = await http.post(CONFIGMAPS.lstrip("/"), json={"metadata": {"name": "a"}})
    status = await throttled.json()
    assert throttled.status == 429
    assert throttled.headers["Retry-After"] == "2"
    assert (status["kind"], status["reason"], status["details"]["retryAfterSeconds"]) == (
        "Status",
        "TooManyRequests",
        2,
    )
    retried = await http.post(CONFIGMAPS.lstrip("/"), json={"metadata": {"name": "a"}})
    assert retried.status == 201


async def test_injected_500s_fail_exactly_count_matching_requests(
    apiserver: EmulatedApiServer, http: aiohttp.ClientSession
) -> None:
    fault = apiserver.faults.inject(500, count=2, match=lambda r: r.method == "GET" and r.resource == "configmaps")
    await http.post(CONFIGMAPS.lstrip("/"), json={"metadata": {"name": "a"}})
    codes = [(await http.get(CONFIGMAPS.lstrip("/") + "/a")).status for _ in range(3)]
    assert codes == [500, 500, 200]
    assert fault.hits == 2
    assert (await http.get(AGENTRUNS.lstrip("/"))).status == 200


async def test_failed_writes_do_not_change_the_store(apiserver: EmulatedApiServer, http: aiohttp.ClientSession) -> None:
    created = await (
        await http.post(CONFIGMAPS.lstrip("/"), json={"metadata": {"name": "a"}, "data": {"k": "1"}})
    ).json()
    apiserver.faults.inject(500, count=1, match=is_configmap_write)
    failed = await http.patch(CONFIGMAPS.lstrip("/") + "/a", json={"data": {"k": "2"}}, headers=MERGE)
    assert failed.status == 500
    current = await (await http.get(CONFIGMAPS.lstrip("/") + "/a")).json()
    assert current == created


async def test_injected_delay_slows_the_request_and_then_serves_it(
    apiserver: EmulatedApiServer, http: aiohttp.ClientSession
) -> None:
    apiserver.faults.inject(delay=0.3, count=1, match=lambda r: r.verb == "list")
    started = time.monotonic()
    response = await http.get(CONFIGMAPS.lstrip("/"))
    assert response.status == 200
    assert time.monotonic() - started >= 0.3


async def test_every_request_is_recorded_with_verb_kind_and_subresource(
    apiserver: EmulatedApiServer, http: aiohttp.ClientSession
) -> None:
    apiserver.requests.clear()
    await http.get("apis")
    await http.post(AGENTRUNS.lstrip("/"), json=agentrun("run"))
    await http.get(AGENTRUNS.lstrip("/") + "/run")
    await http.get(AGENTRUNS.lstrip("/"))
    await http.patch(AGENTRUNS.lstrip("/") + "/run/status", json={"status": {"phase": "Running"}}, headers=MERGE)
    await http.put(CONFIGMAPS.lstrip("/") + "/missing", json={"metadata": {"name": "missing"}})
    await http.delete(AGENTRUNS.lstrip("/") + "/run")
    verbs = [(r.verb, r.kind, r.subresource, r.code) for r in apiserver.requests]
    assert verbs == [
        ("", "", "", 200),
        ("create", "AgentRun", "", 201),
        ("get", "AgentRun", "", 200),
        ("list", "AgentRun", "", 200),
        ("patch", "AgentRun", "status", 200),
        ("update", "ConfigMap", "", 404),
        ("delete", "AgentRun", "", 200),
    ]
    assert apiserver.requests.count(kind="AgentRun") == 5
    assert apiserver.requests.by_kind() == {"AgentRun": 5, "ConfigMap": 1}
    assert apiserver.requests.by_verb()["patch"] == 1
    assert "AgentRun" in apiserver.requests.summary()


async def test_requests_within_a_time_window_are_counted_by_kind(
    apiserver: EmulatedApiServer, http: aiohttp.ClientSession
) -> None:
    await http.get(CONFIGMAPS.lstrip("/"))
    start = time.time()
    await http.post(AGENTRUNS.lstrip("/"), json=agentrun("run"))
    await http.get(AGENTRUNS.lstrip("/") + "/run")
    window = apiserver.requests.between(start)
    assert window.by_kind_and_verb() == {("AgentRun", "create"): 1, ("AgentRun", "get"): 1}
    assert len(window.where(lambda r: r.user_agent.startswith("Python/"))) == 2
    assert apiserver.requests.count(kind="ConfigMap", verb="list") == 1
