"""The runner's progress reports, as the operator sees them: every version of <run>-progress."""

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from agentrun_api.contract import PROGRESS_KEY, ProgressReport, progress_name
from agentrun_runner import __main__ as runner_main
from agentrun_runner.settings import RunnerSettings
from tests.harness.model_server import ModelServer, research_script
from tests.harness.nodeagent.kube import KubeClient
from tests.harness.run_identity import provision_run
from tests.harness.runner import API_KEY, STREAM_TOKEN, make_config, make_spec
from tests.harness.testbed import KubeTestbed

pytestmark = pytest.mark.integration


async def watch_progress(kube: KubeClient, name: str, seen: list[ProgressReport], watching: asyncio.Event) -> None:
    """Every version of the progress ConfigMap, in order, as a watch delivers them."""
    path = f"/api/v1/namespaces/{kube.namespace}/configmaps?fieldSelector=metadata.name%3D{name}"
    async for event in kube.watch(path):
        watching.set()  # the first event is the operator's empty ConfigMap: later versions all follow it
        data: dict[str, Any] = (event.get("object") or {}).get("data") or {}
        if PROGRESS_KEY in data:
            seen.append(ProgressReport.model_validate_json(data[PROGRESS_KEY]))


async def test_no_report_tells_of_an_outcome_without_its_result(
    testbed: KubeTestbed, namespace: str, tmp_path: Path
) -> None:
    seen: list[ProgressReport] = []
    saved = dict(os.environ)
    async with ModelServer(research_script()) as model, KubeClient(str(testbed.kubeconfig)) as admin:
        spec = make_spec(model.base_url)
        run = provision_run(testbed, namespace, spec, tmp_path)
        admin.namespace = namespace
        watching = asyncio.Event()
        watcher = asyncio.create_task(watch_progress(admin, progress_name(run.name), seen, watching))
        await asyncio.wait_for(watching.wait(), 10)
        os.environ.update(
            {"KUBECONFIG": str(run.kubeconfig), "OPENAI_API_KEY": API_KEY, "AGENTRUN_STREAM_TOKEN": STREAM_TOKEN}
        )
        try:
            config = make_config(spec, tmp_path, namespace=namespace, name=run.name, uid=run.uid)
            settings = RunnerSettings(sse_linger_seconds=0.0, stream_host="127.0.0.1", retry_base_seconds=0.02)
            code = await runner_main.run(config, settings)
            await asyncio.sleep(0.5)  # let the watch deliver the last version
        finally:
            os.environ.clear()
            os.environ.update(saved)
            watcher.cancel()

    assert code == 0
    ended = [report for report in seen if report.outcome is not None]
    assert ended, f"no report carried the outcome; saw {len(seen)} reports"
    assert all(report.result is not None for report in ended), [r.model_dump() for r in ended]
    assert seen[-1].outcome is not None
