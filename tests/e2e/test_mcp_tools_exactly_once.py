"""Tools that act exactly once, on the real control plane: a run calls a third-party MCP server
(@modelcontextprotocol/server-everything, declared as an MCPServer the operator lists) and an HTTP tool,
and loses its runner three times: twice while a call is in flight (once the MCP call, once the HTTP
call), once during a model call. It ends with the same conversation as an uninterrupted run, and at the
far side (a recording proxy in front of the MCP server, the HTTP service itself) every key arrived once,
except the two in flight at a kill, which arrived twice with the same key."""

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from agentrun_api import mcpserver
from tests.e2e.runs import condition, conversation, runner_logs
from tests.harness.agentruns import (
    agent_run,
    agentruns_path,
    requests_of,
    runner_pods,
    wait_for,
    wait_for_end,
    wait_for_status,
)
from tests.harness.local_cluster import LocalCluster, free_port
from tests.harness.model_server import Answer, by_turn, call
from tests.harness.nodeagent.kube import JsonObject, KubeClient, namespaced_path
from tests.harness.testbed import KubeTestbed
from tests.harness.tool_servers import EverythingServer, RecordingMCPProxy, TicketService, needs_everything_server

pytestmark = pytest.mark.e2e

MCP_TOKEN = "Bearer e2e-mcp-token"
TICKETS_KEY = "e2e-tickets-key"
HOLD = 2.0  # seconds the far side holds the call a kill lands in
FINAL = "Filed: ops/first and ops-held/second; 2 + 3 is 5."
SCRIPT = by_turn(
    [
        Answer(
            tool_calls=[call("everything__echo", message="hello"), call("open_ticket", queue="ops", title="first")],
            delay=0.2,
        ),
        Answer(tool_calls=[call("everything__get-sum", a=2, b=3)], delay=0.2),  # held: kill 1
        Answer(tool_calls=[call("open_ticket", queue="ops-held", title="second")], delay=0.2),  # held: kill 2
        Answer(tool_calls=[call("write_file", path="report.md", content=FINAL)], delay=HOLD),  # kill 3
        Answer(FINAL, delay=0.2),
    ]
)


def tooled_run(
    name: str,
    cluster: LocalCluster,
    tickets: TicketService,
    mcp: tuple[str, list[str]] = ("everything", ["echo", "get-sum"]),
) -> JsonObject:
    return agent_run(
        name,
        cluster,
        tools={
            "mcp": [{"server": mcp[0], "tools": mcp[1]}],
            "http": [
                {
                    "name": "open_ticket",
                    "description": "Open a ticket in a queue.",
                    "method": "POST",
                    "urlTemplate": tickets.url_template(),
                    "parameters": {
                        "type": "object",
                        "properties": {"queue": {"type": "string"}, "title": {"type": "string"}},
                        "required": ["queue", "title"],
                    },
                    "headers": [{"name": "X-Api-Key", "secretKeyRef": {"name": "tickets", "key": "key"}}],
                }
            ],
        },
        retries={"maxRestarts": 5},
        maxExecutionTime="5m",  # a lost pod is replaced after the Job controller's back-off (10 s, 20 s, 40 s)
        streaming={"enabled": False},
        checkpoint={"store": "PersistentVolumeClaim"},
    )


async def secret(kube: KubeClient, namespace: str, name: str, data: dict[str, str]) -> None:
    body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data}
    await kube.create(namespaced_path("v1", "secrets", namespace), body)


async def kill_when(cluster: LocalCluster, kube: KubeClient, run: str, ready: Callable[[], bool], what: str) -> None:
    """SIGKILL the run's live runner once ``ready()`` holds."""

    async def live_pod() -> str | None:
        if not ready():
            return None
        for pod in await runner_pods(kube, run):
            name = pod["metadata"]["name"]
            if (
                pod["status"].get("phase") == "Running"
                and cluster.node.runtime(cluster.namespace, name).exit_code is None
            ):
                return str(name)
        return None

    pod = await wait_for(live_pod, what, timeout=60)
    cluster.node.kill_pod_process(cluster.namespace, pod)


@pytest.mark.timeout(420)
async def test_a_run_killed_three_times_calls_each_tool_once_and_ends_as_an_uninterrupted_run(
    testbed: KubeTestbed, tmp_path: Path
) -> None:
    needs_everything_server()
    policy = {"AGENTRUN_POLICY_ALLOWED_TOOL_HOSTS": "127.0.0.1", "AGENTRUN_POLICY_ALLOW_TOOL_LOOPBACK": "true"}
    async with (
        EverythingServer() as everything,
        RecordingMCPProxy(everything.url, hold_first_call={"get-sum": HOLD}) as proxy,
        TicketService(TICKETS_KEY, hold_first_call=HOLD, hold_queue="ops-held") as tickets,
        LocalCluster(testbed, tmp_path, model_script=SCRIPT, operator_env=policy) as cluster,
        KubeClient(str(cluster.kubeconfig_path)) as kube,
    ):
        if cluster.model.real:
            pytest.skip("needs the scripted model's tool calls; a real endpoint (OPENAI_BASE_URL) is set")
        assert cluster.model_server is not None
        ns = cluster.namespace
        await cluster.create_model_secret("model-key", "api-key")
        await secret(kube, ns, "mcp-auth", {"token": MCP_TOKEN})
        await secret(kube, ns, "tickets", {"key": TICKETS_KEY})
        servers = namespaced_path("agentrun.dev/v1alpha1", mcpserver.PLURAL, ns)
        await kube.create(
            servers,
            {
                "apiVersion": "agentrun.dev/v1alpha1",
                "kind": mcpserver.KIND,
                "metadata": {"name": "everything"},
                "spec": {
                    "url": proxy.url,
                    "headers": [{"name": "Authorization", "secretKeyRef": {"name": "mcp-auth", "key": "token"}}],
                },
            },
        )

        # A server that does not answer: its status says why, and runs naming it would wait.
        await kube.create(
            servers,
            {
                "apiVersion": "agentrun.dev/v1alpha1",
                "kind": mcpserver.KIND,
                "metadata": {"name": "down"},
                "spec": {"url": f"http://127.0.0.1:{free_port()}/mcp", "timeout": "2s"},
            },
        )

        async def listed() -> JsonObject | None:
            found = await kube.get(f"{servers}/everything")
            return found if found and (found.get("status") or {}).get("ready") else None

        server = await wait_for(listed, "the operator to list the MCP server's tools", timeout=30)
        assert {"echo", "get-sum"} <= {tool["name"] for tool in server["status"]["tools"]}

        runs = agentruns_path(ns)
        # A tool the server does not list fails the run at admission; a server not declared makes it wait.
        await kube.create(runs, tooled_run("unknown-tool", cluster, tickets, ("everything", ["get-sum", "rm-rf"])))
        await kube.create(runs, tooled_run("no-server", cluster, tickets, ("absent", ["get-sum"])))
        reference = await kube.create(runs, tooled_run("calm", cluster, tickets))
        killed = await kube.create(runs, tooled_run("killed", cluster, tickets))
        uid, reference_uid = killed["metadata"]["uid"], reference["metadata"]["uid"]

        def held(far: RecordingMCPProxy | TicketService) -> Callable[[], bool]:
            # The held call only: a quick call caught in flight by chance would move the kill off it.
            return lambda: any(key.startswith(f"{uid}:") for key in far.holding)

        def model_turn(turn: int) -> Callable[[], bool]:
            assert cluster.model_server is not None
            model = cluster.model_server
            return lambda: any(r.turn == turn for r in requests_of(model, "killed"))

        await kill_when(cluster, kube, "killed", held(proxy), "the MCP call get-sum in flight")
        await kill_when(cluster, kube, "killed", held(tickets), "the HTTP call in flight")
        await kill_when(cluster, kube, "killed", model_turn(3), "the fourth model call in flight")

        down = await kube.get(f"{servers}/down")
        assert down is not None
        assert down["status"]["ready"] is False, down
        assert "ConnectError" in down["status"]["message"] or "connect" in down["status"]["message"].lower(), down

        refused = await wait_for_end(kube, "unknown-tool")
        assert refused["phase"] == "Failed", refused
        assert "spec.tools.mcp[0].tools: MCPServer 'everything' lists no tool named 'rm-rf'" in refused["message"]
        waiting = await wait_for_status(
            kube, "no-server", lambda s: (condition(s, "Accepted") or {}).get("reason") == "MCPServerNotReady", "wait"
        )
        assert "MCPServer 'absent' not found" in waiting["message"], waiting

        calm = await wait_for_end(kube, "calm", timeout=90)
        status = await wait_for_end(kube, "killed", timeout=240)
        assert calm["phase"] == "Succeeded", (calm, runner_logs(cluster))
        assert status["phase"] == "Succeeded", (status, runner_logs(cluster))
        assert status["restarts"] == 3, status
        assert status["result"]["summary"] == FINAL

        # The same conversation as the uninterrupted run: same calls, same results, same order.
        model = cluster.model_server
        assert conversation(model, "killed", uid) == conversation(model, "calm", reference_uid)

        mcp_keys, http_keys = proxy.keys_of(uid), tickets.keys_of(uid)
        get_sum_key = next(k for k in mcp_keys if proxy.tools_of_key[k] == "get-sum")
        held_ticket_key = f"{uid}:3:0"
        # Once each, but the two calls a kill caught in flight: re-sent once, with the same key.
        assert mcp_keys == {f"{uid}:1:0": 1, get_sum_key: 2}, mcp_keys
        assert get_sum_key == f"{uid}:2:0"
        assert http_keys == {f"{uid}:1:1": 1, held_ticket_key: 2}, http_keys
        executions = {k: n for k, n in tickets.executions.items() if k.startswith(f"{uid}:")}
        assert executions == {f"{uid}:1:1": 1, held_ticket_key: 1}  # the service answered the repeat, once
        # The uninterrupted run: every key exactly once.
        assert set(proxy.keys_of(reference_uid).values()) == {1}
        assert set(tickets.keys_of(reference_uid).values()) == {1}
        assert proxy.header_mismatches == []
        assert proxy.authorizations == {MCP_TOKEN}
        assert tickets.unauthorized == 0
        # Credentials travel as Secret references into the runner's env only.
        job = await kube.get(namespaced_path("batch/v1", "jobs", ns, "killed-runner"))
        assert job is not None
        assert MCP_TOKEN not in json.dumps(job)
        assert TICKETS_KEY not in json.dumps(job)
        config = await kube.get(namespaced_path("v1", "configmaps", ns, "killed-runner-config"))
        assert config is not None
        assert MCP_TOKEN not in json.dumps(config)
        print(
            f"\nkilled 3 times: MCP deliveries per key {mcp_keys}, HTTP deliveries per key {http_keys}, "
            f"HTTP executions per key {executions}; conversation ({len(conversation(model, 'killed', uid))} messages) equals "
            "the uninterrupted run's"
        )
