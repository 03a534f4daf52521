"""Security through the whole path: secret values stay in their Secrets (and the runner's env), the
runner's RBAC reaches nothing but its own run's ConfigMaps, and the run's stream wants its token."""

import asyncio
import base64
import json
import secrets
import ssl
from typing import Any

import aiohttp
import httpx
import pytest
from httpx_sse import aconnect_sse

from agentrun_api import contract, permits
from tests.e2e.runs import (
    assert_each_source_fetched_once,
    assert_result,
    fetching_run,
    fetching_script,
    needs_scripted_model,
)
from tests.harness.agentruns import agentruns_path, runner_pods, wait_for_end, wait_for_status
from tests.harness.identities import gateway_identity
from tests.harness.local_cluster import LocalCluster
from tests.harness.nodeagent.kube import JsonObject, KubeClient, namespaced_path
from tests.harness.sse_client import dispatched_events

pytestmark = pytest.mark.e2e


@pytest.fixture
def cluster(operator_process_cluster: LocalCluster) -> LocalCluster:
    """The operator as a child process (conftest.operator_process_cluster): these tests read streams as the
    harness's gateway identity."""
    return operator_process_cluster


def encodings(value: str) -> list[str]:
    """The forms a leaked value could take in an object or a log: as is, and as Secret data (base64)."""
    return [value, base64.b64encode(value.encode()).decode()]


def leaks(text: str, value: str) -> bool:
    return any(form in text for form in encodings(value))


async def create_secret(kube: KubeClient, name: str, key: str, value: str) -> None:
    body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": {key: value}}
    await kube.create(namespaced_path("v1", "secrets", kube.namespace), body)


async def stream_token(kube: KubeClient, run: str) -> str:
    secret = await kube.get(namespaced_path("v1", "secrets", kube.namespace, f"{run}-stream-token"))
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
    uid = (await kube.create(agentruns_path(cluster.namespace), run))["metadata"]["uid"]
    status = await wait_for_end(kube, "leak-check")
    assert status["phase"] == "Succeeded", status
    assert_result(status)
    assert_each_source_fetched_once(tools, uid)
    # The key was really used: the model saw it, so its absence everywhere else means something.
    assert {r.headers.get("Authorization") for r in cluster.model_server.requests} == {f"Bearer {api_key}"}
    token = await stream_token(kube, "leak-check")
    permit_secret = await kube.get(namespaced_path("v1", "secrets", kube.namespace, "leak-check-permit-key"))
    assert permit_secret is not None
    permit_key = base64.b64decode(permit_secret["data"][contract.PERMIT_KEY_KEY]).decode()

    own_secret = {"leak-check-key": api_key, "leak-check-stream-token": token, "leak-check-permit-key": permit_key}
    places = 0
    holders: set[str] = set()
    for kind, obj in await everything_in_namespace(kube):
        name = obj["metadata"]["name"]
        places += 1
        text = json.dumps(obj)
        for value in (api_key, token, permit_key):
            if kind == "Secret" and own_secret.get(name) == value:
                if leaks(text, value):
                    holders.add(name)
                continue
            assert not leaks(text, value), f"{kind} {name} holds a secret value"
    assert holders == set(own_secret), holders  # the scan read Secret data: it would have seen a leaked value
    events = await kube.list(namespaced_path("v1", "events", cluster.namespace))
    assert events, "the operator wrote no Events to check"

    # The operator's output, and every container's log as `kubectl logs` reads it.
    logs = {"operator": cluster.operator.log()}
    for pod in await kube.list(namespaced_path("v1", "pods", cluster.namespace)):
        pod_path = namespaced_path("v1", "pods", cluster.namespace, pod["metadata"]["name"])
        logs[pod["metadata"]["name"]] = await kube.request_text(f"{pod_path}/log")
    assert len(logs) >= 2, logs.keys()  # the operator's log and at least one runner container's
    assert all(logs.values()), [source for source, text in logs.items() if not text]
    for source, text in logs.items():
        for value in (api_key, token, permit_key):
            assert not leaks(text, value), f"the log of {source} holds a secret value"
    async with aiohttp.ClientSession() as session, session.get(cluster.operator.metrics_url) as response:
        metrics = await response.text()
    assert "agentrun_runs" in metrics
    for value in (api_key, token, permit_key):
        assert not leaks(metrics, value)
    assert places > 10


async def everything_in_namespace(kube: KubeClient) -> list[tuple[str, JsonObject]]:
    """Every object an admin can list in the client's namespace and cluster-wide (cluster-scoped kinds), of
    every resource the API server's discovery names (built-in and custom): (kind, object) pairs."""
    group_versions = ["v1"]
    for group in (await kube.request("GET", "/apis")).get("groups") or []:
        group_versions.append(group["preferredVersion"]["groupVersion"])
    found: list[tuple[str, JsonObject]] = []
    for group_version in group_versions:
        prefix = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
        for resource in (await kube.request("GET", prefix)).get("resources") or []:
            if "/" in resource["name"] or "list" not in resource.get("verbs", []):
                continue
            scope = f"/namespaces/{kube.namespace}" if resource.get("namespaced") else ""
            items = await kube.list(f"{prefix}{scope}/{resource['name']}")
            found.extend((resource["kind"], item) for item in items)
    return found


async def access_review(kube: KubeClient, user: str, attributes: dict[str, Any]) -> bool:
    """The API server's own answer to "may this user do that" (a SubjectAccessReview, as `kubectl auth can-i
    --as` asks it), with the ServiceAccount's groups, which RBAC bindings may name."""
    namespace = user.split(":")[2]
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": user,
            "groups": ["system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"],
            "resourceAttributes": attributes,
        },
    }
    answer = await kube.create("/apis/authorization.k8s.io/v1/subjectaccessreviews", review)
    return bool(answer["status"].get("allowed"))


@pytest.mark.parametrize("store", ["ConfigMap", "PersistentVolumeClaim"])
async def test_runner_service_account_reaches_only_its_own_runs_configmaps(cluster, kube, store):
    for name in ("mine", "theirs"):
        run = fetching_run(name, cluster, checkpoint={"store": store}, suspend=True)
        await kube.create(agentruns_path(cluster.namespace), run)
    for name in ("mine", "theirs"):
        await wait_for_status(kube, name, lambda s: s.get("phase") == "Suspended", "Suspended")
    job = await kube.get(namespaced_path("batch/v1", "jobs", cluster.namespace, "mine-runner"))
    assert job is not None
    account = job["spec"]["template"]["spec"]["serviceAccountName"]
    assert account == "mine-runner"
    user = f"system:serviceaccount:{cluster.namespace}:{account}"

    async def can(
        verb: str, resource: str, name: str | None = None, group: str = "", namespace: str | None = cluster.namespace
    ) -> bool:
        attributes = {"verb": verb, "group": group, "resource": resource}
        subresource = None
        if "/" in resource:
            attributes["resource"], subresource = resource.split("/", 1)
            attributes["subresource"] = subresource
        if name is not None:
            attributes["name"] = name
        if namespace is not None:
            attributes["namespace"] = namespace
        return await access_review(kube, user, attributes)

    own = [contract.progress_name("mine")]
    if store == "ConfigMap":
        own.append(contract.checkpoint_segment_name("mine", 0))
    for configmap in own:
        assert await can("get", "configmaps", configmap)
        assert await can("patch", "configmaps", configmap)
        assert await can("update", "configmaps", configmap)
    # Its own run's ConfigMaps only: not another run's, not its config, not by listing.
    for configmap in (contract.progress_name("theirs"), contract.checkpoint_segment_name("theirs", 0)):
        for verb in ("get", "patch", "update", "delete"):
            assert not await can(verb, "configmaps", configmap), (verb, configmap)
    assert not await can("delete", "configmaps", own[0])
    assert not await can("list", "configmaps")
    assert not await can("watch", "configmaps")
    # Creating needs no name, so RBAC cannot narrow it: allowed only when the run checkpoints to ConfigMaps.
    assert (await can("create", "configmaps")) == (store == "ConfigMap")
    # No Secret at all, its own stream token included (the kubelet, not the runner, reads that one).
    for verb in ("get", "list", "watch", "create", "update", "patch", "delete"):
        assert not await can(verb, "secrets", "mine-stream-token"), verb
        assert not await can(verb, "secrets"), verb
    assert not await can("get", "secrets", "model-key")
    for verb in ("get", "list", "patch", "delete"):
        assert not await can(verb, "agentruns", "theirs", group="agentrun.dev"), verb
        assert not await can(verb, "agentruns", "mine", group="agentrun.dev"), verb
    for resource, group in (("pods", ""), ("pods/exec", ""), ("jobs", "batch"), ("roles", "rbac.authorization.k8s.io")):
        assert not await can("create", resource, group=group), resource
    assert not await can("get", "configmaps", own[0], namespace="kube-system")
    assert not await can("list", "namespaces", namespace=None)


async def test_stream_refuses_a_missing_or_wrong_token_and_serves_the_right_one(cluster, kube, tools):
    needs_scripted_model(cluster)
    assert cluster.model_server is not None
    cluster.model_server.script = fetching_script(tools, delay=0.5)
    await kube.create(agentruns_path(cluster.namespace), fetching_run("streamed", cluster, streaming={"enabled": True}))
    await wait_for_status(kube, "streamed", lambda s: s.get("phase") == "Running", "Running")
    token = await stream_token(kube, "streamed")
    [pod] = await runner_pods(kube, "streamed")
    # The address the Service's endpoints name: the pod's IP (each pod on the node agent has its own).
    host = pod["status"]["podIP"]
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


async def test_a_stream_reader_can_neither_take_permits_nor_read_the_permit_key(cluster, kube, tools):
    """The stream token is every reader's; the runner's permit key is its own, and the internet-facing gateway
    reads that run's stream token and no other Secret."""
    needs_scripted_model(cluster)
    assert cluster.model_server is not None
    cluster.model_server.script = fetching_script(tools, delay=0.1)
    pool = {
        "apiVersion": "agentrun.dev/v1alpha1",
        "kind": "ThrottlePool",
        "metadata": {"name": "shared"},
        "spec": {"maxRequestsInFlight": 2, "requestsPerMinute": 600},
    }
    await kube.create(namespaced_path("agentrun.dev/v1alpha1", "throttlepools", cluster.namespace), pool)
    run = fetching_run("pooled", cluster, streaming={"enabled": True}, throttle={"enabled": True, "pool": "shared"})
    await kube.create(agentruns_path(cluster.namespace), run)
    status = await wait_for_end(kube, "pooled")
    assert status["phase"] == "Succeeded", status  # its permits came from the pool, asked with its permit key
    token = await stream_token(kube, "pooled")
    secret = await kube.get(namespaced_path("v1", "secrets", kube.namespace, contract.permit_key_secret_name("pooled")))
    assert secret is not None
    permit_key = base64.b64decode(secret["data"][contract.PERMIT_KEY_KEY]).decode()
    assert permit_key != token

    server = cluster.operator.permit_server_url
    request = {"requestId": "reader-tries-1", "maxWaitSeconds": 1}
    async with httpx.AsyncClient(timeout=10) as client:

        def headers(bearer: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {bearer}", permits.RUN_HEADER: "pooled"}

        permits_url = server + permits.permits_path(cluster.namespace, "shared")
        penalties_url = server + permits.penalties_path(cluster.namespace, "shared")
        refused = await client.post(permits_url, json=request, headers=headers(token))
        assert refused.status_code == 401, refused.text
        assert refused.json()["reason"] == "Unauthorized"
        penalty = await client.post(penalties_url, json={"retryAfterSeconds": 600}, headers=headers(token))
        assert penalty.status_code == 401, penalty.text
        granted = await client.post(permits_url, json=request, headers=headers(permit_key))
        assert granted.status_code == 201, granted.text
        lease = granted.json()["leaseId"]
        released = await client.delete(
            server + permits.lease_path(cluster.namespace, "shared", lease), headers=headers(permit_key)
        )
        assert released.status_code == 204, released.text

    # The gateway, with its chart rules in this namespace and its real ServiceAccount token.
    gateway = gateway_identity(cluster.testbed.control_plane)
    gateway.grant(cluster.namespace)
    await create_secret(kube, "unrelated", "password", "hunter2")
    control_plane = cluster.testbed.control_plane
    core = f"{control_plane.url}/api/v1/namespaces/{cluster.namespace}/secrets"
    async with httpx.AsyncClient(
        verify=ssl.create_default_context(cafile=str(control_plane.ca_file)),
        headers={"Authorization": f"Bearer {gateway.token()}"},
        timeout=10,
    ) as as_gateway:
        readable = await as_gateway.get(f"{core}/{contract.stream_token_secret_name('pooled')}")
        assert readable.status_code == 200, readable.text
        for name in (contract.permit_key_secret_name("pooled"), "unrelated", "no-such-secret"):
            answer = await as_gateway.get(f"{core}/{name}")
            assert answer.status_code == 403, (name, answer.text)
            assert "hunter2" not in answer.text
        assert (await as_gateway.get(core)).status_code == 403  # no listing either
        other = await as_gateway.get(f"{control_plane.url}/api/v1/namespaces/kube-system/secrets/anything")
        assert other.status_code == 403
