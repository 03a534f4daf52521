"""Pure checks of MCP and HTTP tools: a run's references resolved against MCPServers and the policy,
the credentials as Secret references in the runner's env, the URL template, the address guard."""

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml

from agentrun_api import mcpserver
from agentrun_api.contract import ToolNetwork
from agentrun_api.spec import HttpToolSpec
from agentrun_operator.children import build_job, runner_config
from agentrun_operator.policy import Policy, PolicyViolationError, enforce
from agentrun_operator.run_tools import ToolServerNotReadyError, ToolsInvalidError, resolve
from agentrun_operator.settings import OperatorSettings
from agentrun_runner.tools import ToolError
from agentrun_runner.tools.http_tool import expand
from agentrun_runner.tools.network import refused_because
from tests.harness.runner import make_spec
from tests.unit.test_operator_children import OWNER

pytestmark = pytest.mark.unit

NOW = datetime(2026, 1, 1, tzinfo=UTC)
SECRET_VALUE = "Bearer do-not-leak"


def server(*, ready: bool = True, generation: int = 1, tools: tuple[str, ...] = ("echo", "get-sum")) -> dict[str, Any]:
    return {
        "metadata": {"name": "everything", "generation": generation},
        "spec": {
            "url": "http://mcp.tools.svc:3001/mcp",
            "headers": [{"name": "Authorization", "secretKeyRef": {"name": "mcp-auth", "key": "token"}}],
            "timeout": "20s",
        },
        "status": {
            "ready": ready,
            "observedGeneration": 1,
            "tools": [{"name": name, "description": f"{name} it", "inputSchema": {"type": "object"}} for name in tools],
        },
    }


def spec_with_tools(mcp_tools: list[str] | None = None) -> Any:
    return make_spec(
        "http://model.example/v1",
        tools={
            "mcp": [{"server": "everything", "tools": mcp_tools or ["get-sum"]}],
            "http": [
                {
                    "name": "create_ticket",
                    "description": "Open a ticket.",
                    "urlTemplate": "http://tickets.tools.svc/queues/{queue}/tickets",
                    "headers": [{"name": "X-Api-Key", "secretKeyRef": {"name": "tickets", "key": "key"}}],
                }
            ],
        },
    )


def test_a_run_gets_only_the_tools_it_names_and_their_credentials_as_references() -> None:
    spec = spec_with_tools()
    tools = resolve(spec, {"everything": server()}, Policy())
    (config,) = tools.mcp_servers
    assert [tool.name for tool in config.tools] == ["get-sum"]  # echo is listed but not named by the run
    assert (config.url, config.timeout_seconds) == ("http://mcp.tools.svc:3001/mcp", 20.0)
    settings = OperatorSettings()
    job = build_job(OWNER, spec, settings, deadline=NOW, now=NOW, tools=tools)
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["AGENTRUN_TOOL_CREDENTIAL_0"]["valueFrom"] == {"secretKeyRef": {"name": "mcp-auth", "key": "token"}}
    assert env["AGENTRUN_TOOL_CREDENTIAL_1"]["valueFrom"] == {"secretKeyRef": {"name": "tickets", "key": "key"}}
    rendered = runner_config(OWNER, spec, settings, tools)
    assert rendered.http_tool_headers["create_ticket"][0].env == "AGENTRUN_TOOL_CREDENTIAL_1"
    assert not rendered.tool_network.allow_loopback
    # A run without tools gets no credential env at all.
    plain = build_job(OWNER, make_spec("http://model.example/v1"), settings, deadline=NOW, now=NOW)
    assert not [e for e in plain["spec"]["template"]["spec"]["containers"][0]["env"] if "TOOL" in e["name"]]


def test_a_server_missing_or_not_listed_yet_makes_the_run_wait() -> None:
    spec = spec_with_tools()
    with pytest.raises(ToolServerNotReadyError, match=r"spec.tools.mcp\[0\].server: MCPServer 'everything' not found"):
        resolve(spec, {"everything": None}, Policy())
    with pytest.raises(ToolServerNotReadyError, match="has not listed its tools yet"):
        resolve(spec, {"everything": server(ready=False)}, Policy())
    with pytest.raises(ToolServerNotReadyError, match="has not listed its tools yet"):
        resolve(spec, {"everything": server(generation=2)}, Policy())  # listed for an older spec


def test_a_tool_the_server_does_not_list_is_named_with_what_it_lists() -> None:
    with pytest.raises(
        ToolsInvalidError, match=r"spec.tools.mcp\[0\].tools: .* no tool named 'rm-rf'; it lists: echo, get-sum"
    ):
        resolve(spec_with_tools(["rm-rf"]), {"everything": server()}, Policy())


def test_tool_hosts_are_checked_against_the_platform_allow_list() -> None:
    policy = Policy.from_env(
        {"AGENTRUN_POLICY_ALLOWED_TOOL_HOSTS": "*.tools.svc", "AGENTRUN_POLICY_ALLOW_TOOL_LOOPBACK": "true"}
    )
    assert policy.allow_tool_loopback
    spec = spec_with_tools()
    enforce(spec, policy)
    resolve(spec, {"everything": server()}, policy)
    narrow = Policy(allowed_tool_hosts=("tickets.tools.svc",))
    enforce(spec, narrow)
    with pytest.raises(
        PolicyViolationError, match=r"MCPServer everything spec.url: host 'mcp.tools.svc' is not an allowed tool host"
    ):
        resolve(spec, {"everything": server()}, narrow)
    with pytest.raises(PolicyViolationError, match=r"spec.tools.http\[0\].urlTemplate: host 'tickets.tools.svc'"):
        enforce(spec, Policy(allowed_tool_hosts=()))


def test_an_argument_may_not_choose_the_host() -> None:
    with pytest.raises(ValueError, match="placeholders may appear only in the path and query"):
        HttpToolSpec.model_validate({"name": "t", "description": "d", "urlTemplate": "http://{host}.example/x"})
    url, rest = expand("http://svc/queues/{queue}/tickets", {"queue": "a/../b c", "title": "t"})
    assert url == "http://svc/queues/a%2F..%2Fb%20c/tickets"
    assert rest == {"title": "t"}
    with pytest.raises(ToolError, match="missing argument"):
        expand("http://svc/queues/{queue}", {})


@pytest.mark.parametrize(
    ("address", "allow_loopback", "refused"),
    [
        ("169.254.169.254", True, "link-local"),
        ("fe80::1", True, "link-local"),
        ("127.0.0.1", False, "loopback"),
        ("::1", False, "loopback"),
        ("::ffff:127.0.0.1", False, "loopback"),
        ("127.0.0.1", True, None),
        ("10.0.0.7", False, None),
        ("0.0.0.0", True, "not a unicast"),
    ],
)
def test_link_local_is_always_refused_and_loopback_unless_allowed(
    address: str, allow_loopback: bool, refused: str | None
) -> None:
    reason = refused_because(address, ToolNetwork(allow_loopback=allow_loopback))
    assert (reason is None) if refused is None else (reason is not None and refused in reason)


def test_the_mcpserver_example_is_a_valid_server() -> None:
    body = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples" / "mcpserver.yaml").read_text())
    assert body["kind"] == mcpserver.KIND
    spec = mcpserver.MCPServerSpec.model_validate(body["spec"])
    assert spec.headers[0].secret_key_ref.name == "github-mcp"
    with pytest.raises(pydantic.ValidationError, match="url"):
        mcpserver.MCPServerSpec.model_validate({**body["spec"], "url": "ftp://x"})
