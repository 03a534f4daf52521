"""Security through the whole path: secret values stay in their Secrets (and the runner's env), the
runner's RBAC reaches nothing but its own run's ConfigMaps, and the run's stream wants its token."""

import asyncio
import base64
import json
import secrets
from pathlib import Path

import aiohttp
import httpx
import pytest
from httpx_sse import aconnect_sse

from agentrun_api import contract
from tests.e2e.runs import (
    assert_each_source_fetched_once,
    assert_result,
    fetching_run,
    fetching_script,
    needs_scripted_model,
)
from tests.harness.agentruns import AGENTRUNS, runner_pods, wait_for_end, wait_for_status
from tests.harness.local_cluster import LocalCluster
from tests.harness.nodeagent.kube import KubeClient, namespaced_path
from tests.harness.rbac import RbacAuthorizer, Request, ServiceAccount
from tests.harness.sse_client import dispatched_events

pytestmark = pytest.mark.e2e


def encodings(value: str) -> list[str]:
    """The forms a leaked value could take in an object or a log: as is, and as Secret data (base64)."""
    return [value, base64.b64encode(value.encode()).decode()]


def leaks(text: str, value: str) -> bool:
    return any(form in text for form in encodings(value))


async def create_secret(kube: KubeClient, name: str, key: str, value: str) -> None:
    body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": {key: value}}
    await kube.create(namespaced_path("v1", "secrets", "default"), body)


async def stream_token(kube: KubeClient, run: str) -> str:
    secret = await kube.get(namespaced_path("v1", "secrets", "default", f"{run}-stream-token"))
    assert secret is not None
    return base64.b64decode(secret["data"]["token"]).decode()


async def test_no_secret_value_reaches_objects_logs_or_metrics_after_a_full_run(cluster, kube, tools):
    needs_scripted_model(cluster)
    assert cluster.model_server is not None
    cluster.model_server.script = fetching_script(tools, delay=0.1)
    api_key = f"sk-e2e-{secrets.token_hex(16)}"
    await create_secret(kube, "leak-check-key", "api-key", api_key)
    run = fetching_run("leak-check", cluster, streaming={"enabled": True})
    run["spec"]["model"]["apiKeySecretRef"] = {"name": "leak-check-key", "key": "api-key"}
    uid = (await kube.create(AGENTRUNS, run))["metadata"]["uid"]
    status = await wait_for_end(kube, "leak-check")
    assert status["phase"] == "Succeeded", status
    assert_result(status)
    assert_each_source_fetched_once(tools, uid)
    # The key was really used: the model saw it, so its absence everywhere else means something.
    assert {r.headers.get("Authorization") for r in cluster.model_server.requests} == {f"Bearer {api_key}"}
    token = await stream_token(kube, "leak-check")

    places = 0
    for (group, plural, namespace, name), stored in cluster.apiserver.store.objects.items():
        text = json.dumps(stored)
        places += 1
        own_secret = {"leak-check-key": api_key, "leak-check-stream-token": token}
        for value in (api_key, token):
            if (group, plural) == ("", "secrets") and own_secret.get(name) == value:
                continue
            assert not leaks(text, value), f"{plural}/{namespace}/{name} holds a secret value"
    events = cluster.apiserver.store.all_of("Event", "default")
    assert events, "the operator wrote no Events to check"

    logs = [cluster.operator.log_path, *sorted((cluster.state_dir / "executor" / "logs").rglob("*.log"))]
    assert len(logs) >= 2, logs  # the operator's log and at least one runner container's
    for log in logs:
        text = Path(log).read_text(errors="replace")
        for value in (api_key, token):
            assert not leaks(text, value), f"{log} holds a secret value"
    async with aiohttp.ClientSession() as session, session.get(cluster.operator.metrics_url) as response:
        metrics = await response.text()
    assert "agentrun_runs" in metrics
    for value in (api_key, token):
        assert not leaks(metrics, value)
    assert places > 10


def authorizer(cluster: LocalCluster) -> RbacAuthorizer:
    store = cluster.apiserver.store
    return RbacAuthorizer(
        store.all_of("Role"),
        store.all_of("RoleBinding"),
        store.all_of("ClusterRole"),
        store.all_of("ClusterRoleBinding"),
    )


@pytest.mark.parametrize("store", ["ConfigMap", "PersistentVolumeClaim"])
async def test_runner_service_account_reaches_only_its_own_runs_configmaps(cluster, kube, store):
    for name in ("mine", "theirs"):
        run = fetching_run(name, cluster, checkpoint={"store": store}, suspend=True)
        await kube.create(AGENTRUNS, run)
    for name in ("mine", "theirs"):
        await wait_for_status(kube, name, lambda s: s.get("phase") == "Suspended", "Suspended")
    pod_spec = (await kube.get(namespaced_path("batch/v1", "jobs", "default", "mine-runner")))["spec"]["template"]
    account = ServiceAccount("default", pod_spec["spec"]["serviceAccountName"])
    assert account.name == "mine-runner"
    rbac = authorizer(cluster)

    def can(verb: str, resource: str, name: str | None = None, group: str = "", namespace: str = "default") -> bool:
        return rbac.can(account, Request(verb, resource, namespace, name, group))

    own = [contract.progress_name("mine")]
    if store == "ConfigMap":
        own.append(contract.checkpoint_segment_name("mine", 0))
    for configmap in own:
        assert can("get", "configmaps", configmap)
        assert can("patch", "configmaps", configmap)
        assert can("update", "configmaps", configmap)
    # Its own run's ConfigMaps only: not another run's, not its config, not by listing.
    for configmap in (contract.progress_name("theirs"), contract.checkpoint_segment_name("theirs", 0)):
        for verb in ("get", "patch", "update", "delete"):
            assert not can(verb, "configmaps", configmap), (verb, configmap)
    assert not can("delete", "configmaps", own[0])
    assert not can("list", "configmaps")
    assert not can("watch", "configmaps")
    # Creating needs no name, so RBAC cannot narrow it: allowed only when the run checkpoints to ConfigMaps.
    assert can("create", "configmaps") == (store == "ConfigMap")
    # No Secret at all, its own stream token included (the kubelet, not the runner, reads that one).
    for verb in ("get", "list", "watch", "create", "update", "patch", "delete"):
        assert not can(verb, "secrets", "mine-stream-token"), verb
        assert not can(verb, "secrets"), verb
    assert not can("get", "secrets", "model-key")
    for verb in ("get", "list", "patch", "delete"):
        assert not can(verb, "agentruns", "theirs", group="agentrun.dev"), verb
        assert not can(verb, "agentruns", "mine", group="agentrun.dev"), verb
    for resource, group in (("pods", ""), ("pods/exec", ""), ("jobs", "batch"), ("roles", "rbac.authorization.k8s.io")):
        assert not can("create", resource, group=group), resource
    assert not can("get", "configmaps", own[0], namespace="kube-system")
    assert not can("list", "namespaces", namespace=None)


async def test_stream_refuses_a_missing_or_wrong_token_and_serves_the_right_one(cluster, kube, tools):
    needs_scripted_model(cluster)
    assert cluster.model_server is not None
    cluster.model_server.script = fetching_script(tools, delay=0.5)
    await kube.create(AGENTRUNS, fetching_run("streamed", cluster, streaming={"enabled": True}))
    await wait_for_status(kube, "streamed", lambda s: s.get("phase") == "Running", "Running")
    token = await stream_token(kube, "streamed")
    [pod] = await runner_pods(kube, "streamed")
    # The address the Service's endpoints would name: the pod's IP, unless the cluster binds runners elsewhere.
    host = cluster.runner_env.get("AGENTRUN_RUNNER_STREAM_HOST") or pod["status"]["podIP"]
    url = f"http://{host}:{contract.STREAM_PORT}/events"
    async with httpx.AsyncClient(timeout=10) as client:
        for headers in ({}, {"Authorization": "Bearer not-the-token"}, {"Authorization": token}):
            response = await _get_when_listening(client, url, headers)
            assert response.status_code == 401, headers
            assert response.headers.get("WWW-Authenticate") == "Bearer"
            assert token not in response.text
        seen: list[tuple[str, str]] = []
        async with aconnect_sse(client, "GET", url, headers={"Authorization": f"Bearer {token}"}) as source:
            assert source.response.status_code == 200
            assert source.response.headers["Cache-Control"] == "no-cache"
            async for event in dispatched_events(source):
                seen.append((event.id, event.event))
                if event.event == "iteration":
                    break
    ids = [int(event_id) for event_id, _ in seen]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert seen[-1][1] == "iteration"
    status = await wait_for_end(kube, "streamed")
    assert status["phase"] == "Succeeded", status


async def _get_when_listening(client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> httpx.Response:
    """The runner serves its stream shortly after it starts: retry refused connections for a few seconds."""
    for _ in range(50):
        try:
            return await client.get(url, headers=headers)
        except httpx.ConnectError:
            await asyncio.sleep(0.1)
    return await client.get(url, headers=headers)
