"""HTTP tools: endpoints the run's spec declares (spec.tools.http), each offered as one tool.

A call fills the URL template's ``{placeholders}`` with its arguments (URL-encoded) and sends the
rest as the JSON body (as the query for GET and DELETE), with the call's key as ``Idempotency-Key``
so the service can recognise a call re-sent after a pod loss. Redirects are not followed (the model
is told where it pointed); the response body is cut at the tool's maxResponseBytes.
"""

import json
import string
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp

from agentrun_api.contract import HeaderFromEnv, ToolNetwork
from agentrun_api.spec import HttpToolSpec
from agentrun_runner.tools.base import IDEMPOTENCY_HEADER, ToolCall, ToolContext, ToolError, function, register
from agentrun_runner.tools.http_fetch import read_at_most
from agentrun_runner.tools.network import check_host, guarded_session

_BODYLESS = ("GET", "DELETE")


def header_values(headers: list[HeaderFromEnv], env: Mapping[str, str], owner: str) -> dict[str, str]:
    """The headers' values from the runner's environment; a missing one is a broken Job, said plainly."""
    values: dict[str, str] = {}
    for header in headers:
        value = env.get(header.env)
        if value is None:
            raise ValueError(f"{owner}: the value of header {header.name} is missing from the runner's environment")
        values[header.name] = value
    return values


def placeholders(template: str) -> list[str]:
    return [field for _, field, _, _ in string.Formatter().parse(template) if field]


def expand(template: str, arguments: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The URL with its placeholders filled, and the arguments left for the body or query."""
    used = placeholders(template)
    missing = [name for name in used if name not in arguments]
    if missing:
        raise ToolError(f"missing argument(s) {', '.join(missing)} for the URL")
    url = template.format_map({name: quote(str(arguments[name]), safe="") for name in used})
    return url, {name: value for name, value in arguments.items() if name not in used}


class HttpTool:
    def __init__(self, spec: HttpToolSpec, headers: dict[str, str], network: ToolNetwork) -> None:
        self._spec = spec
        self._headers = headers
        self._network = network
        self._origin = urlsplit(spec.url_template)
        self._session: aiohttp.ClientSession | None = None

    def definition(self) -> dict[str, Any]:
        parameters = self._spec.parameters or {"type": "object", "properties": {}}
        return function(self._spec.name, self._spec.description, parameters)

    async def call(self, call: ToolCall) -> str:
        spec = self._spec
        url, rest = expand(spec.url_template, call.arguments)
        parts = urlsplit(url)
        if (parts.scheme, parts.netloc) != (self._origin.scheme, self._origin.netloc) or not parts.hostname:
            raise ToolError(f"the arguments change where {spec.name} goes; refused")
        await check_host(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80), self._network)
        if self._session is None:
            self._session = guarded_session(self._network)
        headers = {**self._headers, IDEMPOTENCY_HEADER: call.key}
        body: dict[str, Any] = (
            {"params": {k: v if isinstance(v, str) else json.dumps(v) for k, v in rest.items()}}
            if spec.method in _BODYLESS
            else {"json": rest}
        )
        limit = spec.max_response_bytes
        try:
            async with self._session.request(
                spec.method, url, headers=headers, allow_redirects=False, **body
            ) as response:
                data = await read_at_most(response.content, limit + 1)
                result: dict[str, Any] = {
                    "status": response.status,
                    "contentType": response.headers.get("Content-Type", ""),
                    "body": data[:limit].decode("utf-8", errors="replace"),
                }
                if len(data) > limit:
                    result["note"] = f"the body was cut at {limit} bytes (the tool's maxResponseBytes)"
                if "Location" in response.headers:
                    result["location"] = response.headers["Location"]  # not followed: it may leave the allow-list
        except aiohttp.ClientError as error:
            raise ToolError(f"{spec.method} {spec.name} failed: {error}") from None
        return json.dumps(result)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class HttpTools:
    def __init__(self, tools: list[HttpTool]) -> None:
        self._tools = {tool.definition()["function"]["name"]: tool for tool in tools}

    def definitions(self) -> list[dict[str, Any]]:
        return [tool.definition() for tool in self._tools.values()]

    async def call(self, call: ToolCall) -> str:
        return await self._tools[call.name].call(call)

    async def close(self) -> None:
        for tool in self._tools.values():
            await tool.close()


@register("http")
def http_tools(context: ToolContext) -> HttpTools | None:
    config = context.config
    if not config.spec.tools.http:
        return None
    return HttpTools(
        [
            HttpTool(
                spec,
                header_values(config.http_tool_headers.get(spec.name, []), context.env, f"tools.http[{spec.name}]"),
                config.tool_network,
            )
            for spec in config.spec.tools.http
        ]
    )
