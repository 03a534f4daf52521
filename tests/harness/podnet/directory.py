"""What kube-proxy and the cluster DNS both read: Services and their EndpointSlices, from the API server's watch."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from tests.harness.nodeagent.kube import JsonObject, KubeClient
from tests.harness.podnet.informer import Informer

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
HEADLESS = "None"


@dataclass(frozen=True)
class ServicePort:
    """One TCP port of a ClusterIP Service: what kube-proxy listens on."""

    namespace: str
    service: str
    cluster_ip: str
    port: int
    name: str  # the port's name ("" when the Service has one unnamed port); EndpointSlice ports carry the same


class ServiceDirectory:
    """Services and EndpointSlices of every namespace, kept current by watches; ``on_change`` after each change."""

    def __init__(self, kube: KubeClient, on_change: Callable[[], None]) -> None:
        self._on_change = on_change
        self.services = Informer(kube, "/api/v1/services", on_change)
        self.slices = Informer(kube, "/apis/discovery.k8s.io/v1/endpointslices", self._slices_changed)
        # Slices by (namespace, Service), built when first asked after a change: thousands of runs' Services
        # would otherwise make each look-up a walk over every slice.
        self._by_service: dict[tuple[str, str], list[JsonObject]] | None = None

    def _slices_changed(self) -> None:
        self._by_service = None
        self._on_change()

    async def start(self) -> None:
        self.services.start()
        self.slices.start()
        await asyncio.gather(self.services.synced.wait(), self.slices.synced.wait())

    async def stop(self) -> None:
        await asyncio.gather(self.services.stop(), self.slices.stop())

    def service(self, namespace: str, name: str) -> JsonObject | None:
        return self.services.objects.get((namespace, name))

    def service_ports(self) -> list[ServicePort]:
        """Every TCP port of every Service with a ClusterIP (not headless, not ExternalName)."""
        ports: list[ServicePort] = []
        for (namespace, name), service in self.services.objects.items():
            spec = service.get("spec") or {}
            cluster_ip = spec.get("clusterIP") or ""
            if not cluster_ip or cluster_ip == HEADLESS or spec.get("type") == "ExternalName":
                continue
            for port in spec.get("ports") or []:
                if (port.get("protocol") or "TCP") == "TCP":
                    ports.append(ServicePort(namespace, name, cluster_ip, int(port["port"]), port.get("name") or ""))
        return ports

    def _slices_of(self, namespace: str, service: str) -> list[JsonObject]:
        if self._by_service is None:
            index: dict[tuple[str, str], list[JsonObject]] = {}
            for (slice_namespace, _), endpoint_slice in self.slices.objects.items():
                owner = (endpoint_slice["metadata"].get("labels") or {}).get(SERVICE_NAME_LABEL)
                if owner and endpoint_slice.get("addressType") == "IPv4":
                    index.setdefault((slice_namespace, owner), []).append(endpoint_slice)
            self._by_service = index
        return self._by_service.get((namespace, service), [])

    def ready_endpoints(self, namespace: str, service: str, port_name: str) -> list[tuple[str, int]]:
        """(address, port) of each ready endpoint of the Service's port ``port_name``: the slice resolves a named
        targetPort to each pod's own containerPort."""
        found: list[tuple[str, int]] = []
        for endpoint_slice in self._slices_of(namespace, service):
            numbers = [
                int(port["port"])
                for port in endpoint_slice.get("ports") or []
                if (port.get("name") or "") == port_name and port.get("port")
            ]
            if not numbers:
                continue
            for endpoint in endpoint_slice.get("endpoints") or []:
                # kube-proxy: a missing `ready` counts as ready.
                if (endpoint.get("conditions") or {}).get("ready", True) is not False:
                    found.extend((address, numbers[0]) for address in endpoint.get("addresses") or [])
        return found

    def addresses_of(self, namespace: str, service: str) -> list[str]:
        """What the Service's name resolves to: its ClusterIP, or for a headless Service its ready pods' IPs."""
        found = self.service(namespace, service)
        if found is None:
            return []
        cluster_ip = (found.get("spec") or {}).get("clusterIP") or ""
        if cluster_ip and cluster_ip != HEADLESS:
            return [cluster_ip]
        addresses: list[str] = []
        for endpoint_slice in self._slices_of(namespace, service):
            for endpoint in endpoint_slice.get("endpoints") or []:
                if (endpoint.get("conditions") or {}).get("ready", True) is not False:
                    addresses.extend(endpoint.get("addresses") or [])
        return sorted(set(addresses))
