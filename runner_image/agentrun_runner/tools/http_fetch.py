"""The http_fetch tool: GET a URL on a host the run's spec allows, size-capped, redirects not followed."""

import json
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from agentrun_api.spec import HttpFetchSpec
from agentrun_runner.tools.base import (
    IDEMPOTENCY_HEADER,
    ToolCall,
    ToolContext,
    ToolError,
    function,
    object_schema,
    register,
    string_argument,
)

HTTP_FETCH_TOOL = function(
    "http_fetch",
    "HTTP GET a URL on an allowed host; returns status, content type and the (size-capped) body.",
    object_schema({"url": {"type": "string", "description": "An http or https URL."}}, ["url"]),
)


def host_allowed(host: str, allowed_hosts: list[str] | tuple[str, ...]) -> bool:
    host = host.lower().rstrip(".")
    for pattern in allowed_hosts:
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]):
                return True
        elif host == pattern:
            return True
    return False


async def read_at_most(content: aiohttp.StreamReader, size: int) -> bytes:
    """``size`` bytes of the body, fewer only at its end. ``StreamReader.read(n)`` returns what is
    buffered (often one network read), not ``n`` bytes: once would cut a long body short."""
    pieces: list[bytes] = []
    left = size
    while left > 0:
        piece = await content.read(left)
        if not piece:
            break
        pieces.append(piece)
        left -= len(piece)
    return b"".join(pieces)


class HttpFetch:
    def __init__(self, spec: HttpFetchSpec) -> None:
        self._spec = spec
        self._session: aiohttp.ClientSession | None = None

    def definitions(self) -> list[dict[str, Any]]:
        return [HTTP_FETCH_TOOL]

    async def call(self, call: ToolCall) -> str:
        return await self.fetch(string_argument(call.arguments, "url"), call.key)

    async def fetch(self, url: str, idempotency_key: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ToolError(f"{url!r} is not an http or https URL")
        if not host_allowed(parts.hostname, self._spec.allowed_hosts):
            raise ToolError(f"host {parts.hostname!r} is not in tools.httpFetch.allowedHosts")
        if self._session is None:
            self._session = aiohttp.ClientSession()
        limit = self._spec.max_response_bytes
        try:
            async with self._session.get(
                url, headers={IDEMPOTENCY_HEADER: idempotency_key}, allow_redirects=False
            ) as response:
                body = await read_at_most(response.content, limit + 1)
                result = {
                    "status": response.status,
                    "contentType": response.headers.get("Content-Type", ""),
                    "body": body[:limit].decode("utf-8", errors="replace"),
                    "truncated": len(body) > limit,
                }
                if "Location" in response.headers:
                    result["location"] = response.headers["Location"]  # not followed: it may leave the allow-list
        except aiohttp.ClientError as error:
            raise ToolError(f"GET {url} failed: {error}") from None
        return json.dumps(result)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


@register("http_fetch")
def http_fetch_tool(context: ToolContext) -> HttpFetch | None:
    spec = context.config.spec.tools.http_fetch
    return HttpFetch(spec) if spec is not None else None
