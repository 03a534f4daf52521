"""A ClusterThrottlePool on the real control plane, served by the real kopf operator (in process, with its
own ServiceAccount and the chart's rules): runs of two namespaces share one budget, a namespace that was
not granted the RBAC verb ``use`` on the pool is refused with what to grant, and a provider 429 lowers
the rate that the pool's status shows."""

import asyncio
import base64
from collections.abc import Iterator
from typing import Any

import pytest

from agentrun_api import clusterthrottlepool, constants
from agentrun_api.contract import PERMIT_KEY_KEY, permit_key_secret_name
from agentrun_operator.permits.server import PermitServer
from agentrun_runner.throttle_remote import PoolForbiddenError, RemoteLimiter
from tests.harness.identities import operator_identity
from tests.harness.inprocess_operator import Cluster, eventually, running_operator
from tests.harness.testbed import KubeTestbed

pytestmark = pytest.mark.integration

RBAC = "/apis/rbac.authorization.k8s.io/v1"
POOLS = f"/apis/{constants.API_VERSION}/{clusterthrottlepool.PLURAL}"


def _create(testbed: KubeTestbed, path: str, obj: dict[str, Any]) -> None:
    answer = testbed.admin.post(path, json=obj)
    assert answer.status_code == 201, answer.text


def _run_secret(testbed: KubeTestbed, namespace: str, run: str) -> None:
    """The run's permit-key Secret: its credential at the permit server."""
    key = base64.b64encode(f"{run}-key".encode()).decode()
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": permit_key_secret_name(run)},
        "data": {PERMIT_KEY_KEY: key},
    }
    _create(testbed, f"/api/v1/namespaces/{namespace}/secrets", secret)


@pytest.fixture
def other_namespace(cluster: Cluster) -> Iterator[str]:
    """A second namespace whose runs' credentials the operator may read (as a cluster-wide install can)."""
    namespace = cluster.testbed.create_namespace("ctp-other", schedulable=False)
    operator_identity(cluster.testbed.control_plane).grant(namespace)
    yield namespace
    cluster.testbed.delete_namespace(namespace)


@pytest.fixture
def org_pool(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A ClusterThrottlePool of 1 call in flight, and the ClusterRole granting `use` on it (bound by tests)."""
    name = f"org-{abs(hash(request.node.name)) % 10**8}"
    pool = {
        "apiVersion": constants.API_VERSION,
        "kind": clusterthrottlepool.KIND,
        "metadata": {"name": name},
        "spec": {"maxRequestsInFlight": 1, "requestsPerMinute": 600},
    }
    _create(cluster.testbed, POOLS, pool)
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": f"use-{name}"},
        "rules": [
            {
                "apiGroups": [constants.GROUP],
                "resources": [clusterthrottlepool.PLURAL],
                "resourceNames": [name],
                "verbs": [clusterthrottlepool.USE_VERB],
            }
        ],
    }
    _create(cluster.testbed, f"{RBAC}/clusterroles", role)
    yield name
    admin = cluster.testbed.admin
    admin.delete(f"{POOLS}/{name}")
    admin.delete(f"{RBAC}/clusterroles/use-{name}")
    for binding in admin.get(f"{RBAC}/clusterrolebindings").json()["items"]:
        if binding["roleRef"]["name"] == f"use-{name}":
            admin.delete(f"{RBAC}/clusterrolebindings/{binding['metadata']['name']}")


def _allow_namespace(testbed: KubeTestbed, pool: str, namespace: str) -> None:
    """What an admin does to let every run of a namespace use the pool."""
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": f"use-{pool}-{namespace}"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": f"use-{pool}"},
        "subjects": [
            {"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": f"system:serviceaccounts:{namespace}"}
        ],
    }
    _create(testbed, f"{RBAC}/clusterrolebindings", binding)


def _limiter(server: PermitServer, namespace: str, run: str, pool: str) -> RemoteLimiter:
    return RemoteLimiter(
        server_url=f"http://127.0.0.1:{server.port}",
        namespace=namespace,
        pool=pool,
        run=run,
        token=f"{run}-key",
        cluster=True,
    )


def _pool_status(cluster: Cluster, pool: str) -> dict[str, Any]:
    answer = cluster.testbed.admin.get(f"{POOLS}/{pool}")
    answer.raise_for_status()
    status: dict[str, Any] = answer.json().get("status") or {}
    return status


async def test_runs_of_two_namespaces_share_one_cluster_pool(
    cluster: Cluster, other_namespace: str, org_pool: str
) -> None:
    for namespace, run in ((cluster.namespace, "run-a"), (other_namespace, "run-b")):
        _run_secret(cluster.testbed, namespace, run)
        _allow_namespace(cluster.testbed, org_pool, namespace)
    async with running_operator(cluster) as operator:
        server: PermitServer = operator.memo.permit_server
        first = _limiter(server, cluster.namespace, "run-a", org_pool)
        second = _limiter(server, other_namespace, "run-b", org_pool)
        held, _ = await first.acquire(max_wait_seconds=30)
        # One call in flight for the whole pool: the other namespace's run waits for this one's permit.
        waiting = asyncio.create_task(second.acquire(max_wait_seconds=30))
        await eventually(
            lambda: (s := _pool_status(cluster, org_pool)).get("queueDepth") == 1 and s.get("inFlight") == 1,
            message="the other namespace's call to queue behind the permit held",
        )
        await asyncio.sleep(1)
        assert not waiting.done()
        await held.release()
        granted, waited = await asyncio.wait_for(waiting, timeout=10)
        assert waited > 0
        await granted.release()
        for limiter in (first, second):
            await limiter.aclose()


async def test_a_namespace_not_granted_use_is_refused_saying_what_to_grant(
    cluster: Cluster, other_namespace: str, org_pool: str
) -> None:
    _run_secret(cluster.testbed, cluster.namespace, "allowed")
    _run_secret(cluster.testbed, other_namespace, "intruder")
    _allow_namespace(cluster.testbed, org_pool, cluster.namespace)
    async with running_operator(cluster) as operator:
        server: PermitServer = operator.memo.permit_server
        allowed = _limiter(server, cluster.namespace, "allowed", org_pool)
        intruder = _limiter(server, other_namespace, "intruder", org_pool)
        permit, _ = await allowed.acquire(max_wait_seconds=30)
        await permit.release()
        loop = asyncio.get_running_loop()
        asked_at = loop.time()
        with pytest.raises(PoolForbiddenError) as refused:
            await intruder.acquire(max_wait_seconds=30)
        assert loop.time() - asked_at < 5  # refused at once, not after its whole queue budget
        message = str(refused.value)
        assert f"namespace '{other_namespace}' may not use ClusterThrottlePool '{org_pool}'" in message
        assert f"system:serviceaccounts:{other_namespace}" in message
        assert "'use'" in message
        for limiter in (allowed, intruder):
            await limiter.aclose()


async def test_a_provider_429_lowers_the_cluster_pools_rate_in_its_status(cluster: Cluster, org_pool: str) -> None:
    _run_secret(cluster.testbed, cluster.namespace, "run-a")
    _allow_namespace(cluster.testbed, org_pool, cluster.namespace)
    async with running_operator(cluster) as operator:
        server: PermitServer = operator.memo.permit_server
        limiter = _limiter(server, cluster.namespace, "run-a", org_pool)
        permit, _ = await limiter.acquire(max_wait_seconds=30)
        await eventually(
            lambda: _pool_status(cluster, org_pool).get("currentRequestsPerMinute") == 600,
            message="the pool's status to show its declared rate",
        )
        limiter.penalize(0)  # the provider answered 429 without Retry-After
        await permit.release()
        status = await eventually(
            lambda: (s := _pool_status(cluster, org_pool)).get("currentRequestsPerMinute", 600) < 600 and s,
            message="the pool's status to show a lowered rate",
        )
        assert 300 <= status["currentRequestsPerMinute"] < 600  # halved, then climbing back
        await limiter.aclose()
