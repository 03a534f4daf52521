"""The scripted model server's CLI serves the default research agent to the real openai SDK."""

import asyncio
import sys

import openai
import pytest

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
