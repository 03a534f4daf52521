"""The node's kubelet endpoint for logs: ``GET /containerLogs/<namespace>/<pod>/<container>``.

``kubectl logs`` asks the API server, which calls this endpoint at the Node's InternalIP and
``daemonEndpoints.kubeletEndpoint.Port`` with its kubelet client certificate; the server accepts only
clients whose certificate the cluster CA signed, and presents a serving certificate the API server checks.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from tests.harness.controlplane.pki import CertificatePair
from tests.harness.nodeagent.pods import LOCAL_IP

if TYPE_CHECKING:
    from tests.harness.nodeagent.agent import NodeAgent

FOLLOW_POLL_SECONDS = 0.2


def _tail_lines(content: bytes, lines: int) -> bytes:
    if lines <= 0:
        return b""
    kept = content.splitlines(keepends=True)[-lines:]
    return b"".join(kept)


class ContainerLogServer:
    def __init__(self, node: NodeAgent, serving: CertificatePair, ca_file: Path) -> None:
        self._node = node
        self._ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca_file))
        self._ssl.load_cert_chain(str(serving.cert), str(serving.key))
        self._ssl.verify_mode = ssl.CERT_REQUIRED
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/containerLogs/{namespace}/{pod}/{container}", self._container_logs)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, LOCAL_IP, 0, ssl_context=self._ssl)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _container_logs(self, request: web.Request) -> web.StreamResponse:
        namespace, pod, container = (request.match_info[key] for key in ("namespace", "pod", "container"))
        try:
            runtime = self._node.runtime(namespace, pod)
        except LookupError:
            raise web.HTTPNotFound(text=f"pod {namespace}/{pod} is not on node {self._node.node_name}") from None
        names = [entry["name"] for entry in runtime.pod["spec"].get("containers", [])]
        names += [entry["name"] for entry in runtime.pod["spec"].get("initContainers") or []]
        if container not in names:
            raise web.HTTPNotFound(text=f"container {container} is not valid for pod {pod}")
        path = runtime.log_dir / f"{container}.log"
        content = path.read_bytes() if path.exists() else b""
        query = request.query
        if "tailLines" in query:
            content = _tail_lines(content, int(query["tailLines"]))
        limit = int(query["limitBytes"]) if "limitBytes" in query else None
        if limit is not None:
            content = content[:limit]
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        await response.write(content)
        if query.get("follow") in ("true", "1") and limit is None:
            offset = path.stat().st_size if path.exists() else 0
            while True:
                finished = runtime.finished.is_set()
                size = path.stat().st_size if path.exists() else 0
                if size > offset:
                    with path.open("rb") as log:
                        log.seek(offset)
                        await response.write(log.read(size - offset))
                    offset = size
                elif finished:
                    break
                await asyncio.sleep(FOLLOW_POLL_SECONDS)
        await response.write_eof()
        return response
