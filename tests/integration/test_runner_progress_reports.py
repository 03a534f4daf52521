"""The runner's progress reports, as the operator sees them: every version of <run>-progress."""

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agentrun_api.contract import PROGRESS_KEY, ProgressReport, progress_name
from agentrun_runner import __main__ as runner_main
from agentrun_runner.settings import RunnerSettings
from tests.harness.apiserver import EmulatedApiServer
from tests.harness.model_server import ModelServer, research_script
from tests.harness.runner import API_KEY, STREAM_TOKEN, make_config, make_spec

pytestmark = pytest.mark.integration


async def watch_progress(url: str, name: str, seen: list[ProgressReport]) -> None:
    """Every version of the progress ConfigMap, in order, as a watch delivers them."""
    path = f"{url}/api/v1/namespaces/default/configmaps?watch=true&fieldSelector=metadata.name%3D{name}"
    async with aiohttp.ClientSession() as session, session.get(path) as response:
        async for line in response.content:
            event: dict[str, Any] = json.loads(line)
            data = (event.get("object") or {}).get("data") or {}
            if PROGRESS_KEY in data:
                seen.append(ProgressReport.model_validate_json(data[PROGRESS_KEY]))


async def test_no_report_tells_of_an_outcome_without_its_result(apiserver: EmulatedApiServer, tmp_path: Path) -> None:
    seen: list[ProgressReport] = []
    watcher = asyncio.create_task(watch_progress(str(apiserver.url), progress_name("demo"), seen))
    saved = dict(os.environ)
    os.environ.update(
        {"KUBECONFIG": str(apiserver.kubeconfig_path), "OPENAI_API_KEY": API_KEY, "AGENTRUN_STREAM_TOKEN": STREAM_TOKEN}
    )
    try:
        async with ModelServer(research_script()) as model:
            config = make_config(make_spec(model.base_url), tmp_path)
            settings = RunnerSettings(sse_linger_seconds=0.0, stream_host="127.0.0.1", retry_base_seconds=0.02)
            code = await runner_main.run(config, settings)
        await asyncio.sleep(0.2)  # let the watch deliver the last version
    finally:
        os.environ.clear()
        os.environ.update(saved)
        watcher.cancel()

    assert code == 0
    ended = [report for report in seen if report.outcome is not None]
    assert ended, f"no report carried the outcome; saw {len(seen)} reports"
    assert all(report.result is not None for report in ended), [r.model_dump() for r in ended]
    assert seen[-1].outcome is not None
