"""The real kopf operator (in process, all its handlers) on the real control plane serving the generated
ThrottlePool CRD (its schema validates every object and status write): a declared pool is served by the
permit server, an edit of its limits takes effect live, and its state reaches the pool's status at a
bounded rate; pools carry no finalizer, so one is deleted even while no operator runs."""

import asyncio
import base64
import dataclasses
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agentrun_api import contract
from agentrun_operator.kube import KubeClient
from agentrun_operator.permits.pool import PoolLimits, PoolSnapshot, PoolTiming
from agentrun_operator.permits.server import PermitServer, PoolRegistry
from agentrun_operator.permits.status_writer import PoolStatusWriter, status_from_snapshot
from agentrun_operator.supervisors import LEGACY_FINALIZER
from agentrun_runner.throttle_remote import RemoteLimiter
from tests.harness.apiproxy import ApiProxy
from tests.harness.inprocess_operator import FAST, Cluster, eventually, running_operator
from tests.harness.kubectl import kubectl

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
STATUS_INTERVAL = FAST.permits.status_interval_seconds


def _limiter(cluster: Cluster, server: PermitServer, run: str) -> RemoteLimiter:
    return RemoteLimiter(
        server_url=f"http://127.0.0.1:{server.port}",
        namespace=cluster.namespace,
        pool="shared",
        run=run,
        token=f"{run}-token",
    )


def _declare(cluster: Cluster, runs: list[str], *, max_in_flight: int, finalizers: list[str] | None = None) -> None:
    """The runs' permit-key Secrets (their permit credentials) and the pool."""
    for run in runs:
        key = base64.b64encode(f"{run}-token".encode()).decode()
        cluster.create(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": contract.permit_key_secret_name(run)},
                "data": {contract.PERMIT_KEY_KEY: key},
            }
        )
    cluster.create(
        {
            "apiVersion": "agentrun.dev/v1alpha1",
            "kind": "ThrottlePool",
            "metadata": {"name": "shared", **({"finalizers": finalizers} if finalizers else {})},
            "spec": {"maxRequestsInFlight": max_in_flight, "requestsPerMinute": 600},
        }
    )


@dataclasses.dataclass(frozen=True)
class Admin:
    kubeconfig_path: Path


def _pool_status(cluster: Cluster) -> dict[str, Any]:
    pool = cluster.get("ThrottlePool", "shared")
    status: dict[str, Any] = (pool or {}).get("status") or {}
    return status


async def test_a_declared_pool_grants_permits_and_shows_them_in_its_status(cluster: Cluster, proxy: ApiProxy) -> None:
    _declare(cluster, ["run-1"], max_in_flight=1)
    async with running_operator(cluster) as operator:
        server: PermitServer = operator.memo.permit_server
        limiter = _limiter(cluster, server, "run-1")
        measured_from = time.monotonic()
        writes_before = _status_writes(proxy)
        permit, _ = await limiter.acquire(max_wait_seconds=10)
        await eventually(
            lambda: _pool_status(cluster).get("inFlight") == 1 and _pool_status(cluster).get("grantedLastMinute") == 1,
            message="the pool's status to show the permit in flight",
        )
        await permit.release()
        await limiter.aclose()
        await eventually(
            lambda: _pool_status(cluster).get("inFlight") == 0 and _pool_status(cluster).get("accepting") is True,
            message="the pool's status to show the permit back",
        )
        assert _pool_status(cluster)["observedGeneration"] == 1
        await asyncio.sleep(4 * STATUS_INTERVAL)  # an idle pool: nothing changes, nothing is written
        elapsed = time.monotonic() - measured_from
        assert 2 <= _status_writes(proxy) - writes_before <= elapsed / STATUS_INTERVAL + 1


async def test_raising_a_pools_limit_live_lets_a_waiting_call_through(cluster: Cluster) -> None:
    _declare(cluster, ["holder", "waiter"], max_in_flight=1)
    async with running_operator(cluster) as operator:
        server: PermitServer = operator.memo.permit_server
        holder, waiter = _limiter(cluster, server, "holder"), _limiter(cluster, server, "waiter")
        held, _ = await holder.acquire(max_wait_seconds=10)
        waiting = asyncio.create_task(waiter.acquire(max_wait_seconds=30))
        await eventually(lambda: _pool_status(cluster).get("queueDepth") == 1, message="the waiter to queue")
        assert not waiting.done()

        cluster.patch("ThrottlePool", "shared", {"spec": {"maxRequestsInFlight": 2}})

        # The edit reaches the permit server with no restart: the waiter gets a permit while the first is held.
        second, _ = await asyncio.wait_for(waiting, timeout=10)
        await eventually(
            lambda: _pool_status(cluster).get("inFlight") == 2 and _pool_status(cluster).get("observedGeneration") == 2,
            message="the pool's status to show two in flight under generation 2",
        )
        for permit in (held, second):
            await permit.release()
        for limiter in (holder, waiter):
            await limiter.aclose()


async def test_a_pool_is_deleted_at_once_while_no_operator_runs(cluster: Cluster) -> None:
    # After `helm uninstall` the operator is gone first: a finalizer would leave the pool Terminating.
    _declare(cluster, ["run-1"], max_in_flight=1)
    async with running_operator(cluster):
        await eventually(lambda: _pool_status(cluster).get("accepting") is True, message="the pool's first status")
        assert not (cluster.get("ThrottlePool", "shared") or {})["metadata"].get("finalizers")
    cluster.delete("ThrottlePool", "shared")
    assert cluster.get("ThrottlePool", "shared") is None


async def test_the_finalizer_an_earlier_version_left_on_a_pool_is_removed(cluster: Cluster) -> None:
    _declare(cluster, ["run-1"], max_in_flight=1, finalizers=[LEGACY_FINALIZER, "example.com/keep-me"])
    async with running_operator(cluster):
        await eventually(
            lambda: (
                (cluster.get("ThrottlePool", "shared") or {})["metadata"].get("finalizers") == ["example.com/keep-me"]
            ),
            message="kopf to remove its own finalizer and keep the other",
        )
        await eventually(lambda: _pool_status(cluster).get("accepting") is True, message="the pool's first status")


async def test_only_the_leader_writes_and_a_new_leader_rewrites_what_the_old_one_left(
    cluster: Cluster,
) -> None:
    _declare(cluster, [], max_in_flight=1)
    registry = PoolRegistry(PoolTiming(lease_seconds=0.0, max_penalty_seconds=600), asyncio.get_running_loop().time)
    registry.configure(cluster.namespace, "shared", PoolLimits(max_in_flight=1, requests_per_minute=600))
    kube = KubeClient(cluster.operator_connection())
    writer = PoolStatusWriter(kube, registry, interval_seconds=0.0)
    try:
        writer.track(cluster.namespace, "shared", generation=1, status={})
        registry.leading = False
        assert await writer.write_changed() == 0
        assert _pool_status(cluster) == {}

        registry.leading = True
        assert await writer.write_changed() == 1
        assert _pool_status(cluster)["inFlight"] == 0
        assert await writer.write_changed() == 0, "an unchanged status is not written again"

        # Another replica led for a while and left its own figures; this one takes over.
        registry.leading = False
        await writer.write_changed()
        cluster.patch("ThrottlePool", "shared", {"status": {"inFlight": 3, "queueDepth": 5}}, status=True)
        registry.leading = True
        assert await writer.write_changed() == 1
        assert (_pool_status(cluster)["inFlight"], _pool_status(cluster)["queueDepth"]) == (0, 0)

        cluster.delete("ThrottlePool", "shared")
        registry.leading = False
        await writer.write_changed()
        registry.leading = True
        assert await writer.write_changed() == 0, "a deleted pool is dropped, not retried"
    finally:
        await kube.close()


def _status_writes(proxy: ApiProxy) -> int:
    return proxy.requests.count(verb="patch", resource="throttlepools", subresource="status")


async def test_kubectl_get_throttlepools_shows_in_flight_queue_and_rate(cluster: Cluster, tmp_path: Path) -> None:
    admin = Admin(cluster.admin_kubeconfig(tmp_path / "admin.kubeconfig"))
    code, out, err = await kubectl(admin, tmp_path, "apply", "-f", str(REPO / "examples" / "throttlepool.yaml"))
    assert code == 0, err
    live = status_from_snapshot(
        PoolSnapshot(
            in_flight=4,
            queue_depth=23,
            waiting_runs=9,
            granted_last_minute=58,
            paused_for_seconds=0,
            opens_in_seconds=0,
            leases_expired_total=0,
            requests_per_minute=420.0,
            rate_decreases_total=1,
        ),
        generation=1,
        now=datetime.now(UTC),
    )
    status = {key: value for key, value in live.items() if value is not None}
    cluster.patch("ThrottlePool", "shared-openai", {"status": status}, status=True)
    code, out, err = await kubectl(admin, tmp_path, "get", "throttlepools")
    assert code == 0, err
    header, row = out.splitlines()
    assert header.split() == ["NAME", "IN-FLIGHT", "QUEUED", "RATE", "CURRENT-RPM", "AGE"]
    assert row.split()[:5] == ["shared-openai", "4", "23", "58", "420"]
    code, out, err = await kubectl(admin, tmp_path, "get", "tp", "-o", "wide")
    assert code == 0, err
    assert out.splitlines()[0].split() == [
        "NAME",
        "IN-FLIGHT",
        "QUEUED",
        "RATE",
        "CURRENT-RPM",
        "AGE",
        "MAX-IN-FLIGHT",
        "RPM",
    ]
    assert out.splitlines()[1].split()[6:] == ["4", "60"]
