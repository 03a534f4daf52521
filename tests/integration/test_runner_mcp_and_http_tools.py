"""MCP and HTTP tools in the runner, against a third-party MCP server run as a real server
(@modelcontextprotocol/server-everything, streamable HTTP) behind a recording proxy, and an HTTP
service: each call carries its key (MCP ``_meta`` and header, ``Idempotency-Key``), credentials come
from the runner's env, results are bounded with a note, and loopback is refused unless allowed."""

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agentrun_api.contract import HeaderFromEnv, MCPServerConfig, Outcome, RunnerConfig, ToolNetwork
from agentrun_api.mcpserver import MCPServerSpec
from agentrun_operator.mcp_listing import list_tools
from tests.harness.model_server import Answer, ModelServer, by_turn, call
from tests.harness.runner import make_config, make_spec, run_in_process
from tests.harness.tool_servers import EverythingServer, RecordingMCPProxy, TicketService

pytestmark = pytest.mark.integration

UID = "5eed-uid"
MCP_TOKEN = "Bearer mcp-test-token"
TICKETS_KEY = "tickets-test-key"
LONG = "x" * 500


@dataclass
class Far:
    proxy: RecordingMCPProxy
    tickets: TicketService


@pytest.fixture
async def far() -> AsyncIterator[Far]:
    async with (
        EverythingServer() as everything,
        RecordingMCPProxy(everything.url) as proxy,
        TicketService(TICKETS_KEY) as tickets,
    ):
        yield Far(proxy, tickets)


async def config_for(far: Far, model_url: str, tmp_path: Path, *, allow_loopback: bool) -> RunnerConfig:
    # The operator's own listing code, against the real server: what the run is offered.
    listed = await list_tools(MCPServerSpec(url=far.proxy.url), {"Authorization": MCP_TOKEN})
    chosen = [tool for tool in listed if tool.name in ("echo", "get-sum")]
    spec = make_spec(
        model_url,
        tools={
            "http": [
                {
                    "name": "open_ticket",
                    "description": "Open a ticket in a queue.",
                    "urlTemplate": far.tickets.url_template(),
                    "parameters": {
                        "type": "object",
                        "properties": {"queue": {"type": "string"}, "title": {"type": "string"}},
                        "required": ["queue", "title"],
                    },
                }
            ]
        },
    )
    header = HeaderFromEnv(name="Authorization", env="AGENTRUN_TOOL_CREDENTIAL_0", secret_name="s", secret_key="k")
    ticket_header = HeaderFromEnv(name="X-Api-Key", env="AGENTRUN_TOOL_CREDENTIAL_1", secret_name="t", secret_key="k")
    return make_config(spec, tmp_path, uid=UID).model_copy(
        update={
            "mcp_servers": [
                MCPServerConfig(
                    name="everything", url=far.proxy.url, timeout_seconds=10, headers=[header], tools=chosen
                )
            ],
            "http_tool_headers": {"open_ticket": [ticket_header]},
            "tool_network": ToolNetwork(allow_loopback=allow_loopback),
        }
    )


@pytest.fixture(autouse=True)
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTRUN_TOOL_CREDENTIAL_0", MCP_TOKEN)
    monkeypatch.setenv("AGENTRUN_TOOL_CREDENTIAL_1", TICKETS_KEY)


def outputs(messages: list[dict[str, object]]) -> dict[str, str]:
    return {str(m["tool_call_id"]): str(m["content"]) for m in messages if m["role"] == "tool"}


async def test_mcp_and_http_tools_carry_their_keys_and_credentials(far: Far, tmp_path: Path) -> None:
    script = by_turn(
        [
            Answer(
                tool_calls=[
                    call("everything__get-sum", a=2, b=3),
                    call("open_ticket", queue="ops", title="disk full"),
                ]
            ),
            Answer(tool_calls=[call("everything__echo", message=LONG)]),
            Answer("done"),
        ]
    )
    async with ModelServer(script) as model:
        config = await config_for(far, model.base_url, tmp_path, allow_loopback=True)
        run = await run_in_process(config, tmp_path, max_tool_output_chars=200)

    assert run.progress.outcome is Outcome.SUCCEEDED
    offered = {tool["function"]["name"] for tool in model.requests[0].body["tools"]}
    assert {"everything__get-sum", "everything__echo", "open_ticket"} <= offered
    assert "everything__get-env" not in offered  # listed by the server, not chosen for the run
    results = outputs(run.state.messages)
    assert results["call_0_0"] == "The sum of 2 and 3 is 5."
    assert json.loads(results["call_0_1"])["body"] == json.dumps({"ticket": "ops/disk full", "opened": True})
    assert results["call_1_0"].startswith("Echo: xxx")
    assert results["call_1_0"].endswith("[cut: the result had 506 characters; only the first 200 are shown]")
    # Each key once at the far side, in _meta and as the header alike, with the run's credentials.
    assert far.proxy.keys_of(UID) == {f"{UID}:1:0": 1, f"{UID}:2:0": 1}
    assert far.proxy.header_mismatches == []
    assert far.proxy.authorizations == {MCP_TOKEN}
    assert far.tickets.executions == {f"{UID}:1:1": 1}
    assert far.tickets.unauthorized == 0


async def test_loopback_is_refused_unless_the_policy_allows_it(far: Far, tmp_path: Path) -> None:
    script = by_turn(
        [
            Answer(tool_calls=[call("everything__get-sum", a=2, b=3), call("open_ticket", queue="ops", title="t")]),
            Answer("done"),
        ]
    )
    async with ModelServer(script) as model:
        config = await config_for(far, model.base_url, tmp_path, allow_loopback=False)
        run = await run_in_process(config, tmp_path)

    assert run.progress.outcome is Outcome.SUCCEEDED
    for output in outputs(run.state.messages).values():
        assert output.startswith("error: 127.0.0.1 resolves to 127.0.0.1 is a loopback address"), output
    assert far.proxy.deliveries == {}
    assert far.tickets.deliveries == {}
