"""MCP tools: the tools of the MCPServers a run uses, called over streamable HTTP with the official
``mcp`` SDK as the client.

The tools offered are those the operator resolved into the runner's config (the server's listing,
narrowed to the names the run allows), so every pod of a run offers the same tools whatever the
server lists meanwhile. Each call carries its idempotency key in the request's ``_meta`` and as the
``Idempotency-Key`` header of the HTTP request that carries it. Each call opens its own session: a
server restarted between calls (or between pods) needs nothing from the runner to recover.
"""

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from agentrun_api.contract import MCPServerConfig, ToolNetwork
from agentrun_api.mcpserver import IDEMPOTENCY_META_KEY, model_tool_name
from agentrun_runner.tools.base import IDEMPOTENCY_HEADER, ToolCall, ToolContext, ToolError, function, register
from agentrun_runner.tools.http_tool import header_values
from agentrun_runner.tools.network import check_host

if TYPE_CHECKING:
    import httpx2


async def _key_as_header(request: "httpx2.Request") -> None:
    """Copy a tools/call's key from its ``_meta`` into the header of the HTTP request carrying it."""
    if request.method != "POST" or not request.content:
        return
    try:
        message = json.loads(request.content)
    except ValueError:
        return
    if isinstance(message, dict) and message.get("method") == "tools/call":
        key = (message.get("params") or {}).get("_meta", {}).get(IDEMPOTENCY_META_KEY)
        if isinstance(key, str):
            request.headers[IDEMPOTENCY_HEADER] = key


def result_text(result: Any) -> str:
    """What the model is shown of a CallToolResult: text parts as they are, other parts described."""
    parts: list[str] = []
    for item in result.content:
        if item.type == "text":
            parts.append(item.text)
        else:
            described = {
                "type": item.type,
                **({"mimeType": item.mime_type} if getattr(item, "mime_type", None) else {}),
            }
            parts.append(json.dumps(described))
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content))
    return "\n".join(parts)


class MCPServerTools:
    """The tools one server offers this run."""

    def __init__(self, server: MCPServerConfig, headers: dict[str, str], network: ToolNetwork) -> None:
        self._server = server
        self._headers = headers
        self._network = network
        self._by_model_name = {model_tool_name(server.name, tool.name): tool.name for tool in server.tools}

    def definitions(self) -> list[dict[str, Any]]:
        return [
            function(
                model_tool_name(self._server.name, tool.name),
                tool.description or f"{tool.name} of the MCP server {self._server.name}",
                tool.input_schema or {"type": "object", "properties": {}},
            )
            for tool in self._server.tools
        ]

    async def call(self, call: ToolCall) -> str:
        # The SDK is imported at a run's first MCP call, not at every runner start: a resumed pod's time to its
        # first model call is mostly imports, and the SDK's are about as many as the runner's own.
        import httpx2
        from mcp import Client
        from mcp.client.streamable_http import streamable_http_client
        from mcp.shared.exceptions import MCPError
        from mcp_types import RequestParamsMeta

        server = self._server
        parts = urlsplit(server.url)
        assert parts.hostname is not None  # the operator admitted only http(s) URLs with a host
        await check_host(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80), self._network)
        http = httpx2.AsyncClient(
            headers=self._headers, timeout=server.timeout_seconds, event_hooks={"request": [_key_as_header]}
        )
        try:
            async with http, Client(streamable_http_client(server.url, http_client=http), mode="auto") as client:
                result = await client.call_tool(
                    self._by_model_name[call.name],
                    call.arguments,
                    meta=cast(RequestParamsMeta, {IDEMPOTENCY_META_KEY: call.key}),
                )
        except MCPError as error:
            raise ToolError(f"the MCP server {server.name} refused the call: {error}") from None
        except httpx2.HTTPError as error:
            raise ToolError(f"the MCP server {server.name} could not be reached: {error}") from None
        text = result_text(result)
        if result.is_error:
            raise ToolError(text or f"the MCP server {server.name} reported an error")
        return text

    async def close(self) -> None:
        return None


class MCPTools:
    def __init__(self, servers: list[MCPServerTools]) -> None:
        self._servers = servers
        self._by_name = {d["function"]["name"]: s for s in servers for d in s.definitions()}

    def definitions(self) -> list[dict[str, Any]]:
        return [definition for server in self._servers for definition in server.definitions()]

    async def call(self, call: ToolCall) -> str:
        return await self._by_name[call.name].call(call)

    async def close(self) -> None:
        return None


def _server_tools(server: MCPServerConfig, env: Mapping[str, str], network: ToolNetwork) -> MCPServerTools:
    return MCPServerTools(server, header_values(server.headers, env, f"MCPServer {server.name}"), network)


@register("mcp")
def mcp_tools(context: ToolContext) -> MCPTools | None:
    config = context.config
    if not config.mcp_servers:
        return None
    return MCPTools([_server_tools(server, context.env, config.tool_network) for server in config.mcp_servers])
