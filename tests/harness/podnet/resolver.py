"""Name resolution for the test process and the processes it starts, the way a pod's resolves: Service names go
to the cluster DNS, any other name to the machine's own resolver.

The machine's /etc/resolv.conf is never touched (other programs on it resolve as before):
- in the test process, an aiohttp client asks the cluster DNS through ``ClusterResolver``;
- a process the tests start (the kubectl plugin, a gateway outside the cluster) runs with ``with_cluster_dns``: in a
  mount namespace of its own whose /etc/resolv.conf is a pod's, as the node agent starts a container.
"""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiohttp.abc import AbstractResolver
from aiohttp.resolver import DefaultResolver

from tests.harness.podnet.dns import query_addresses
from tests.harness.podnet.network import cluster_name

LAUNCHER = Path(__file__).resolve().parents[1] / "nodeagent" / "launcher.py"
UNSHARE = ["unshare", "--mount", "--propagation", "private", "--"]


class ClusterResolver(AbstractResolver):
    """aiohttp's resolver with Service names (``svc.ns.svc``, ``svc.ns.svc.cluster.local``) asked of the
    cluster DNS at ``dns_ip``: ``aiohttp.TCPConnector(resolver=ClusterResolver(testbed.network_plan.dns_ip))``."""

    def __init__(self, dns_ip: str, domain: str = "cluster.local") -> None:
        self._dns_ip = dns_ip
        self._domain = domain
        self._default = DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[dict[str, Any]]:
        name = cluster_name(host, self._domain)
        if name is None:
            return await self._default.resolve(host, port, family)
        addresses = await query_addresses(self._dns_ip, name)
        if not addresses:
            raise OSError(f"{host}: the cluster has no such Service (NXDOMAIN from the cluster DNS)")
        return [
            {
                "hostname": host,
                "host": address,
                "port": port,
                "family": socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
            for address in addresses
        ]

    async def close(self) -> None:
        await self._default.close()


def resolv_conf(dns_ip: str, namespace: str, domain: str = "cluster.local") -> str:
    """A pod's /etc/resolv.conf (dnsPolicy ClusterFirst) in ``namespace``."""
    return f"search {namespace}.svc.{domain} svc.{domain} {domain}\nnameserver {dns_ip}\noptions ndots:5\n"


def with_cluster_dns(
    argv: list[str], env: Mapping[str, str], *, dns_ip: str, namespace: str, directory: Path
) -> list[str]:
    """``argv`` run in a private mount namespace whose /etc/resolv.conf is a pod's of ``namespace``; the files it
    needs go to ``directory``. Start the result with the same ``env``."""
    directory.mkdir(parents=True, exist_ok=True)
    conf = directory / "resolv.conf"
    conf.write_text(resolv_conf(dns_ip, namespace))
    spec = directory / "launch.json"
    mount = {"source": str(conf), "target": "/etc/resolv.conf", "readOnly": True}
    spec.write_text(json.dumps({"mounts": [mount], "sharedPaths": [], "argv": argv, "env": dict(env)}))
    return [*UNSHARE, sys.executable, str(LAUNCHER), str(spec)]
