"""The stream is the log, through SIGKILLs, on the real control plane: what a live reader saw equals a
replay of the checkpoint log; an interrupted model call's tokens are counted; checkpoints are trusted
by the run's uid, not by its name."""

import asyncio
import base64
import contextlib
from typing import Any

import httpx
import pytest
from httpx_sse import ServerSentEvent, SSEError, aconnect_sse

from agentrun_api.contract import STREAM_PORT, checkpoint_segment_name
from agentrun_common.eventlog.events import Event
from agentrun_common.eventlog.records import events_of
from agentrun_common.eventlog.segments import decode_segments
from tests.e2e.runs import needs_scripted_model
from tests.harness.agentruns import agent_run, agentruns_path, requests_of, runner_pods, wait_for_end
from tests.harness.local_cluster import LocalCluster
from tests.harness.model_server import Answer, by_turn
from tests.harness.nodeagent.kube import KubeClient, namespaced_path
from tests.harness.sse_client import dispatched_events

pytestmark = pytest.mark.e2e

LONG_ANSWER = " ".join(f"w{i}" for i in range(120))
STREAMING = {"enabled": True, "heartbeatInterval": "1s"}


async def stream_token(kube: KubeClient, run: str) -> str:
    for _ in range(100):
        secret = await kube.get(namespaced_path("v1", "secrets", kube.namespace, f"{run}-stream-token"))
        if secret is not None:
            return base64.b64decode(secret["data"]["token"]).decode()
        await asyncio.sleep(0.1)
    raise AssertionError(f"no Secret {run}-stream-token")


async def read_live_through_a_kill(
    cluster: LocalCluster, kube: KubeClient, run: str
) -> tuple[list[ServerSentEvent], str]:
    """Follow the run's stream from pod to pod with Last-Event-ID (as the stream gateway does), SIGKILLing
    the first runner once it has streamed ten tokens; until `finished`. Returns the events and the last pod."""
    bearer = await stream_token(kube, run)
    seen: list[ServerSentEvent] = []
    killed: str | None = None
    async with httpx.AsyncClient(timeout=httpx.Timeout(5.0, read=30.0)) as client, asyncio.timeout(90):
        while True:
            pods = [p for p in await runner_pods(kube, run) if p["status"].get("phase") == "Running"]
            pods = [p for p in pods if p["status"].get("podIP") and p["metadata"]["name"] != killed]
            if not pods:
                await asyncio.sleep(0.1)
                continue
            pod = pods[-1]["metadata"]["name"]
            headers = {"Authorization": f"Bearer {bearer}"}
            if seen:
                headers["Last-Event-ID"] = seen[-1].id
            with contextlib.suppress(httpx.TransportError, SSEError):
                url = f"http://{pods[-1]['status']['podIP']}:{STREAM_PORT}/events"
                async with aconnect_sse(client, "GET", url, headers=headers) as source:
                    async for event in dispatched_events(source):
                        seen.append(event)
                        if event.event == "finished":
                            return seen, pods[-1]["status"]["podIP"]
                        if killed is None and sum(1 for e in seen if e.event == "token") == 10:
                            cluster.node.kill_pod_process(cluster.namespace, pod)
                            killed = pod
            await asyncio.sleep(0.1)


async def replay(host: str, bearer: str) -> list[ServerSentEvent]:
    async with (
        httpx.AsyncClient(timeout=10) as client,
        aconnect_sse(
            client, "GET", f"http://{host}:{STREAM_PORT}/events", headers={"Authorization": f"Bearer {bearer}"}
        ) as source,
    ):
        return [event async for event in dispatched_events(source)]


async def logged_events(kube: KubeClient, run: str, uid: str) -> list[Event]:
    segments: list[dict[str, str]] = []
    for index in range(36):
        segment = await kube.get(
            namespaced_path("v1", "configmaps", kube.namespace, checkpoint_segment_name(run, index))
        )
        if segment is None:
            break
        segments.append(segment.get("data") or {})
    return events_of(decode_segments(run, segments, uid).records)


def triples(events: list[ServerSentEvent]) -> list[tuple[int, str, Any]]:
    return [(int(e.id), e.event, e.json()) for e in events]


@pytest.mark.timeout(180)
async def test_a_live_reader_through_a_sigkill_sees_exactly_the_log_and_usage_counts_the_lost_call(cluster, kube):
    needs_scripted_model(cluster)
    assert cluster.model_server is not None
    cluster.model_server.script = by_turn([Answer(content=LONG_ANSWER, chunk_delay=0.04)])
    run = agent_run("told", cluster, checkpoint={"store": "ConfigMap"}, streaming=STREAMING)
    run["spec"]["model"]["stream"] = True
    created = await kube.create(agentruns_path(cluster.namespace), run)
    uid = created["metadata"]["uid"]

    live, host = await read_live_through_a_kill(cluster, kube, "told")
    status = await wait_for_end(kube, "told", timeout=60)
    assert status["phase"] == "Succeeded", status
    assert status["restarts"] == 1

    # The live reader's ids and payloads are the replay's, from the lingering pod and from the log itself.
    assert triples(live) == triples(await replay(host, await stream_token(kube, "told")))
    assert [(e.id, e.type, e.data) for e in await logged_events(kube, "told", uid)] == triples(live)
    ids = [int(e.id) for e in live]
    assert ids == list(range(1, len(ids) + 1)), "no id skipped, none repeated"
    retry = [n for n, e in enumerate(live) if e.event == "iteration" and e.json().get("retry")]
    assert len(retry) == 1, "the call the kill interrupted is retried once, and the stream says so"
    interrupted_tokens = sum(1 for e in live[: retry[0]] if e.event == "token")
    assert interrupted_tokens >= 10

    # Usage counts both calls the provider served, not only the answer that was checkpointed.
    requests = requests_of(cluster.model_server, "told")
    assert len(requests) == 2
    usage = status["usage"]
    assert usage["promptTokens"] >= sum(r.size // 4 + 1 for r in requests)
    assert usage["completionTokens"] >= len(LONG_ANSWER) // 4 + 1 + interrupted_tokens


@pytest.mark.timeout(120)
async def test_a_run_finding_another_runs_segments_under_its_name_starts_fresh(cluster, kube):
    needs_scripted_model(cluster)
    assert cluster.model_server is not None
    cluster.model_server.script = by_turn([Answer(content="the first run's answer")])
    first = await kube.create(agentruns_path(cluster.namespace), agent_run("first", cluster))
    assert (await wait_for_end(kube, "first"))["phase"] == "Succeeded"
    old = await kube.get(namespaced_path("v1", "configmaps", cluster.namespace, checkpoint_segment_name("first", 0)))
    assert old is not None

    # What a deleted run of the same name leaves behind, or what another run's runner may create: a
    # segment under the new run's name holding a finished conversation.
    planted = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": checkpoint_segment_name("second", 0)}}
    await kube.create(namespaced_path("v1", "configmaps", cluster.namespace), {**planted, "data": old["data"]})
    cluster.model_server.script = by_turn([Answer(content="the second run's own answer")])
    second = await kube.create(agentruns_path(cluster.namespace), agent_run("second", cluster))
    status = await wait_for_end(kube, "second")

    assert status["phase"] == "Succeeded", status
    assert "the second run's own answer" in status["result"]["summary"]
    assert status.get("resumedFromIteration") is None
    [request] = requests_of(cluster.model_server, "second")
    assert request.turn == 0, "the conversation started fresh"
    segment = await kube.get(
        namespaced_path("v1", "configmaps", cluster.namespace, checkpoint_segment_name("second", 0))
    )
    assert segment is not None
    assert [ref["uid"] for ref in segment["metadata"]["ownerReferences"]] == [second["metadata"]["uid"]]
    events = await logged_events(kube, "second", second["metadata"]["uid"])
    fallback = next(e for e in events if e.type == "checkpoint" and e.data.get("fallback"))
    assert "belonged to another run" in fallback.data["problem"]
    assert first["metadata"]["uid"] != second["metadata"]["uid"]
