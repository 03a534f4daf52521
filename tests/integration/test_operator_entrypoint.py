"""`python -m agentrun_operator` as a process: liveness on /healthz, Prometheus metrics on /metrics."""

import asyncio
import os
import signal
import socket
import sys

import aiohttp
import pytest

from tests.harness.inprocess_operator import Cluster, eventually, run_manifest
from tests.harness.source_roots import pythonpath

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def fetch(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    try:
        async with session.get(url) as response:
            return response.status, await response.text()
    except aiohttp.ClientError:
        return 0, ""


async def test_operator_process_serves_health_and_metrics_and_reconciles(cluster: Cluster) -> None:
    cluster.add_api_key_secret()
    health, metrics, permits = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "KUBECONFIG": str(cluster.operator_kubeconfig),
        "AGENTRUN_WATCH_NAMESPACE": cluster.namespace,
        "PYTHONPATH": pythonpath(),
        "AGENTRUN_HEALTH_PORT": str(health),
        "AGENTRUN_METRICS_PORT": str(metrics),
        "AGENTRUN_LOG_FORMAT": "json",
        "AGENTRUN_STATUS_MIN_INTERVAL_SECONDS": "0.2",
        "AGENTRUN_PERMIT_HOST": "127.0.0.1",
        "AGENTRUN_PERMIT_PORT": str(permits),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agentrun_operator",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with aiohttp.ClientSession() as session:
            status = 0
            for _ in range(200):
                status, _ = await fetch(session, f"http://127.0.0.1:{health}/healthz")
                if status == 200:
                    break
                await asyncio.sleep(0.05)
            assert status == 200, "the liveness endpoint never answered"
            # The throttle pools' permit server starts with the operator, on AGENTRUN_PERMIT_PORT.
            assert (await fetch(session, f"http://127.0.0.1:{permits}/healthz"))[0] == 200

            cluster.create(run_manifest())
            await eventually(lambda: cluster.get("Job", "q3-runner"), timeout=15, message="the Job")
            await cluster.start_pod()
            await eventually(lambda: cluster.status().get("phase") == "Running", timeout=15)

            code, text = await fetch(session, f"http://127.0.0.1:{metrics}/metrics")
            assert code == 200
            assert 'agentrun_runs{phase="Running"} 1.0' in text
            assert "agentrun_status_writes_total" in text
            assert "agentrun_reconcile_errors_total" in text
            assert "q3" not in text  # no run names as labels
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(process.communicate(), timeout=20)
    assert process.returncode == 0, output.decode()[-2000:]
    assert b'"level"' in output  # AGENTRUN_LOG_FORMAT=json
    assert b"sk-test-not-real" not in output
