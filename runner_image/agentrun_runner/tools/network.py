"""Where MCP and HTTP tool calls may connect: the runner resolves each host and refuses link-local
addresses (cloud metadata endpoints) always and loopback ones unless the platform allows them.

The operator already checked the host names against the platform's allow-list; this check is on the
addresses the names resolve to, so a name pointing inside the pod (or at the node's metadata service)
is refused too."""

import asyncio
import ipaddress
import socket
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from agentrun_api.contract import ToolNetwork
from agentrun_runner.tools.base import ToolError


def refused_because(address: str, network: ToolNetwork) -> str | None:
    """Why a connection to ``address`` is refused, or None when it is allowed."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_link_local:
        return f"{address} is a link-local address"
    if ip.is_loopback and not network.allow_loopback:
        return f"{address} is a loopback address and the operator's policy does not allow tools on loopback"
    if ip.is_unspecified or ip.is_multicast:
        return f"{address} is not a unicast address"
    return None


async def check_host(host: str, port: int, network: ToolNetwork) -> None:
    """Resolve ``host`` and raise ToolError when any address it resolves to is refused."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as error:
        raise ToolError(f"cannot resolve {host}: {error}") from None
    for info in infos:
        reason = refused_because(str(info[4][0]), network)
        if reason is not None:
            raise ToolError(f"{host} resolves to {reason}")


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver, refusing addresses at connect time (no gap between check and use)."""

    def __init__(self, network: ToolNetwork) -> None:
        self._network = network
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            reason = refused_because(result["host"], self._network)
            if reason is not None:
                raise ToolError(f"{host} resolves to {reason}")
        return results

    async def close(self) -> None:
        await self._inner.close()


def guarded_session(network: ToolNetwork, **kwargs: Any) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=GuardedResolver(network)), **kwargs)
