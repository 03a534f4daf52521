"""Approving and denying waiting tool calls through the runs API, on the real control plane over real HTTP: the
run view shows the waiting call, RBAC on agentrunapprovals (not on agentruns) decides who may decide, the
decision is recorded in the approver's name with the gateway as its recorder, and the approval admission policy
lets nobody else write a decision in another user's name.

The model is scripted: it calls http_fetch on the test's tool server (which counts executions per Idempotency-Key),
then answers."""

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentrun_api import approval
from agentrun_api.constants import API_VERSION, GROUP
from tests.e2e.runs import fetching_run, local_cluster
from tests.harness.agentruns import requests_of, wait_for_end
from tests.harness.identities import GATEWAY_ACCOUNT, SYSTEM_NAMESPACE, gateway_identity
from tests.harness.model_server import Answer, Script, by_turn, call
from tests.harness.nodeagent.kube import KubeClient
from tests.harness.runner import ToolServer
from tests.harness.runs_api import runs_api, service_account_caller
from tests.harness.testbed import KubeTestbed

pytestmark = pytest.mark.e2e

FINAL = "The change is deployed."
SEE_RUNS = {"apiGroups": [GROUP], "resources": ["agentruns"], "verbs": ["get", "list", "watch"]}
DECIDE = {"apiGroups": [GROUP], "resources": ["agentrunapprovals"], "verbs": ["create", "get", "list"]}
AUTHOR = {"apiGroups": [GROUP], "resources": ["agentruns"], "verbs": ["get", "list", "create", "patch"]}
GATEWAY_USER = f"system:serviceaccount:{SYSTEM_NAMESPACE}:{GATEWAY_ACCOUNT}"


def gated_script(tools: ToolServer) -> Script:
    return by_turn([Answer(tool_calls=[call("http_fetch", url=tools.url("deploy/prod"))]), Answer(FINAL)])


@pytest.fixture
async def tools() -> AsyncIterator[ToolServer]:
    async with ToolServer() as server:
        yield server


async def waiting_view(client: httpx.AsyncClient, location: str, timeout: float = 60.0) -> dict[str, Any]:
    """The run as the API shows it once it waits for approval (polled as its Retry-After asks, scaled down)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        answer = await client.get(location)
        assert answer.status_code == 200, answer.text
        view: dict[str, Any] = answer.json()
        if view["phase"] == "WaitingForApproval" and view["approvals"]:
            return view
        assert view["phase"] not in ("Succeeded", "Failed", "TimedOut", "Cancelled"), view
        await asyncio.sleep(0.3)
    raise AssertionError(f"{location} did not wait for approval within {timeout}s")


async def test_an_approver_decides_through_the_runs_api_in_their_own_name_and_the_run_resumes(
    testbed: KubeTestbed, tmp_path: Path, tools: ToolServer
) -> None:
    async with local_cluster(testbed, tmp_path / "cluster", gated_script(tools)) as cluster:
        namespace = cluster.namespace
        approver, approver_token = service_account_caller(testbed, namespace, "approver", [SEE_RUNS, DECIDE])
        _author, author_token = service_account_caller(testbed, namespace, "author", [AUTHOR])
        _stranger, stranger_token = service_account_caller(testbed, namespace, "stranger", [])
        gate = {"tools": ["http_fetch"]}
        async with (
            runs_api(testbed, [namespace], tmp_path / "gateway") as api,
            api.client(author_token) as as_author,
            api.client(approver_token) as as_approver,
            api.client(stranger_token) as as_stranger,
            api.client(api.new_api_key(namespace)) as as_key,
            KubeClient(str(cluster.kubeconfig_path)) as kube,
        ):
            locations = {}
            for name in ("deploy", "frozen"):
                spec = fetching_run(name, cluster, checkpoint={"store": "ConfigMap"}, approvals=gate)["spec"]
                submitted = await as_author.post(f"/v1/namespaces/{namespace}/runs", json={"spec": spec})
                assert submitted.status_code == 202, submitted.text
                locations[name] = submitted.headers["Location"]

            # The run view shows the waiting call: which tool, its arguments, since when, and where to decide.
            view = await waiting_view(as_approver, locations["deploy"])
            [waiting] = view["approvals"]
            assert waiting["tool"] == "http_fetch"
            assert tools.url("deploy/prod") in waiting["arguments"]
            assert waiting["requestedAt"]
            assert waiting["decision"] == ""
            key = waiting["call"]
            assert waiting["links"]["approve"] == f"{locations['deploy']}/approvals/{key}/approve"
            tail = ":".join(key.split(":")[1:])

            # Refused: the author (no RBAC on agentrunapprovals), an API key, and, as if the run did not exist,
            # a caller who may not see it. Nothing is recorded.
            refused = await as_author.post(waiting["links"]["approve"], json={"reason": "my own run"})
            assert refused.status_code == 403, refused.text
            assert refused.json()["error"]["code"] == "NotAnApprover"
            assert "create on agentrunapprovals.agentrun.dev" in refused.json()["error"]["fix"]
            by_key = await as_key.post(waiting["links"]["approve"])
            assert by_key.status_code == 403, by_key.text
            assert by_key.json()["error"]["code"] == "ApproverMustBeAUser"
            unseen = await as_stranger.post(waiting["links"]["approve"])
            assert unseen.status_code == 404, unseen.text
            assert unseen.json()["error"]["code"] == "NotFound"
            unknown = await as_approver.post(f"{locations['deploy']}/approvals/9:9/approve")
            assert unknown.status_code == 404
            assert unknown.json()["error"]["code"] == "CallNotFound"
            assert key in unknown.json()["error"]["message"]  # names the calls that do wait

            # The approver decides by the call's ITERATION:INDEX tail; the decision is recorded in their name.
            approved = await as_approver.post(
                f"{locations['deploy']}/approvals/{tail}/approve", json={"reason": "change 42"}
            )
            assert approved.status_code == 200, approved.text
            record = approved.json()
            assert (record["call"], record["decision"], record["decidedBy"], record["reason"]) == (
                key,
                "Approved",
                approver,
                "change 42",
            )
            assert "Idempotent-Replayed" not in approved.headers
            again = await as_approver.post(waiting["links"]["approve"], json={"reason": "change 42"})
            assert again.status_code == 200, again.text
            assert again.headers["Idempotent-Replayed"] == "true"
            assert again.json()["decidedBy"] == approver
            otherwise = await as_approver.post(waiting["links"]["deny"])
            assert otherwise.status_code == 409, otherwise.text
            assert f"already approved by {approver}" in otherwise.json()["error"]["message"]

            stored = await kube.get(
                f"/apis/{API_VERSION}/namespaces/{namespace}/{approval.PLURAL}/{record['approval']}"
            )
            assert stored is not None
            assert stored["spec"]["decidedBy"] == approver
            assert stored["spec"]["recordedBy"] == GATEWAY_USER

            # Deny with a reason: the model reads it as the call's result.
            frozen = await waiting_view(as_approver, locations["frozen"])
            denied = await as_approver.post(
                frozen["approvals"][0]["links"]["deny"], json={"reason": "production is frozen"}
            )
            assert denied.status_code == 200, denied.text
            assert denied.json()["decision"] == "Denied"

            deploy_name, frozen_name = (location.rsplit("/", 1)[1] for location in locations.values())
            ended = await wait_for_end(kube, deploy_name, timeout=90)
            assert ended["phase"] == "Succeeded", ended
            assert ended["result"]["summary"] == FINAL
            [decided] = ended["approvals"]
            assert (decided["decision"], decided["decidedBy"]) == ("Approved", approver)
            assert dict(tools.executions) == {key: 1}  # executed once, after the decision; the denied one never

            ended = await wait_for_end(kube, frozen_name, timeout=90)
            assert ended["phase"] == "Succeeded", ended
            assert cluster.model_server is not None
            messages = requests_of(cluster.model_server, "frozen")[-1].messages  # the name in its input
            [denial] = [m for m in messages if m.get("role") == "tool"]
            assert denial["content"] == (
                f"the call to http_fetch was denied by {approver}: production is frozen. It was not executed."
            )
            finished = await as_approver.get(locations["frozen"])
            assert finished.json()["approvals"][0]["decidedBy"] == approver


async def test_only_a_creator_holding_the_record_verb_writes_a_decision_in_another_users_name(
    testbed: KubeTestbed, namespace: str
) -> None:
    """The admission policy, straight against the API server: the gateway's ServiceAccount cannot pass off a
    decision as another user's without saying it recorded it, and nobody without the record verb can record."""
    gateway = gateway_identity(testbed.control_plane)
    gateway.grant(namespace)
    approver, approver_token = service_account_caller(testbed, namespace, "approver", [DECIDE])
    path = f"/apis/{API_VERSION}/namespaces/{namespace}/{approval.PLURAL}"

    def attempt(token: str, name: str, **spec: str) -> httpx.Response:
        body = {
            "apiVersion": API_VERSION,
            "kind": approval.KIND,
            "metadata": {"name": name},
            "spec": {"run": "deploy", "call": f"0f0f:1:{name[-1]}", "decision": "Approve", **spec},
        }
        with httpx.Client(
            base_url=testbed.control_plane.url,
            verify=ssl.create_default_context(cafile=str(testbed.control_plane.ca_file)),
            headers={"Authorization": f"Bearer {token}"},
        ) as client:
            return client.post(path, json=body)

    gateway_token = gateway.token()
    # The gateway's ServiceAccount, writing another user's name as the decider without recording itself.
    unrecorded = attempt(gateway_token, "forged-1", decidedBy="the-boss")
    assert unrecorded.status_code in (403, 422), unrecorded.text
    assert "spec.decidedBy must be the user creating the approval" in unrecorded.text
    # An approver (create on agentrunapprovals, but not record) claiming to record for someone else ...
    self_recorded = attempt(approver_token, "forged-2", decidedBy="the-boss", recordedBy=approver)
    assert self_recorded.status_code in (403, 422), self_recorded.text
    assert f"holding the RBAC verb {approval.RECORD_VERB}" in self_recorded.text
    # ... or passing it off as recorded by the gateway.
    as_gateway = attempt(approver_token, "forged-3", decidedBy="the-boss", recordedBy=GATEWAY_USER)
    assert as_gateway.status_code in (403, 422), as_gateway.text
    assert "spec.recordedBy must be the user creating the approval" in as_gateway.text
    # The gateway naming someone else as the recorder.
    other_recorder = attempt(gateway_token, "forged-4", decidedBy="the-boss", recordedBy=approver)
    assert other_recorder.status_code in (403, 422), other_recorder.text
    # What the runs API writes: its caller as the decider, itself as the recorder, and it holds the verb.
    recorded = attempt(gateway_token, "fine-5", decidedBy=approver, recordedBy=GATEWAY_USER)
    assert recorded.status_code == 201, recorded.text
    # And an approver deciding in their own name, as kubectl does, still works.
    own = attempt(approver_token, "fine-6", decidedBy=approver)
    assert own.status_code == 201, own.text
