"""The OpenAI Responses-compatible door end to end, with the official `openai` SDK, unmodified, as the client:
on the real control plane with the real operator, each run on the node agent against the scripted model.
Refusals come back as the SDK's exceptions naming the field; a streamed response survives a dropped connection
(resumed with starting_after) and a runner SIGKILL with no gap and no repeat; a background response is polled
to completion; the SDK's own retries of a create never start a second run; a response is cancelled."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI

from tests.e2e.runs import local_cluster
from tests.harness.agentruns import runner_pods
from tests.harness.model_server import Answer, by_turn, call
from tests.harness.nodeagent.kube import KubeClient
from tests.harness.podnet.resolver import ClusterResolver
from tests.harness.runs_api import agent_runs, create_template, kubernetes_caller, runs_api
from tests.harness.testbed import KubeTestbed

pytestmark = pytest.mark.e2e

FINAL_ANSWER = "The report is in report.md: vendor B is cheapest."
LONG_ANSWER = " ".join(f"w{i}" for i in range(60))  # 6 s of streaming: room for the kill under load
SCRIPT = by_turn(
    [
        Answer(content="Looking at the files first.", tool_calls=[call("list_files")], chunk_delay=0.02),
        Answer(content=LONG_ANSWER, tool_calls=[call("write_file", path="notes.md", content="n")], chunk_delay=0.1),
        Answer(content=FINAL_ANSWER, chunk_delay=0.02),
    ]
)
TERMINAL_EVENTS = {"response.completed", "response.failed", "response.incomplete", "response.cancelled"}


class FirstAnswerLost(httpx.AsyncHTTPTransport):
    """The network between the SDK and the gateway: the first create reaches the gateway, and its answer is lost
    on the way back (a timeout), so the SDK retries it as it does any timed-out request."""

    def __init__(self) -> None:
        super().__init__()
        self.creates = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        if request.method == "POST" and request.url.path.endswith("/v1/responses"):
            self.creates += 1
            if self.creates == 1:
                await response.aread()
                await response.aclose()
                raise httpx.ReadTimeout("the answer was lost", request=request)
        return response


async def poll(client: AsyncOpenAI, response_id: str, until: set[str], timeout: float = 60.0) -> Any:
    async with asyncio.timeout(timeout):
        while True:
            response = await client.responses.retrieve(response_id)
            if response.status in until:
                return response
            await asyncio.sleep(0.2)


async def events_of(stream: AsyncIterator[Any], stop: Any = None) -> list[dict[str, Any]]:
    """Events of one connection as plain dicts, until the terminal one or ``stop(events)`` (then hang up)."""
    events: list[dict[str, Any]] = []
    async for event in stream:
        events.append(event.model_dump())
        if event.type in TERMINAL_EVENTS or (stop is not None and await stop(events)):
            break
    await stream.close()  # type: ignore[attr-defined]
    return events


def deltas_of_item(events: list[dict[str, Any]], output_index: int) -> int:
    return sum(1 for e in events if e["type"] == "response.output_text.delta" and e["output_index"] == output_index)


@pytest.mark.timeout(240)
async def test_the_openai_sdk_streams_resumes_polls_retries_and_cancels_responses(
    testbed: KubeTestbed, tmp_path: Path
) -> None:
    async with local_cluster(testbed, tmp_path / "cluster", SCRIPT) as cluster:
        namespace = cluster.namespace
        template = {
            "instructions": "You are a careful research assistant.",
            "model": {
                "name": cluster.model.model,
                "baseURL": cluster.model.base_url,
                "apiKeySecretRef": {"name": "model-key", "key": "api-key"},
                "stream": True,
            },
            "checkpoint": {"store": "ConfigMap"},
            "streaming": {"heartbeatInterval": "1s"},
            "maxExecutionTime": "2m",
            "maxIterations": 10,
        }
        create_template(testbed, namespace, "research", template, ["instructions"])
        async with contextlib.AsyncExitStack() as clients:
            # Live from the runner, through the run's stream Service resolved as in a pod.
            resolver = ClusterResolver(testbed.network_plan.dns_ip)
            clients.push_async_callback(resolver.close)
            api = await clients.enter_async_context(runs_api(testbed, [namespace], tmp_path / "gateway", resolver))
            kube = await clients.enter_async_context(KubeClient(str(cluster.kubeconfig_path)))

            def sdk(api_key: str, **options: Any) -> AsyncOpenAI:
                client = AsyncOpenAI(base_url=f"{api.base_url}/v1", api_key=api_key, timeout=30.0, **options)
                clients.push_async_callback(client.close)
                return client

            client = sdk(api.new_api_key(namespace))

            # Refusals, as the SDK's exceptions naming the field.
            with pytest.raises(openai.BadRequestError) as caught:
                await client.responses.create(model="research", input="Compare vendors.")
            assert caught.value.param == "background"
            assert "background: true" in caught.value.message
            with pytest.raises(openai.BadRequestError) as caught:
                await client.responses.create(model="research", input="x", background=True, top_p=0.5)
            assert (caught.value.param, caught.value.code) == ("top_p", "unsupported_parameter")
            with pytest.raises(openai.BadRequestError) as caught:
                await client.responses.create(model="research", input="x", background=True, temperature=0.1)
            assert (caught.value.param, caught.value.code) == ("temperature", "override_not_allowed")
            with pytest.raises(openai.BadRequestError) as caught:
                await client.responses.create(model="no-such-template", input="x", background=True)
            assert (caught.value.param, caught.value.code) == ("model", "template_not_found")
            with pytest.raises(openai.NotFoundError):
                await client.responses.retrieve("resp_run-nosuchrun")
            with pytest.raises(openai.BadRequestError) as caught:
                await client.responses.retrieve("resp_run-nosuchrun", extra_query={"include_obfuscation": "true"})
            assert (caught.value.param, caught.value.code) == ("include_obfuscation", "unsupported_parameter")
            assert agent_runs(testbed, namespace) == []

            # Streamed: the connection dropped after the first deltas, resumed with starting_after; the runner
            # SIGKILLed in the middle of the second answer's stream.
            stream = await client.responses.create(
                model="research",
                input="Compare three vendors and write a report.",
                background=True,
                stream=True,
                extra_headers={"Idempotency-Key": "streamed-1"},
            )

            async def after_three_deltas(events: list[dict[str, Any]]) -> bool:
                return sum(1 for e in events if e["type"] == "response.output_text.delta") == 3

            first = await events_of(stream, after_three_deltas)
            response_id = first[0]["response"]["id"]
            killed: list[str] = []

            async def kill_in_the_second_answer(events: list[dict[str, Any]]) -> bool:
                if not killed and deltas_of_item(first + events, 1) >= 5:
                    [pod] = [
                        p
                        for p in await runner_pods(kube, response_id.removeprefix("resp_"))
                        if p["status"].get("phase") == "Running"
                    ]
                    cluster.node.kill_pod_process(namespace, pod["metadata"]["name"])
                    killed.append(pod["metadata"]["name"])
                return False

            resumed = await client.responses.retrieve(
                response_id, stream=True, starting_after=first[-1]["sequence_number"]
            )
            rest = await events_of(resumed, kill_in_the_second_answer)
            assert killed, "the runner was killed mid-stream"
            seen = first + rest
            numbers = [e["sequence_number"] for e in seen]
            assert numbers == list(range(len(seen))), "no gap and no repeat across the drop and the kill"
            assert seen[-1]["type"] == "response.completed"
            streamed_result = seen[-1]["response"]["output"][-1]["content"][0]["text"]
            assert streamed_result.strip() == FINAL_ANSWER  # the scripted model streams each word with a space

            # The same run always gives the same events: a reader from the start now gets what was seen live.
            replay = await events_of(await client.responses.retrieve(response_id, stream=True))
            assert [(e["sequence_number"], e["type"]) for e in replay] == [
                (e["sequence_number"], e["type"]) for e in seen
            ]
            assert [e.get("delta") for e in replay] == [e.get("delta") for e in seen]
            done = await poll(client, response_id, {"completed", "failed", "incomplete", "cancelled"})
            [streamed_run] = [
                r for r in agent_runs(testbed, namespace) if f"resp_{r['metadata']['name']}" == response_id
            ]
            assert streamed_run["status"]["restarts"] == 1, "the stream went on through a replaced runner"
            assert (done.status, done.output_text) == ("completed", streamed_result)
            assert done.usage is not None
            assert done.usage.total_tokens > 0

            # In the background, polled; the SDK's retry of a create whose answer was lost returns the same run.
            lossy = FirstAnswerLost()
            retrying = sdk(client.api_key, http_client=httpx.AsyncClient(transport=lossy))
            queued = await retrying.responses.create(
                model="research",
                input="Compare three vendors and write a report.",
                background=True,
                instructions="Answer in one line.",
                metadata={"ticket": "T-1"},
                extra_headers={"Idempotency-Key": "polled-1"},
            )
            assert lossy.creates == 2, "the SDK retried the create"
            assert queued.status in ("queued", "in_progress")
            assert (queued.instructions, queued.metadata) == ("Answer in one line.", {"ticket": "T-1"})
            assert len(agent_runs(testbed, namespace)) == 2
            finished = await poll(client, queued.id, {"completed", "failed", "incomplete", "cancelled"})
            assert (finished.status, finished.output_text.strip()) == ("completed", FINAL_ANSWER)

            # A Kubernetes token reaches the same response through the project (namespace) it names.
            token = kubernetes_caller(testbed, namespace, "responder", ["get"])
            assert (await sdk(token, project=namespace).responses.retrieve(queued.id)).id == queued.id
            with pytest.raises(openai.BadRequestError) as caught:
                await sdk(token).responses.retrieve(queued.id)
            assert caught.value.param == "header OpenAI-Project"

            # Without an Idempotency-Key the SDK's retry is refused: the first attempt may have started a run.
            lossy = FirstAnswerLost()
            retrying = sdk(client.api_key, http_client=httpx.AsyncClient(transport=lossy))
            with pytest.raises(openai.BadRequestError) as caught:
                await retrying.responses.create(model="research", input="Never mind.", background=True)
            assert caught.value.code == "idempotency_key_required"
            runs = agent_runs(testbed, namespace)
            assert len(runs) == 3, "one run for the create and none for its retry"

            # Cancelled: that run, by its response id.
            [unanswered] = [r["metadata"]["name"] for r in runs if r["spec"]["input"] == "Never mind."]
            cancelled = await client.responses.cancel(f"resp_{unanswered}")
            assert cancelled.id == f"resp_{unanswered}"
            assert (await poll(client, cancelled.id, {"cancelled", "completed"})).status == "cancelled"
