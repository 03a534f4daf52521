"""What MCP and HTTP tools a run gets, on the operator's side.

- ``resolve``: a run's spec.tools.mcp references, checked against each MCPServer's listed tools and the
  platform's policy, become the runner's ``MCPServerConfig``s; the header Secrets of those servers and of
  the run's HTTP tools become env vars of the runner (references only: the kubelet reads the values).
- ``run_tools``: what a run was given, read back from its runner-config ConfigMap, so a Job made again
  after a pod or Job loss offers exactly the tools the first one did (a server listing more tools
  meanwhile must not change a run's conversation half-way).
The servers' listings come from ``mcp_listing``.
"""

import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pydantic

from agentrun_api import contract, mcpserver
from agentrun_api.mcpserver import MODEL_TOOL_NAME_PATTERN, MCPServerSpec, MCPServerStatus
from agentrun_api.spec import AgentRunSpec, HeaderFromSecret
from agentrun_common.durations import parse_duration
from agentrun_common.kube.client import ApiError
from agentrun_operator.kube import KubeClient
from agentrun_operator.policy import Policy

log = logging.getLogger(__name__)
_MODEL_TOOL_NAME = re.compile(MODEL_TOOL_NAME_PATTERN)


class ToolServerNotReadyError(Exception):
    """A server the run names is missing or has not been listed yet: the run waits for it."""


class ToolsInvalidError(ValueError):
    """The run asks for a tool its server does not list: the message names the field and the fix."""


@dataclass(frozen=True)
class RunTools:
    """The MCP servers and HTTP tool headers a run was given."""

    mcp_servers: tuple[contract.MCPServerConfig, ...] = ()
    http_tool_headers: Mapping[str, tuple[contract.HeaderFromEnv, ...]] = field(default_factory=dict)

    def headers(self) -> Iterator[contract.HeaderFromEnv]:
        for server in self.mcp_servers:
            yield from server.headers
        for headers in self.http_tool_headers.values():
            yield from headers

    def env(self) -> list[dict[str, Any]]:
        """The runner's env entries of the tool credentials, by Secret reference only."""
        return [
            {"name": h.env, "valueFrom": {"secretKeyRef": {"name": h.secret_name, "key": h.secret_key}}}
            for h in self.headers()
        ]


NO_TOOLS = RunTools()


class _Numbering:
    def __init__(self) -> None:
        self.next = 0

    def headers(self, headers: list[HeaderFromSecret]) -> tuple[contract.HeaderFromEnv, ...]:
        out = []
        for header in headers:
            out.append(
                contract.HeaderFromEnv(
                    name=header.name,
                    env=contract.tool_credential_env(self.next),
                    secret_name=header.secret_key_ref.name,
                    secret_key=header.secret_key_ref.key,
                )
            )
            self.next += 1
        return tuple(out)


def resolve(spec: AgentRunSpec, servers: Mapping[str, Mapping[str, Any] | None], policy: Policy) -> RunTools:
    """The tools a run gets, from the MCPServer objects it names (None: not found). Raises
    ToolServerNotReadyError (wait), ToolsInvalidError or PolicyViolationError (fail)."""
    numbering = _Numbering()
    configs = []
    for index, ref in enumerate(spec.tools.mcp):
        field_name = f"spec.tools.mcp[{index}]"
        body = servers.get(ref.server)
        if body is None:
            raise ToolServerNotReadyError(f"{field_name}.server: MCPServer {ref.server!r} not found")
        server_spec = MCPServerSpec.model_validate(body.get("spec") or {})
        policy.check_tool_url(server_spec.url, f"{field_name}: MCPServer {ref.server} spec.url")
        status = MCPServerStatus.model_validate(body.get("status") or {})
        generation = int((body.get("metadata") or {}).get("generation") or 0)
        if not status.ready or status.observed_generation != generation:
            detail = f": {status.message}" if status.message else ""
            raise ToolServerNotReadyError(
                f"{field_name}.server: MCPServer {ref.server!r} has not listed its tools yet{detail}"
            )
        listed = {tool.name: tool for tool in status.tools}
        unknown = [name for name in ref.tools if name not in listed]
        if unknown:
            raise ToolsInvalidError(
                f"{field_name}.tools: MCPServer {ref.server!r} lists no tool named {', '.join(map(repr, unknown))}; "
                f"it lists: {', '.join(sorted(listed)) or 'none'}"
            )
        for name in ref.tools:
            model_name = mcpserver.model_tool_name(ref.server, name)
            if not _MODEL_TOOL_NAME.match(model_name):
                raise ToolsInvalidError(
                    f"{field_name}.tools: {name!r} cannot be offered to a model as {model_name!r} (at most 64 "
                    "letters, digits, '_' or '-'); use a shorter MCPServer name or leave the tool out"
                )
        configs.append(
            contract.MCPServerConfig(
                name=ref.server,
                url=server_spec.url,
                timeout_seconds=parse_duration(server_spec.timeout),
                headers=list(numbering.headers(server_spec.headers)),
                tools=[listed[name] for name in ref.tools],
            )
        )
    http_headers = {tool.name: numbering.headers(tool.headers) for tool in spec.tools.http if tool.headers}
    names = [tool.name for tool in spec.tools.http]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ToolsInvalidError(f"spec.tools.http: two tools are named {', '.join(duplicates)}; names must differ")
    return RunTools(mcp_servers=tuple(configs), http_tool_headers=http_headers)


async def fetch_servers(kube: KubeClient, namespace: str, spec: AgentRunSpec) -> dict[str, dict[str, Any] | None]:
    found: dict[str, dict[str, Any] | None] = {}
    for ref in spec.tools.mcp:
        try:
            found[ref.server] = await kube.get(mcpserver.KIND, namespace, ref.server)
        except ApiError as error:
            if not error.not_found:
                raise
            found[ref.server] = None
    return found


async def run_tools(kube: KubeClient, namespace: str, run: str, spec: AgentRunSpec, policy: Policy) -> RunTools:
    """The tools the run was given (its runner-config ConfigMap), or resolved afresh when it has none yet."""
    if not spec.tools.mcp and not any(tool.headers for tool in spec.tools.http):
        return NO_TOOLS
    try:
        config_map = await kube.get("ConfigMap", namespace, contract.runner_config_name(run))
    except ApiError as error:
        if not error.not_found:
            raise
    else:
        raw = (config_map.get("data") or {}).get(contract.CONFIG_FILE)
        if raw:
            try:
                given = contract.RunnerConfig.model_validate_json(raw)
            except pydantic.ValidationError:
                log.warning("run %s/%s: its runner config does not parse; resolving its tools again", namespace, run)
            else:
                return RunTools(
                    mcp_servers=tuple(given.mcp_servers),
                    http_tool_headers={name: tuple(h) for name, h in given.http_tool_headers.items()},
                )
    return resolve(spec, await fetch_servers(kube, namespace, spec), policy)
