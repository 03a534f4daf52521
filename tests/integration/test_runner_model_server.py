"""The scripted model server: its CLI serves the default research agent to the real openai SDK, and it
records every call's time in flight, ending it when the client goes away."""

import asyncio
import sys

import openai
import pytest

from tests.harness.model_server import Answer, ModelServer, in_order, most_in_window
from tests.harness.runner import REPO_ROOT

pytestmark = pytest.mark.integration


async def test_cli_serves_the_research_script_until_sigterm() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.harness.model_server",
        "--port",
        "0",
        "--script",
        "research",
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        base_url = (await asyncio.wait_for(process.stdout.readline(), timeout=15)).decode().strip()
        assert base_url.startswith("http://127.0.0.1:")
        client = openai.AsyncOpenAI(base_url=base_url, api_key="k", max_retries=0)
        messages: list[dict[str, object]] = [{"role": "user", "content": "research"}]
        first = await client.chat.completions.create(model="m", messages=messages)  # type: ignore[arg-type]
        calls = first.choices[0].message.tool_calls or []
        assert [c.function.name for c in calls] == ["list_files"]  # type: ignore[union-attr]
        streamed = await client.chat.completions.create(
            model="m",
            messages=messages,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in streamed]
        assert chunks[-1].usage is not None
        assert chunks[-1].usage.total_tokens > 0
        await client.close()
    finally:
        process.terminate()
        assert await asyncio.wait_for(process.wait(), timeout=10) == 0


async def test_a_call_whose_client_goes_away_stops_counting_as_in_flight() -> None:
    # The first call is held far past the client's timeout; the second is answered at once.
    script = in_order([Answer("late", delay=60), Answer("soon")])
    async with ModelServer(script) as server:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="k", max_retries=0, timeout=0.5)
        with pytest.raises(openai.APITimeoutError):
            await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "one"}])
        async with asyncio.timeout(5):
            while server.in_flight:  # the server notices the hang-up on its own
                await asyncio.sleep(0.02)
        answer = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "two"}])
        await client.close()
    assert answer.choices[0].message.content == "soon"
    assert server.max_in_flight == 1
    gone, answered = server.spans
    assert (gone.answered, answered.answered) == (False, True)
    assert gone.request is server.requests[0]
    assert gone.ended_at - gone.started_at < 5  # not the 60 s the script asked for
    assert most_in_window([r.received_at for r in server.requests], 60) == 2
    assert most_in_window([r.received_at for r in server.requests], gone.ended_at - gone.started_at) == 1
