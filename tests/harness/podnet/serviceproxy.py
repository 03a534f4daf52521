"""The kube-proxy stand-in: each ClusterIP Service's ports answer on its ClusterIP and lead to a ready endpoint.

For every TCP port of a Service with a ClusterIP it holds the ClusterIP on ``lo`` and listens on clusterIP:port
while the Service has a ready endpoint for that port (none: nothing listens, so a client is refused, as kube-proxy's
REJECT rule refuses it). Each connection goes to a ready endpoint picked at random, at the port the EndpointSlice
gives (named targetPorts resolved by the EndpointSlice controller). Connections already open when a Service or
endpoint goes away are left to end on their own, as established connections through kube-proxy's rules are.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import struct

from tests.harness.podnet.addresses import LoopbackAddresses
from tests.harness.podnet.directory import ServiceDirectory, ServicePort

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 5.0
CHUNK = 65536


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()  # a half-close travels on, as TCP through NAT does
    except (ConnectionError, OSError):
        writer.close()


class ServiceProxy:
    """``reconcile()`` after each change of the directory brings listeners and ClusterIPs in line with it."""

    def __init__(self, directory: ServiceDirectory, addresses: LoopbackAddresses) -> None:
        self._directory = directory
        self._addresses = addresses
        self._listeners: dict[tuple[str, int], tuple[ServicePort, asyncio.Server]] = {}
        self._connections: set[asyncio.Task[None]] = set()
        self.bind_errors: dict[tuple[str, int], str] = {}

    async def reconcile(self) -> None:
        wanted = {
            (port.cluster_ip, port.port): port
            for port in self._directory.service_ports()
            if self._directory.ready_endpoints(port.namespace, port.service, port.name)
        }
        cluster_ips = {port.cluster_ip for port in self._directory.service_ports()}
        await asyncio.to_thread(self._addresses.add, sorted(cluster_ips))
        for key, (port, server) in list(self._listeners.items()):
            if wanted.get(key) != port:
                server.close()
                del self._listeners[key]
        for key, port in wanted.items():
            if key not in self._listeners:
                await self._listen(port)
        stale = self._addresses.held - cluster_ips
        if stale:
            await asyncio.to_thread(self._addresses.remove, sorted(stale))

    async def _listen(self, port: ServicePort) -> None:
        key = (port.cluster_ip, port.port)
        try:
            server = await asyncio.start_server(
                lambda reader, writer: self._accept(port, reader, writer),
                host=port.cluster_ip,
                port=port.port,
                reuse_address=True,
            )
        except OSError as error:
            self.bind_errors[key] = str(error)
            logger.warning(
                "service proxy: cannot listen on %s:%d for %s/%s: %s", *key, port.namespace, port.service, error
            )
            return
        self.bind_errors.pop(key, None)
        self._listeners[key] = (port, server)

    def _accept(self, port: ServicePort, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(self._forward(port, reader, writer))
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    async def _forward(self, port: ServicePort, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        endpoints = self._directory.ready_endpoints(port.namespace, port.service, port.name)
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        if endpoints:
            address, target_port = random.choice(endpoints)
            try:
                upstream = await asyncio.wait_for(
                    asyncio.open_connection(address, target_port), CONNECT_TIMEOUT_SECONDS
                )
            except (OSError, TimeoutError) as error:
                logger.info(
                    "service proxy: %s/%s -> %s:%d: %s", port.namespace, port.service, address, target_port, error
                )
        if upstream is None:
            # The connection is accepted already; a reset is the nearest a proxy in user space comes to the refusal
            # a client of kube-proxy's rules would get (kube-proxy's old userspace mode did the same).
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.close()
            return
        upstream_reader, upstream_writer = upstream
        try:
            await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))
        finally:
            for end in (writer, upstream_writer):
                end.close()
                with contextlib.suppress(ConnectionError, OSError):
                    await end.wait_closed()

    async def close(self) -> None:
        for _, server in self._listeners.values():
            server.close()
        self._listeners.clear()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await asyncio.to_thread(self._addresses.remove_all)
