"""The watch page's own reconnection, in headless Chromium: when the gateway answers a reconnecting EventSource
with an HTTP error (503 while the Kubernetes API is away), the browser gives up on that EventSource; the page opens
a new one from the last event it showed, and ends with the whole log, no event missing or repeated. A fake runner
streams; the gateway reaches the real API server through the fault-injecting proxy."""

from pathlib import Path
from typing import Any

import pytest

from agentrun_gateway.kube import READER_RETRY
from tests.harness.apiproxy import ApiProxy
from tests.harness.chromium import chromium_tab, needs_chromium
from tests.harness.fake_stream_runner import FakeStreamRunner
from tests.harness.gateway import ApiEndpoint, Gateway, fast_settings, gateway_endpoint, stream_token_secret
from tests.harness.identities import grant_stream_token_to_gateway
from tests.harness.run_identity import AGENTRUN_API, set_run_phase
from tests.harness.testbed import KubeTestbed
from tests.harness.watch_page import RENDERED, as_shown, sign_in, watch_url

pytestmark = pytest.mark.integration

RUN = "watched"
STREAM_TOKEN = "watch-page-stream-token"


def _create_run(testbed: KubeTestbed, namespace: str) -> None:
    secret = testbed.admin.post(
        f"/api/v1/namespaces/{namespace}/secrets", json=stream_token_secret(namespace, RUN, STREAM_TOKEN)
    )
    assert secret.status_code < 300, secret.text
    grant_stream_token_to_gateway(testbed.admin, namespace, RUN)
    spec: dict[str, Any] = {
        "instructions": "You relay.",
        "input": "Stream something.",
        "model": {"name": "test-model"},
        "maxExecutionTime": "1h",
        "maxIterations": 10,
        "streaming": {"heartbeatInterval": "1s"},
    }
    run = {"apiVersion": "agentrun.dev/v1alpha1", "kind": "AgentRun", "metadata": {"name": RUN}, "spec": spec}
    created = testbed.admin.post(f"{AGENTRUN_API}/namespaces/{namespace}/agentruns", json=run)
    assert created.status_code < 300, created.text
    set_run_phase(testbed, namespace, RUN, "Running")


async def _emit_iteration(runner: FakeStreamRunner, iteration: int, words: int) -> None:
    await runner.emit("iteration", {"iteration": iteration, "maxIterations": 10})
    for word in range(words):
        await runner.emit("token", {"iteration": iteration, "text": f"w{iteration}.{word} "})


@pytest.mark.timeout(90)
async def test_after_an_http_error_the_page_resumes_from_the_last_event_it_showed(
    testbed: KubeTestbed, namespace: str, tmp_path: Path
) -> None:
    needs_chromium()
    _create_run(testbed, namespace)
    api = gateway_endpoint(testbed, namespace, tmp_path)
    runner = FakeStreamRunner(STREAM_TOKEN, heartbeat_seconds=0.5)
    await runner.start()
    try:
        async with (
            ApiProxy(testbed.control_plane.url, ca_file=testbed.control_plane.ca_file) as proxy,
            Gateway(fast_settings(ApiEndpoint(proxy.url, api.token_file), runner.port), namespace, RUN) as gateway,
            chromium_tab() as tab,
        ):
            await sign_in(tab, watch_url(gateway), STREAM_TOKEN)
            await _emit_iteration(runner, 1, 5)
            await tab.wait_for("document.querySelectorAll('#events [data-id]').length === 6", "the first events")

            # The gateway restarts and, when the browser comes back, cannot read the run's stream token: 503.
            proxy.faults.inject(500, count=READER_RETRY.attempts, match=lambda request: request.kind == "Secret")
            await gateway.restart()
            await _emit_iteration(runner, 2, 5)  # while the page is away
            await tab.wait_for(
                "document.getElementById('connection').textContent === 'reconnecting after event 6 in 1 s'",
                "the page to give up on its EventSource after the 503",
            )
            await tab.wait_for("document.getElementById('connection').textContent === 'live'", "the page back")
            await _emit_iteration(runner, 3, 3)
            await runner.emit("finished", {"outcome": "Succeeded", "message": "done", "iteration": 3})
            await tab.wait_for("document.querySelector('#events [data-type=\"finished\"]') !== null", "the end")
            rendered = await tab.evaluate(RENDERED)
            assert proxy.faults.pending == []
            assert tab.errors == []
    finally:
        await runner.kill()
    assert rendered == as_shown([(e.id, e.type, e.data) for e in runner.log])
