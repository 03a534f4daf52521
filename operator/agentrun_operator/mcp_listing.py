"""Lists each MCPServer's tools with the official ``mcp`` SDK (streamable HTTP) and records them in the
server's status: when the server is declared or changed, and again every ``refresh_seconds``.
"""

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from agentrun_api import mcpserver
from agentrun_api.mcpserver import DiscoveredTool, MCPServerSpec, MCPServerStatus
from agentrun_common.durations import parse_duration
from agentrun_common.kube.client import ApiError
from agentrun_operator.kube import KubeClient

log = logging.getLogger(__name__)
_LONG_AGO = datetime.min.replace(tzinfo=UTC)


async def list_tools(spec: MCPServerSpec, headers: Mapping[str, str]) -> list[DiscoveredTool]:
    """Every tool the server lists (all pages), with the official SDK over streamable HTTP."""
    # Imported at the first listing: an operator whose namespaces declare no MCPServer does not hold the SDK's
    # modules (about 30 MiB of its resident memory).
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    timeout = parse_duration(spec.timeout)
    tools: list[DiscoveredTool] = []
    async with (
        httpx2.AsyncClient(headers=dict(headers), timeout=timeout) as http,
        Client(streamable_http_client(spec.url, http_client=http), read_timeout_seconds=timeout) as client,
    ):
        cursor: str | None = None
        while True:
            page = await client.list_tools(cursor=cursor)
            tools.extend(
                DiscoveredTool(
                    name=tool.name,
                    description=(tool.description or "")[:4096],
                    input_schema=tool.input_schema,
                )
                for tool in page.tools
            )
            cursor = page.next_cursor
            if cursor is None:
                return tools


@dataclass
class _Known:
    body: Mapping[str, Any]
    attempted_generation: int = -1
    next_at: datetime = _LONG_AGO


class ServerLister:
    """Keeps each MCPServer's status.tools current: on a new generation at once, then every
    ``refresh_seconds``; a failed listing is tried again after ``retry_seconds``."""

    def __init__(self, kube: KubeClient, *, refresh_seconds: float = 300.0, retry_seconds: float = 10.0) -> None:
        self._kube = kube
        self._refresh = timedelta(seconds=refresh_seconds)
        self._retry = timedelta(seconds=retry_seconds)
        self._known: dict[tuple[str, str], _Known] = {}
        self._wake = asyncio.Event()

    def observe(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A watch event of an MCPServer."""
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        if event_type == "DELETED":
            self._known.pop(key, None)
            return
        known = self._known.get(key)
        if known is None:
            self._known[key] = _Known(body=body)
        else:
            known.body = body
        self._wake.set()

    async def run(self) -> None:
        while True:
            self._wake.clear()  # before looking: an event that comes while listing wakes the next round
            now = datetime.now(UTC)
            due = [key for key, known in self._known.items() if self._due(known, now)]
            await asyncio.gather(*(self._list(key) for key in due))
            waits = [(known.next_at - datetime.now(UTC)).total_seconds() for known in self._known.values()]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(min(waits, default=60.0), 0.05))

    @staticmethod
    def _due(known: _Known, now: datetime) -> bool:
        generation = int((known.body.get("metadata") or {}).get("generation") or 0)
        return generation != known.attempted_generation or now >= known.next_at

    async def _list(self, key: tuple[str, str]) -> None:
        known = self._known[key]
        namespace, name = key
        generation = int((known.body.get("metadata") or {}).get("generation") or 0)
        known.attempted_generation = generation
        status = MCPServerStatus.model_validate(known.body.get("status") or {})
        try:
            spec = MCPServerSpec.model_validate(known.body.get("spec") or {})
            headers = await self._headers(namespace, spec)
            tools = await list_tools(spec, headers)
        except Exception as error:  # the server's problem goes to its status, and the listing is tried again
            message = _describe(error)
            log.info("MCPServer %s/%s: listing its tools failed: %s", namespace, name, message)
            status = status.model_copy(
                update={"ready": False, "message": message[:1024], "observed_generation": generation}
            )
            known.next_at = datetime.now(UTC) + self._retry
        else:
            status = MCPServerStatus(
                ready=True,
                tools=tools,
                listed_at=datetime.now(UTC),
                message=f"{len(tools)} tool(s) listed",
                observed_generation=generation,
            )
            known.next_at = datetime.now(UTC) + self._refresh
        try:
            await self._kube.merge_patch(
                mcpserver.KIND,
                namespace,
                name,
                {"status": status.model_dump(mode="json", by_alias=True, exclude_none=True)},
                subresource="status",
            )
        except ApiError as error:
            if not error.not_found:
                log.warning("MCPServer %s/%s: status not written: %s", namespace, name, error)
                known.next_at = datetime.now(UTC) + self._retry

    async def _headers(self, namespace: str, spec: MCPServerSpec) -> dict[str, str]:
        headers: dict[str, str] = {}
        for header in spec.headers:
            ref = header.secret_key_ref
            value = await self._kube.read_secret_key(namespace, ref.name, ref.key)
            if value is None:
                raise LookupError(f"spec.headers[{header.name}]: Secret {ref.name!r} or its key {ref.key!r} not found")
            headers[header.name] = value.decode("utf-8")
        return headers


def _describe(error: BaseException) -> str:
    """A listing failure in one line; exception groups (the SDK's task groups) by their first cause."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
