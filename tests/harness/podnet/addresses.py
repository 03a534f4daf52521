"""Addresses of the pod network and the Service range, held on the ``lo`` interface.

A pod network gives each pod a routable IP and kube-proxy makes each ClusterIP answer. Here every process shares
the machine's network namespace, so both kinds of address are added to ``lo`` as /32s (``ip addr add``): a process
reaches any of them locally, and a process may bind one as its own. Each session labels its addresses with its
process id (``lo:ar<pid>``), so a later session can remove what a killed one left behind, and picks its ranges at
random inside 10.0.0.0/8, so that test sessions side by side on one machine do not meet.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import subprocess
import threading
from collections.abc import Iterable
from dataclasses import dataclass

DEVICE = "lo"
LABEL_PREFIX = f"{DEVICE}:ar"
PRIVATE_RANGE = ipaddress.IPv4Network("10.0.0.0/8")
# One /16 per session: the first half is the Service range (--service-cluster-ip-range; a /17 holds the 5,000
# runs' stream Services of the benchmarks), the second half the pod network.
SESSION_PREFIX = 16
DNS_HOST_INDEX = 10  # the cluster DNS Service's IP, the 10th of the range, as kubeadm's 10.96.0.10
# The session's whole /16 is "unreachable" except the addresses held on lo: a packet to a deleted Service's IP or a
# gone pod's fails at once (No route to host), as on a cluster, instead of leaving by the default route. The route
# carries a protocol number of its own and the session's pid as its metric, so a killed session's is reaped.
ROUTE_PROTOCOL = "252"


class AddressError(RuntimeError):
    """``ip`` could not add or remove an address (not root, or no ``ip`` command)."""


@dataclass(frozen=True)
class NetworkPlan:
    """The ranges of one session: ``service_cidr`` for the API server's ClusterIPs, ``pod_cidr`` for pod IPs,
    and ``dns_ip``, the ClusterIP the cluster DNS answers on."""

    service_cidr: str
    pod_cidr: str

    @property
    def session_cidr(self) -> str:
        return str(ipaddress.IPv4Network(self.service_cidr).supernet())

    @property
    def dns_ip(self) -> str:
        return str(ipaddress.IPv4Network(self.service_cidr)[DNS_HOST_INDEX])

    @property
    def kubernetes_service_ip(self) -> str:
        """The first address of the range, which the API server gives its own ``kubernetes`` Service."""
        return str(ipaddress.IPv4Network(self.service_cidr)[1])


def _run_ip(arguments: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(["ip", *arguments], input=stdin, capture_output=True, text=True, timeout=60)
    except FileNotFoundError as error:
        raise AddressError("the pod network needs the `ip` command (iproute2)") from error


def addresses_in_use() -> list[tuple[ipaddress.IPv4Address, str]]:
    """Every IPv4 address of this machine's interfaces, with its label."""
    shown = _run_ip(["-j", "-4", "addr", "show"])
    if shown.returncode != 0:
        raise AddressError(f"`ip addr show` failed: {shown.stderr.strip()}")
    return [
        (ipaddress.IPv4Address(info["local"]), str(info.get("label", "")))
        for link in json.loads(shown.stdout or "[]")
        for info in link.get("addr_info", [])
        if info.get("family") == "inet"
    ]


def _networks_to_avoid() -> list[ipaddress.IPv4Network]:
    """Addresses this machine already uses inside 10.0.0.0/8: its interfaces, routes and name servers."""
    avoid = [ipaddress.IPv4Network(f"{address}/32") for address, _ in addresses_in_use()]
    routes = _run_ip(["-j", "-4", "route", "show"])
    for route in json.loads(routes.stdout or "[]") if routes.returncode == 0 else []:
        destination = route.get("dst", "")
        if destination and destination != "default":
            avoid.append(
                ipaddress.IPv4Network(destination if "/" in destination else f"{destination}/32", strict=False)
            )
    try:
        with open("/etc/resolv.conf") as resolv:
            for line in resolv:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver" and "." in parts[1]:
                    avoid.append(ipaddress.IPv4Network(f"{parts[1]}/32"))
    except OSError:
        pass
    return [network for network in avoid if network.overlaps(PRIVATE_RANGE)]


def plan_network(rng: random.Random | None = None, avoid: list[ipaddress.IPv4Network] | None = None) -> NetworkPlan:
    """A random /16 inside 10.0.0.0/8 that nothing on this machine uses (or nothing in ``avoid``), split into the
    Service and the pod range."""
    rng = rng or random.SystemRandom()
    avoid = _networks_to_avoid() if avoid is None else avoid
    candidates = list(PRIVATE_RANGE.subnets(new_prefix=SESSION_PREFIX))[1:-1]  # not 10.0/16 nor 10.255/16
    rng.shuffle(candidates)
    for session in candidates:
        if not any(session.overlaps(network) for network in avoid):
            services, pods = session.subnets(prefixlen_diff=1)
            return NetworkPlan(service_cidr=str(services), pod_cidr=str(pods))
    raise AddressError("no free /16 inside 10.0.0.0/8 for the test cluster's Services and pods")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim_range(cidr: str) -> None:
    """Make ``cidr`` unreachable but for the addresses held on lo (see ROUTE_PROTOCOL)."""
    added = _run_ip(["route", "add", "unreachable", cidr, "proto", ROUTE_PROTOCOL, "metric", str(os.getpid())])
    if added.returncode != 0:
        raise AddressError(
            f"could not route {cidr} (the pod network needs root or CAP_NET_ADMIN): {added.stderr.strip()}"
        )


def release_range(cidr: str) -> None:
    _run_ip(["route", "del", "unreachable", cidr, "proto", ROUTE_PROTOCOL, "metric", str(os.getpid())])


def _reap_abandoned_ranges() -> None:
    shown = _run_ip(["-j", "route", "show", "proto", ROUTE_PROTOCOL])
    for route in json.loads(shown.stdout or "[]") if shown.returncode == 0 else []:
        owner = int(route.get("metric") or 0)
        if route.get("type") == "unreachable" and owner and not _pid_alive(owner):
            _run_ip(["route", "del", "unreachable", route["dst"], "proto", ROUTE_PROTOCOL, "metric", str(owner)])


def _address_missing(error: str) -> bool:
    # iproute2's wording, old and new, for deleting an address the interface does not have.
    return "Address not found" in error or "Cannot assign requested address" in error


class LoopbackAddresses:
    """The /32s this session holds on ``lo``, labelled with its process id."""

    def __init__(self) -> None:
        self.label = f"{LABEL_PREFIX}{os.getpid()}"
        self.held: set[str] = set()
        self._lock = threading.Lock()  # pods start on worker threads, side by side

    def add(self, addresses: Iterable[str]) -> set[str]:
        """Add each address; returns those that another owner already holds (not added, not ours)."""
        with self._lock:
            return self._add(list(addresses))

    def _add(self, addresses: list[str]) -> set[str]:
        wanted = [address for address in addresses if address not in self.held]
        if not wanted:
            return set()
        failed = self._batch([f"addr add {address}/32 dev {DEVICE} label {self.label}" for address in wanted], "add")
        held_elsewhere = {wanted[line - 1] for line, message in failed.items() if "already assigned" in message}
        if len(held_elsewhere) < len(failed):
            errors = [message for line, message in failed.items() if wanted[line - 1] not in held_elsewhere]
            raise AddressError(
                f"could not add addresses on {DEVICE} (the pod network needs root or CAP_NET_ADMIN): "
                + "; ".join(errors[:3])
            )
        self.held.update(address for address in wanted if address not in held_elsewhere)
        return held_elsewhere

    def remove(self, addresses: Iterable[str]) -> None:
        with self._lock:
            gone = [address for address in addresses if address in self.held]
            self.held.difference_update(gone)
        self._batch([f"addr del {address}/32 dev {DEVICE}" for address in gone], "remove", tolerate_missing=True)

    def remove_all(self) -> None:
        self.remove(list(self.held))

    @staticmethod
    def reap_abandoned() -> int:
        """Remove the addresses and ranges of sessions whose process is gone (killed before it could clean up)."""
        _reap_abandoned_ranges()
        abandoned = [
            str(address)
            for address, label in addresses_in_use()
            if label.startswith(LABEL_PREFIX)
            and label[len(LABEL_PREFIX) :].isdigit()
            and not _pid_alive(int(label[len(LABEL_PREFIX) :]))
        ]
        commands = [f"addr del {address}/32 dev {DEVICE}" for address in abandoned]
        LoopbackAddresses._batch(commands, "remove", tolerate_missing=True)
        return len(abandoned)

    @staticmethod
    def _batch(commands: list[str], what: str, *, tolerate_missing: bool = False) -> dict[int, str]:
        """Run ``ip`` commands in one process; returns the failed ones: line number (from 1) -> error. Removals
        fail here on anything but an address already gone (when ``tolerate_missing``)."""
        if not commands:
            return {}
        result = _run_ip(["-force", "-batch", "-"], stdin="\n".join(commands) + "\n")
        failed: dict[int, str] = {}
        message = ""
        for line in result.stderr.splitlines():
            if line.startswith("Command failed -:"):
                failed[int(line.rsplit(":", 1)[1])] = message
                message = ""
            elif line.strip():
                message = line.strip()
        if result.returncode != 0 and not failed:
            raise AddressError(f"`ip -batch` failed: {result.stderr.strip()[-300:]}")
        if what == "remove":
            errors = [error for error in failed.values() if not (tolerate_missing and _address_missing(error))]
            if errors:
                raise AddressError(f"could not remove addresses on {DEVICE}: " + "; ".join(errors[:3]))
        return failed


def check_pod_network() -> None:
    """Prove that this process may add and remove addresses on ``lo``, or raise ``AddressError`` saying why."""
    probe = str(ipaddress.IPv4Network(plan_network().pod_cidr)[1])
    addresses = LoopbackAddresses()
    addresses.add([probe])
    addresses.remove_all()


class PodAddresses:
    """Pod IPs from the pod range, one per pod, held on ``lo`` while the pod's containers may run."""

    def __init__(self, pod_cidr: str, addresses: LoopbackAddresses, rng: random.Random | None = None) -> None:
        self._network = ipaddress.IPv4Network(pod_cidr)
        self._addresses = addresses
        # Numbering starts at a random place and goes on from there: an address is not given out again soon.
        self._next = (rng or random.SystemRandom()).randrange(self._network.num_addresses)
        self._lock = threading.Lock()

    def allocate(self) -> str:
        with self._lock:
            return self._allocate()

    def _allocate(self) -> str:
        for _ in range(self._network.num_addresses):
            candidate = self._network[self._next % self._network.num_addresses]
            self._next += 1
            if candidate.packed[-1] in (0, 255):
                continue
            address = str(candidate)
            if address in self._addresses.held:
                continue
            if not self._addresses.add([address]):
                return address
        raise AddressError(f"the pod range {self._network} has no free address")

    def release(self, address: str) -> None:
        self._addresses.remove([address])
