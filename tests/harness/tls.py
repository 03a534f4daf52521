"""Certificates made by the ``openssl`` command line tool, and a TLS front for a plain-HTTP server on 127.0.0.1.

A CA lives in its own hashed trust directory (``openssl rehash``, as Debian's update-ca-certificates makes
/etc/ssl/certs); the server certificate is for IP 127.0.0.1, signed by one CA.
"""

import asyncio
import contextlib
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

OPENSSL = shutil.which("openssl")


def openssl(*arguments: str, cwd: Path) -> None:
    assert OPENSSL is not None, "needs the openssl command line tool"
    subprocess.run([OPENSSL, *arguments], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_ca(directory: Path, name: str) -> Path:
    """A CA certificate (``<name>.pem``, key ``<name>.key`` in ``directory``) in its own hashed trust
    directory; returns the directory."""
    trust = directory / f"{name}-trust"
    trust.mkdir()
    openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{trust.name}/{name}.pem", "-days", "1", "-subj", f"/CN={name}",
        cwd=directory,
    )  # fmt: skip
    openssl("rehash", trust.name, cwd=directory)
    return trust


@dataclass(frozen=True)
class LoopbackCertificates:
    """A server context for 127.0.0.1 signed by one CA, that CA's files, and another CA's trust directory."""

    server: ssl.SSLContext
    ca_file: Path
    """The signing CA's certificate, a PEM bundle of one."""
    trust: Path
    """The signing CA's hashed trust directory."""
    other_trust: Path
    """A trust directory of a CA that signed nothing here."""


def loopback_certificates(directory: Path) -> LoopbackCertificates:
    trust = make_ca(directory, "server-ca")
    other = make_ca(directory, "other-ca")
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1",
        cwd=directory,
    )  # fmt: skip
    openssl(
        "x509", "-req", "-in", "server.csr", "-CA", f"{trust.name}/server-ca.pem", "-CAkey", "server-ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "1", "-extfile", "san.ext",
        cwd=directory,
    )  # fmt: skip
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(directory / "server.pem", directory / "server.key")
    return LoopbackCertificates(server=server, ca_file=trust / "server-ca.pem", trust=trust, other_trust=other)


@contextlib.asynccontextmanager
async def tls_front(backend_port: int, context: ssl.SSLContext) -> AsyncIterator[int]:
    """Terminate TLS on a port of 127.0.0.1 and pass the bytes on to ``backend_port`` there, as a server with
    a certificate would answer; yields the TLS port."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()
        writer.close()

    open_writers: set[asyncio.StreamWriter] = set()

    async def connect(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        backend_reader, backend_writer = await asyncio.open_connection("127.0.0.1", backend_port)
        open_writers.update((client_writer, backend_writer))
        await asyncio.gather(pipe(client_reader, backend_writer), pipe(backend_reader, client_writer))

    server = await asyncio.start_server(connect, "127.0.0.1", 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for writer in open_writers:  # kept-alive connections would hold wait_closed() open
            writer.close()
        await server.wait_closed()
