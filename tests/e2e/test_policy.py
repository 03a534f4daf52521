"""The platform policy, end to end: the operator as the chart installs it, configured through the chart's policy
values, refuses runs outside it on the real control plane (Failed with reason PolicyViolation, a Warning Event, no
children) and admits the runs inside it."""

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentrun_operator.policy import REASON_POLICY_VIOLATION
from tests.harness.agentruns import agent_run, agentruns_path, wait_for, wait_for_end, wait_for_status
from tests.harness.local_cluster import LocalCluster
from tests.harness.model_server import research_script
from tests.harness.nodeagent.kube import JsonObject, KubeClient, namespaced_path
from tests.harness.testbed import KubeTestbed

pytestmark = pytest.mark.e2e

POLICY = {
    "allowedImages": ["ghcr.io/agentrun/*"],
    "allowedModelHosts": ["127.0.0.1"],
    "allowedWebhookHosts": ["hooks.example.com"],
}


@pytest.fixture
async def cluster(testbed: KubeTestbed, tmp_path: Path) -> AsyncIterator[LocalCluster]:
    async with LocalCluster(
        testbed, tmp_path, model_script=research_script(), from_chart=True, chart_values={"policy": POLICY}
    ) as running:
        if running.model.real:
            pytest.skip("the policy allows the scripted model server's host only; OPENAI_BASE_URL points elsewhere")
        await running.create_model_secret("model-key", "api-key")
        yield running


@pytest.fixture
async def kube(cluster: LocalCluster) -> AsyncIterator[KubeClient]:
    async with KubeClient(str(cluster.kubeconfig_path)) as client:
        yield client


async def warnings_of(kube: KubeClient, run: str) -> list[JsonObject]:
    events = await kube.list(namespaced_path("v1", "events", kube.namespace))
    return [
        e
        for e in events
        if e["involvedObject"].get("name") == run and e["involvedObject"].get("kind") == "AgentRun"
        if e.get("type") == "Warning"
    ]


async def assert_refused(kube: KubeClient, run: str, *expected: str) -> str:
    """The run ended Failed for PolicyViolation with a Warning Event and no Job; returns its message."""
    status = await wait_for_end(kube, run)
    assert (status["phase"], status["reason"]) == ("Failed", REASON_POLICY_VIOLATION), status
    for part in expected:
        assert part in status["message"], status["message"]
    accepted = next(cond for cond in status["conditions"] if cond["type"] == "Accepted")
    assert (accepted["status"], accepted["reason"]) == ("False", REASON_POLICY_VIOLATION)
    events = await wait_for(lambda: warnings_of(kube, run), f"the Warning Event of run {run}")
    assert [e["reason"] for e in events] == [REASON_POLICY_VIOLATION]
    assert events[0]["message"] == status["message"]
    assert await kube.get(namespaced_path("batch/v1", "jobs", kube.namespace, f"{run}-runner")) is None
    return str(status["message"])


async def test_an_image_outside_the_allowed_repositories_is_refused(cluster, kube):
    await kube.create(
        agentruns_path(cluster.namespace), agent_run("img", cluster, runner={"image": "docker.io/miner/xmrig:latest"})
    )
    await assert_refused(kube, "img", "spec.runner.image", "'docker.io/miner/xmrig:latest'", "ghcr.io/agentrun/*")


async def test_a_model_host_outside_the_policy_is_refused_without_the_url_reaching_status_or_events(cluster, kube):
    run = agent_run("exfil", cluster)
    run["spec"]["model"]["baseURL"] = "https://user:hunter2@collector.evil.example:8443/v1?token=hunter3"
    await kube.create(agentruns_path(cluster.namespace), run)
    message = await assert_refused(kube, "exfil", "spec.model.baseURL", "'collector.evil.example'", "127.0.0.1")
    # Only the host is named: a URL's user part and query may hold credentials.
    listing = str(await kube.get(f"{agentruns_path(cluster.namespace)}/exfil")) + str(await warnings_of(kube, "exfil"))
    assert "hunter" not in message
    assert "hunter2" not in listing.replace(run["spec"]["model"]["baseURL"], "")


async def test_a_webhook_host_outside_the_policy_is_refused_and_never_posted_to(cluster, kube):
    await kube.create(
        agentruns_path(cluster.namespace),
        agent_run(
            "hook",
            cluster,
            completionWebhook={
                "url": "http://169.254.169.254/latest",
                "signingKeySecretRef": {"name": "k", "key": "k"},
            },
        ),
    )
    await assert_refused(kube, "hook", "spec.completionWebhook.url", "'169.254.169.254'", "hooks.example.com")
    status = await wait_for_status(kube, "hook", lambda s: s.get("phase") == "Failed", "Failed")
    assert "notification" not in status  # no delivery was attempted to a host the policy does not allow


async def test_a_run_inside_the_policy_is_admitted_and_succeeds(cluster, kube):
    await kube.create(
        agentruns_path(cluster.namespace),
        agent_run("fine", cluster, runner={"image": "ghcr.io/agentrun/agentrun-runner:0.1.0"}),
    )
    status = await wait_for_end(kube, "fine")
    assert status["phase"] == "Succeeded", status
    assert REASON_POLICY_VIOLATION not in str(await warnings_of(kube, "fine"))
