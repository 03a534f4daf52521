"""The runner's model requests: a body encoded once per message, sent through the real openai SDK.

The scripted model server records each request's raw body, so the runner's pre-encoded request can
be compared byte for byte with what the SDK's own ``chat.completions.create`` sends for the same
arguments; failures still travel the SDK's typed errors into the runner's retry path.
"""

import random
from typing import Any

import openai
import pytest

from agentrun_runner.model import ModelClient, ModelFailedError, ModelRejectedError, WireConversation
from agentrun_runner.settings import RunnerSettings
from agentrun_runner.state import Message
from agentrun_runner.tools import HTTP_FETCH_TOOL, WORKSPACE_TOOLS
from tests.harness.model_server import Answer, Failure, ModelServer, by_turn, call, in_order
from tests.harness.runner import API_KEY, make_spec

pytestmark = pytest.mark.integration

TOOLS = [*WORKSPACE_TOOLS, HTTP_FETCH_TOOL]
SETTINGS = RunnerSettings(retry_base_seconds=0.01, retry_max_backoff_seconds=0.02)


def conversation() -> list[Message]:
    """A history with every kind of message a run holds, non-ASCII text included."""
    return [
        {"role": "system", "content": "You are a careful researcher."},
        {"role": "user", "content": 'Compare the vendors: Zürich, São Paulo, 東京 \u2014 and "quote" them.'},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_0_0", "type": "function", "function": {"name": "list_files", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_0_0", "content": "notes.md 12 bytes\nüber.txt 3 bytes"},
    ]


def model_client(server: ModelServer, **model: Any) -> ModelClient:
    spec = make_spec(server.base_url, model={"maxRetries": 2, **model})
    return ModelClient(
        spec.model,
        api_key=API_KEY,
        limiter=None,
        max_queue_wait_seconds=60,
        settings=SETTINGS,
        rng=random.Random(7),
    )


async def complete(client: ModelClient, messages: list[Message], max_completion_tokens: int | None = None) -> Message:
    answer = await client.complete(
        messages,
        TOOLS,
        remaining=lambda: 60.0,
        on_token=None,
        on_queue_wait=lambda _seconds: None,
        max_completion_tokens=max_completion_tokens,
    )
    return answer.message


@pytest.mark.parametrize(
    "model",
    [
        {},
        {"temperature": 0.25},
        {"stream": True, "temperature": 0.0},
    ],
    ids=["plain", "temperature", "streaming"],
)
async def test_request_body_is_byte_for_byte_what_the_sdk_sends(model: dict[str, Any]) -> None:
    async with ModelServer(by_turn([Answer("done")])) as server:
        runner_client = model_client(server, **model)
        await complete(runner_client, conversation(), max_completion_tokens=321)
        await runner_client.close()

        sdk = openai.AsyncOpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0)
        options: dict[str, Any] = {"model": "scripted-model", "messages": conversation(), "tools": TOOLS}
        options["max_completion_tokens"] = 321
        if "temperature" in model:
            options["temperature"] = model["temperature"]
        if model.get("stream"):
            stream = await sdk.chat.completions.create(**options, stream=True, stream_options={"include_usage": True})
            [_chunk async for _chunk in stream]
        else:
            await sdk.chat.completions.create(**options)
        await sdk.close()

        ours, theirs = server.requests
        assert ours.raw == theirs.raw
        assert ours.body["messages"] == conversation()
        our_headers = {name.lower(): value for name, value in ours.headers.items()}
        their_headers = {name.lower(): value for name, value in theirs.headers.items()}
        for header in ("authorization", "content-type", "accept", "content-length"):
            assert our_headers[header] == their_headers[header], header
        assert our_headers["authorization"] == f"Bearer {API_KEY}"


async def test_each_call_sends_the_whole_conversation_as_it_grows() -> None:
    script = by_turn([Answer(tool_calls=[call("list_files")]), Answer("done")])
    async with ModelServer(script) as server:
        client = model_client(server)
        messages = conversation()[:2]
        first = await complete(client, messages)
        messages.append(first)
        messages.append({"role": "tool", "tool_call_id": first["tool_calls"][0]["id"], "content": "(empty)"})
        second = await complete(client, messages)
        await client.close()
    assert second["content"] == "done"
    assert [r.body["messages"] for r in server.requests] == [conversation()[:2], messages]


def test_a_message_is_encoded_once_then_reused() -> None:
    wire = WireConversation()
    messages = conversation()
    assert wire.encode(messages) == openai_encoding(messages)
    # Messages are append-only; an edit in place after encoding (which the runner never makes)
    # shows the earlier encoding is reused, not redone.
    messages[1]["content"] = "changed"
    messages.append({"role": "user", "content": "more"})
    assert b"changed" not in wire.encode(messages)
    assert b'"content":"more"' in wire.encode(messages)
    # Another conversation (a fresh list) is encoded from scratch.
    fresh = conversation()[:1]
    assert wire.encode(fresh) == openai_encoding(fresh)


def openai_encoding(value: Any) -> bytes:
    from openai._utils._json import openapi_dumps  # the SDK's own body encoder, for comparison only

    return openapi_dumps(value)


async def test_rate_limits_and_server_errors_are_retried_through_the_sdk_errors() -> None:
    script = in_order([Failure(429, retry_after="0"), Failure(503), Answer("after retries")])
    async with ModelServer(script) as server:
        client = model_client(server)
        answer = await complete(client, conversation())
        await client.close()
    assert answer["content"] == "after retries"
    assert len(server.requests) == 3
    assert len({request.raw for request in server.requests}) == 1  # the same body each attempt


async def test_retries_run_out_on_repeated_server_errors() -> None:
    async with ModelServer(in_order([Failure(500)])) as server:
        client = model_client(server, maxRetries=1)
        with pytest.raises(ModelFailedError, match="after 2 attempt"):
            await complete(client, conversation())
        await client.close()
    assert len(server.requests) == 2


@pytest.mark.parametrize(("status", "hint"), [(400, "a retry cannot fix it"), (401, "API key")])
async def test_a_final_4xx_is_rejected_without_a_retry(status: int, hint: str) -> None:
    async with ModelServer(in_order([Failure(status)])) as server:
        client = model_client(server)
        with pytest.raises(ModelRejectedError, match=hint):
            await complete(client, conversation())
        await client.close()
    assert len(server.requests) == 1
