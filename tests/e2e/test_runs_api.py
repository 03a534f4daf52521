"""The runs API end to end on the real control plane: an application submits over HTTP (202 at once), polls,
follows the run's events through the gateway and resumes them with Last-Event-ID, reads the result, and
cancels another run; the real operator runs each on the node agent against the scripted model."""

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import ServerSentEvent, aconnect_sse

from tests.e2e.runs import FINAL_ANSWER, local_cluster
from tests.harness.model_server import research_script
from tests.harness.runs_api import create_template, runs_api
from tests.harness.sse_client import dispatched_events
from tests.harness.testbed import KubeTestbed

TERMINAL = {"Succeeded", "Failed", "TimedOut", "Cancelled"}


async def poll_until_ended(client: httpx.AsyncClient, location: str, timeout: float = 60.0) -> dict[str, Any]:
    """GET the run until it ends, waiting as its Retry-After asks (scaled down: the test's runs are short)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        answer = await client.get(location)
        assert answer.status_code == 200, answer.text
        run: dict[str, Any] = answer.json()
        if run["phase"] in TERMINAL:
            assert "Retry-After" not in answer.headers
            return run
        assert int(answer.headers["Retry-After"]) >= 1
        await asyncio.sleep(0.2)
    raise AssertionError(f"{location} did not end within {timeout}s")


async def read_events(
    client: httpx.AsyncClient, url: str, last_id: int | None, stop_after: int | None
) -> list[ServerSentEvent]:
    """Events of one connection: ``stop_after`` of them (then hang up), or up to `finished`."""
    headers = {} if last_id is None else {"Last-Event-ID": str(last_id)}
    events: list[ServerSentEvent] = []
    async with aconnect_sse(client, "GET", url, headers=headers) as source:
        assert source.response.status_code == 200
        async for event in dispatched_events(source):
            events.append(event)
            if event.event == "finished" or len(events) == stop_after:
                break
    return events


async def test_a_run_submitted_over_http_is_followed_resumed_finished_and_another_cancelled(
    testbed: KubeTestbed, tmp_path: Path
) -> None:
    async with local_cluster(testbed, tmp_path / "cluster", research_script(delay=0.3)) as cluster:
        namespace = cluster.namespace
        template = {
            "instructions": "You are a careful research assistant.",
            "model": {
                "name": cluster.model.model,
                "baseURL": cluster.model.base_url,
                "apiKeySecretRef": {"name": "model-key", "key": "api-key"},
            },
            "maxExecutionTime": "2m",
            "maxIterations": 10,
        }
        create_template(testbed, namespace, "research", template, ["maxIterations"])
        async with (
            runs_api(testbed, [namespace], tmp_path / "gateway") as api,
            api.client(api.new_api_key(namespace), timeout=httpx.Timeout(30.0)) as client,
        ):
            submitted = await client.post(
                f"/v1/namespaces/{namespace}/runs",
                json={"template": "research", "input": "Compare three vendors and write a report."},
                headers={"Idempotency-Key": "report-1"},
            )
            assert submitted.status_code == 202, submitted.text
            location = submitted.headers["Location"]
            assert submitted.json()["links"]["self"] == location
            assert int(submitted.headers["Retry-After"]) >= 1

            events_url = submitted.json()["links"]["events"]
            first = await read_events(client, events_url, None, stop_after=2)
            rest = await read_events(client, events_url, int(first[-1].id), stop_after=None)
            ids = [int(e.id) for e in first + rest]
            assert ids == list(range(ids[0], ids[0] + len(ids))), ids  # resumed without a gap or a repeat
            assert rest[-1].event == "finished"
            assert json.loads(rest[-1].data)

            run = await poll_until_ended(client, location)
            assert run["phase"] == "Succeeded", run
            assert run["result"]["summary"] == FINAL_ANSWER
            assert run["usage"]["totalTokens"] > 0
            assert run["progress"] == {"iteration": run["progress"]["iteration"], "maxIterations": 10}
            assert run["progress"]["iteration"] >= 1

            other = await client.post(
                f"/v1/namespaces/{namespace}/runs", json={"template": "research", "input": "Never mind."}
            )
            assert other.status_code == 202
            cancelled = await client.post(other.json()["links"]["cancel"])
            assert cancelled.status_code == 202
            assert (await poll_until_ended(client, other.headers["Location"]))["phase"] == "Cancelled"
