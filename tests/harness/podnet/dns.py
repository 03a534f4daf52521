"""The cluster DNS stand-in: A records for Services, as CoreDNS's kubernetes plugin gives them, over UDP.

``<service>.<namespace>.svc.<domain>`` answers with the Service's ClusterIP, or for a headless Service with its
ready pods' IPs; any other name in the cluster domain is NXDOMAIN, and a name outside it is forwarded to the
machine's own name servers (CoreDNS's ``forward . /etc/resolv.conf``), so a pod still resolves names outside the
cluster. Pods reach it through the resolv.conf the node agent mounts for them (``nameserver``, the search path of
their namespace, ``ndots:5``); a test resolves through it with ``query_addresses``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

logger = logging.getLogger(__name__)

PORT = 53
TYPE_A = 1
CLASS_IN = 1
RCODE_NXDOMAIN = 3
RCODE_SERVFAIL = 2
RCODE_FORMERR = 1
TTL_SECONDS = 5
FORWARD_TIMEOUT_SECONDS = 3.0
FLAG_QR = 0x8000
FLAG_AA = 0x0400
FLAG_RD = 0x0100
FLAG_RA = 0x0080


class DnsFormatError(ValueError):
    """A message that is not a DNS query this server understands."""


@dataclass(frozen=True)
class Question:
    name: str  # lower case, without the final dot
    qtype: int
    qclass: int
    end: int  # the offset after the question in the message


def parse_question(message: bytes) -> tuple[int, int, Question]:
    """The query's id, flags and (first) question."""
    if len(message) < 12:
        raise DnsFormatError("shorter than a DNS header")
    query_id, flags, questions = struct.unpack("!HHH", message[:6])
    if questions < 1:
        raise DnsFormatError("no question")
    labels: list[str] = []
    offset = 12
    while True:
        if offset >= len(message):
            raise DnsFormatError("name runs past the message")
        length = message[offset]
        offset += 1
        if length == 0:
            break
        if length & 0xC0:
            raise DnsFormatError("compressed name in a question")
        labels.append(message[offset : offset + length].decode("ascii", errors="replace").lower())
        offset += length
    if offset + 4 > len(message):
        raise DnsFormatError("question without type and class")
    qtype, qclass = struct.unpack("!HH", message[offset : offset + 4])
    return query_id, flags, Question(".".join(labels), qtype, qclass, offset + 4)


def encode_name(name: str) -> bytes:
    return b"".join(bytes([len(label)]) + label.encode("ascii") for label in name.split(".") if label) + b"\0"


def build_query(name: str, query_id: int, qtype: int = TYPE_A) -> bytes:
    return struct.pack("!HHHHHH", query_id, FLAG_RD, 1, 0, 0, 0) + encode_name(name) + struct.pack("!HH", qtype, 1)


def build_answer(
    message: bytes, query_id: int, flags: int, question: Question, rcode: int, addresses: list[str]
) -> bytes:
    """The answer to ``message``: its question echoed, then an A record per address (pointing at the question)."""
    answer_flags = FLAG_QR | FLAG_AA | FLAG_RA | (flags & FLAG_RD) | rcode
    header = struct.pack("!HHHHHH", query_id, answer_flags, 1, len(addresses), 0, 0)
    records = b"".join(
        struct.pack("!HHHIH", 0xC00C, TYPE_A, CLASS_IN, TTL_SECONDS, 4)
        + bytes(int(part) for part in address.split("."))
        for address in addresses
    )
    return header + message[12 : question.end] + records


def parse_addresses(message: bytes) -> tuple[int, list[str]]:
    """An answer's rcode and its A records' addresses."""
    _, flags, question = parse_question(message)
    answers = struct.unpack("!H", message[6:8])[0]
    offset = question.end
    addresses: list[str] = []
    for _ in range(answers):
        # Skip the owner name (a pointer, or labels up to the root).
        while message[offset] and not message[offset] & 0xC0:
            offset += message[offset] + 1
        offset += 2 if message[offset] & 0xC0 else 1
        rtype, _class, _ttl, length = struct.unpack("!HHIH", message[offset : offset + 10])
        offset += 10
        if rtype == TYPE_A and length == 4:
            addresses.append(".".join(str(byte) for byte in message[offset : offset + 4]))
        offset += length
    return flags & 0xF, addresses


def host_name_servers(path: str = "/etc/resolv.conf") -> list[str]:
    """The machine's own name servers, where names outside the cluster go."""
    servers: list[str] = []
    with contextlib.suppress(OSError), open(path) as resolv:
        for line in resolv:
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                servers.append(parts[1])
    return servers


class _Exchange(asyncio.DatagramProtocol):
    """One query sent to one server, and its answer."""

    def __init__(self, query: bytes) -> None:
        self._query = query
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        cast(asyncio.DatagramTransport, transport).sendto(self._query)

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        if not self.answer.done():
            self.answer.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc)


async def exchange(server: str, query: bytes, timeout: float = FORWARD_TIMEOUT_SECONDS) -> bytes:
    """Send one UDP query to ``server`` and return its answer."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(lambda: _Exchange(query), remote_addr=(server, PORT))
    try:
        return await asyncio.wait_for(protocol.answer, timeout)
    finally:
        transport.close()


async def query_addresses(server: str, name: str) -> list[str]:
    """The A records of ``name`` from the DNS server at ``server`` ([] when it does not exist)."""
    query_id = random.randrange(1 << 16)
    rcode, addresses = parse_addresses(await exchange(server, build_query(name, query_id)))
    if rcode not in (0, RCODE_NXDOMAIN):
        raise OSError(f"DNS server {server} answered {name!r} with rcode {rcode}")
    return addresses


class ClusterDnsServer(asyncio.DatagramProtocol):
    """Serves ``lookup(namespace, service)`` for names in ``domain`` on ``address``:53 (UDP)."""

    def __init__(self, address: str, domain: str, lookup: Callable[[str, str], list[str] | None]) -> None:
        self.address = address
        self.domain = domain.strip(".").lower()
        self._lookup = lookup
        self._upstreams = [server for server in host_name_servers() if server != address]
        self._transport: asyncio.DatagramTransport | None = None
        self._forwards: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(self.address, PORT))
        self._transport = transport

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        for task in list(self._forwards):
            task.cancel()
        await asyncio.gather(*self._forwards, return_exceptions=True)

    def answer_locally(self, name: str, qtype: int) -> tuple[int, list[str]] | None:
        """(rcode, addresses) for a name in the cluster domain; None for a name outside it."""
        if name != self.domain and not name.endswith("." + self.domain):
            return None
        labels = name[: -len(self.domain)].rstrip(".").split(".") if name != self.domain else []
        if len(labels) == 3 and labels[2] == "svc":
            addresses = self._lookup(labels[1], labels[0])
            if addresses:
                return 0, addresses if qtype == TYPE_A else []  # AAAA and others: the name exists, no such record
        return RCODE_NXDOMAIN, []

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        assert self._transport is not None
        try:
            query_id, flags, question = parse_question(data)
        except DnsFormatError:
            if len(data) >= 2:
                header = struct.pack("!HHHHHH", struct.unpack("!H", data[:2])[0], FLAG_QR | RCODE_FORMERR, 0, 0, 0, 0)
                self._transport.sendto(header, addr)
            return
        local = self.answer_locally(question.name, question.qtype)
        if local is not None:
            rcode, addresses = local
            self._transport.sendto(build_answer(data, query_id, flags, question, rcode, addresses), addr)
            return
        task = asyncio.create_task(self._forward(data, query_id, flags, question, addr))
        self._forwards.add(task)
        task.add_done_callback(self._forwards.discard)

    async def _forward(
        self, data: bytes, query_id: int, flags: int, question: Question, addr: tuple[str | object, int]
    ) -> None:
        for upstream in self._upstreams:
            with contextlib.suppress(OSError, TimeoutError):
                answer = await exchange(upstream, data)
                if self._transport is not None:
                    self._transport.sendto(answer, addr)
                return
        logger.info("cluster DNS: no upstream answered %s", question.name)
        if self._transport is not None:
            self._transport.sendto(build_answer(data, query_id, flags, question, RCODE_SERVFAIL, []), addr)
