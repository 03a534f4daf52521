"""The cluster network of the test ground: kube-proxy and cluster DNS stand-ins over one watch of Services and
EndpointSlices (the node agent gives pods their IPs; see tests/harness/nodeagent/README.md for the whole picture).

    async with ClusterNetwork(kube_proxy_kubeconfig, plan) as network:
        await network.resolve("my-svc.my-ns.svc")   # ["10.x.y.z"], through the cluster DNS, as a pod resolves it
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.harness.nodeagent.kube import KubeClient
from tests.harness.podnet.addresses import LoopbackAddresses, NetworkPlan
from tests.harness.podnet.directory import ServiceDirectory
from tests.harness.podnet.dns import ClusterDnsServer, query_addresses
from tests.harness.podnet.serviceproxy import ServiceProxy

logger = logging.getLogger(__name__)

CLUSTER_DOMAIN = "cluster.local"


def cluster_name(host: str, domain: str = CLUSTER_DOMAIN) -> str | None:
    """The fully qualified form of a Service name the way a pod's search path completes it
    (``svc.ns.svc`` -> ``svc.ns.svc.cluster.local``); None for a name outside the cluster."""
    name = host.rstrip(".").lower()
    if name.endswith(f".svc.{domain}"):
        return name
    if name.endswith(".svc") and name.count(".") == 2:
        return f"{name}.{domain}"
    return None


class ClusterNetwork:
    def __init__(self, kubeconfig: Path, plan: NetworkPlan, *, domain: str = CLUSTER_DOMAIN) -> None:
        self.plan = plan
        self.domain = domain
        self._kubeconfig = kubeconfig
        self._kube: KubeClient | None = None
        self._changed = asyncio.Event()
        self._dns_address = LoopbackAddresses()
        self._proxy_addresses = LoopbackAddresses()
        self.directory: ServiceDirectory | None = None
        self.proxy: ServiceProxy | None = None
        self.dns: ClusterDnsServer | None = None
        self._reconciler: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        try:
            await self._start()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def _start(self) -> None:
        self._kube = await KubeClient(str(self._kubeconfig)).__aenter__()
        self.directory = ServiceDirectory(self._kube, self._changed.set)
        self.proxy = ServiceProxy(self.directory, self._proxy_addresses)
        await asyncio.to_thread(self._dns_address.add, [self.plan.dns_ip])
        self.dns = ClusterDnsServer(self.plan.dns_ip, self.domain, self._lookup)
        await self.dns.start()
        await self.directory.start()
        await self.proxy.reconcile()
        self._reconciler = asyncio.create_task(self._reconcile_forever(), name="service proxy")

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._reconciler is not None:
            self._reconciler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconciler
        if self.directory is not None:
            await self.directory.stop()
        if self.proxy is not None:
            await self.proxy.close()
        if self.dns is not None:
            await self.dns.close()
        await asyncio.to_thread(self._dns_address.remove_all)
        if self._kube is not None:
            await self._kube.__aexit__(None, None, None)
            self._kube = None

    def _lookup(self, namespace: str, service: str) -> list[str] | None:
        return self.directory.addresses_of(namespace, service) if self.directory is not None else None

    async def _reconcile_forever(self) -> None:
        assert self.proxy is not None
        while True:
            await self._changed.wait()
            self._changed.clear()
            try:
                await self.proxy.reconcile()
            except Exception:
                logger.exception("service proxy: reconcile failed")

    async def resolve(self, host: str) -> list[str]:
        """What a pod would get for ``host``: an IP stays as it is; a Service name (``svc.ns.svc`` or the fully
        qualified form) is asked of the cluster DNS; other names are not the cluster's ([])."""
        with contextlib.suppress(ValueError):
            return [str(ipaddress.ip_address(host))]
        name = cluster_name(host, self.domain)
        if name is None:
            return []
        return await query_addresses(self.plan.dns_ip, name)
