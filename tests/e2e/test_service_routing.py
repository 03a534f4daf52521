"""The addresses the product gives work as given: the stream gateway reaches a runner pod at its default upstream,
``http://<run>-stream.<namespace>.svc:8080/events``, through the run's stream Service, its EndpointSlice from
the real controller, the cluster DNS and the kube-proxy stand-in, with no upstream override; and `kubectl agentrun
stream` follows the same in-cluster address from status.streamURL where names resolve as in a pod."""

import asyncio
import ipaddress
import os
import sys
from pathlib import Path

import httpx
import pytest
from httpx_sse import ServerSentEvent, aconnect_sse

from tests.e2e.runs import needs_scripted_model
from tests.e2e.test_stream_log import LONG_ANSWER, STREAMING, stream_token
from tests.harness.agentruns import agent_run, agentruns_path, runner_pods, wait_for_end, wait_for_status
from tests.harness.gateway import gateway_endpoint, gateway_process
from tests.harness.identities import SYSTEM_NAMESPACE
from tests.harness.local_cluster import LocalCluster
from tests.harness.model_server import Answer, by_turn
from tests.harness.nodeagent.kube import KubeClient, namespaced_path
from tests.harness.source_roots import pythonpath
from tests.harness.sse_client import dispatched_events
from tests.harness.testbed import KubeTestbed

pytestmark = pytest.mark.e2e

# Short waits before the gateway re-attaches to a runner that is not up yet.
FAST_GATEWAY = {
    "AGENTRUN_GATEWAY_REATTACH_INITIAL_DELAY_SECONDS": "0.1",
    "AGENTRUN_GATEWAY_REATTACH_MAX_DELAY_SECONDS": "0.5",
    "AGENTRUN_GATEWAY_RUN_CACHE_SECONDS": "0.1",
}


@pytest.fixture
def cluster(operator_process_cluster: LocalCluster) -> LocalCluster:
    """The operator as a child process (conftest.operator_process_cluster): the gateway here runs as the harness's
    gateway identity."""
    return operator_process_cluster


@pytest.mark.timeout(120)
async def test_the_gateway_reaches_the_runner_pod_by_its_stream_service_name(
    cluster: LocalCluster, kube: KubeClient, testbed: KubeTestbed, tmp_path: Path
) -> None:
    needs_scripted_model(cluster)
    assert cluster.model_server is not None
    cluster.model_server.script = by_turn([Answer(content=LONG_ANSWER, chunk_delay=0.03)])
    run = agent_run("routed", cluster, streaming=STREAMING)
    run["spec"]["model"]["stream"] = True
    await kube.create(agentruns_path(cluster.namespace), run)
    api = gateway_endpoint(testbed, cluster.namespace, tmp_path)

    def in_cluster(argv: list[str], env: dict[str, str]) -> list[str]:
        # The gateway resolves names as a pod of its chart's namespace does.
        return testbed.with_cluster_dns(argv, env, namespace=SYSTEM_NAMESPACE, directory=tmp_path / "gateway")

    events: list[ServerSentEvent] = []
    phase_at_first_token = ""
    with (tmp_path / "gateway.log").open("wb") as log:
        async with (
            gateway_process(api, None, stderr=log, wrap=in_cluster, extra_env=FAST_GATEWAY) as (_, port),
            httpx.AsyncClient(timeout=httpx.Timeout(15.0)) as client,
            aconnect_sse(
                client,
                "GET",
                f"http://127.0.0.1:{port}/runs/{cluster.namespace}/routed/events",
                headers={"Authorization": f"Bearer {await stream_token(kube, 'routed')}"},
            ) as source,
        ):
            assert source.response.status_code == 200
            async for event in dispatched_events(source):
                events.append(event)
                if event.event == "token" and not phase_at_first_token:
                    found = await kube.get(agentruns_path(cluster.namespace) + "/routed")
                    phase_at_first_token = ((found or {}).get("status") or {}).get("phase", "")
                if event.event == "finished":
                    break
    # Live from the runner, not replayed from what an ended run left behind.
    assert phase_at_first_token == "Running", (tmp_path / "gateway.log").read_text()
    assert sum(1 for event in events if event.event == "token") >= 100
    assert (await wait_for_end(kube, "routed"))["phase"] == "Succeeded"

    # What the gateway's default address named: the run's stream Service, whose ready endpoint was the runner pod.
    service = await kube.get(namespaced_path("v1", "services", cluster.namespace, "routed-stream"))
    assert service is not None
    assert testbed.resolve(f"routed-stream.{cluster.namespace}.svc") == [service["spec"]["clusterIP"]]
    (pod,) = await runner_pods(kube, "routed")
    assert ipaddress.ip_address(pod["status"]["podIP"]) in ipaddress.ip_network(testbed.network_plan.pod_cidr)


@pytest.mark.timeout(120)
async def test_kubectl_agentrun_stream_follows_the_in_cluster_stream_url_where_names_resolve_as_in_a_pod(
    cluster: LocalCluster, kube: KubeClient, testbed: KubeTestbed, tmp_path: Path
) -> None:
    needs_scripted_model(cluster)
    assert cluster.model_server is not None
    cluster.model_server.script = by_turn([Answer(content=LONG_ANSWER, chunk_delay=0.03)])
    run = agent_run("followed", cluster, streaming=STREAMING)
    run["spec"]["model"]["stream"] = True
    await kube.create(agentruns_path(cluster.namespace), run)
    status = await wait_for_status(kube, "followed", lambda s: s.get("phase") == "Running", "Running")
    # No stream gateway configured: the operator gives the run's stream Service by its in-cluster name.
    assert status["streamURL"] == f"http://followed-stream.{cluster.namespace}.svc:8080/events"

    async def runner_ready() -> bool:  # its readiness probe passed: the stream is served, the Service routes
        pods = await runner_pods(kube, "followed")
        conditions = [c for pod in pods for c in pod["status"].get("conditions") or [] if c["type"] == "Ready"]
        return any(c["status"] == "True" for c in conditions)

    while not await runner_ready():
        await asyncio.sleep(0.1)

    argv = [sys.executable, "-m", "agentrun_operator.kubectl_plugin"]
    argv += ["--kubeconfig", str(cluster.kubeconfig_path), "stream", "followed"]
    env = {**os.environ, "PYTHONPATH": pythonpath()}
    plugin = await asyncio.create_subprocess_exec(
        *testbed.with_cluster_dns(argv, env, namespace=cluster.namespace, directory=tmp_path / "plugin"),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(plugin.communicate(), 90)
    assert plugin.returncode == 0, err.decode()
    printed = out.decode()
    assert "finished" in printed.splitlines()[-1], printed[-500:]
    assert all(f"w{index}" in printed for index in (0, 60, 119)), "every part of the answer, streamed"
