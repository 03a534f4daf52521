"""The permit server checks a run's key against its permit-key Secret (never its stream token), read with the operator's own API
client and its ServiceAccount's token from the real API server, through the API proxy (which counts the reads and
fails them on demand)."""

import base64
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import kopf
import pytest

from agentrun_api import contract
from agentrun_operator.kube import KubeClient
from agentrun_operator.permits.credentials import CredentialLookupError, PermitKeyVerifier
from tests.harness.apiproxy import ApiProxy
from tests.harness.identities import operator_identity
from tests.harness.testbed import KubeTestbed

pytestmark = pytest.mark.integration


@dataclass
class Api:
    testbed: KubeTestbed
    proxy: ApiProxy
    team_a: str  # two namespaces the operator watches
    team_b: str

    def add_secret(self, namespace: str, name: str, token: str, key: str = contract.PERMIT_KEY_KEY) -> None:
        body = {"metadata": {"name": name}, "data": {key: base64.b64encode(token.encode()).decode()}}
        self.testbed.admin.post(f"/api/v1/namespaces/{namespace}/secrets", json=body).raise_for_status()


@pytest.fixture
async def api(testbed: KubeTestbed, namespace: str) -> AsyncIterator[tuple[Api, KubeClient]]:
    team_b = testbed.create_namespace("team-b")
    identity = operator_identity(testbed.control_plane)
    for watched in (namespace, team_b):
        identity.grant(watched)
    control_plane = testbed.control_plane
    try:
        async with ApiProxy(control_plane.url, ca_file=control_plane.ca_file) as proxy:
            kube = KubeClient(kopf.ConnectionInfo(server=proxy.url, scheme="Bearer", token=identity.token()))
            try:
                yield Api(testbed, proxy, namespace, team_b), kube
            finally:
                await kube.close()
    finally:
        testbed.delete_namespace(team_b)


async def test_only_the_runs_own_permit_key_is_accepted(api: tuple[Api, KubeClient]) -> None:
    cluster, core = api
    cluster.add_secret(cluster.team_a, "run-1-permit-key", "s3cret")
    verifier = PermitKeyVerifier(core, cache_seconds=60, clock=time.monotonic)
    assert await verifier.verify(cluster.team_a, "run-1", "s3cret")
    assert not await verifier.verify(cluster.team_a, "run-1", "guess")
    assert not await verifier.verify(cluster.team_b, "run-1", "s3cret")  # another namespace's run of that name
    assert not await verifier.verify(cluster.team_a, "run-2", "s3cret")  # no Secret at all
    assert cluster.proxy.upstream_errors == []


async def test_the_secret_is_read_once_per_cache_period(api: tuple[Api, KubeClient]) -> None:
    cluster, core = api
    cluster.add_secret(cluster.team_a, "run-1-permit-key", "s3cret")
    verifier = PermitKeyVerifier(core, cache_seconds=60, clock=time.monotonic)
    for _ in range(5):
        assert await verifier.verify(cluster.team_a, "run-1", "s3cret")
        assert not await verifier.verify(cluster.team_a, "run-1", "wrong")
    assert cluster.proxy.requests.count(kind="Secret", verb="get") == 1


async def test_an_api_server_failure_is_reported_as_retryable(api: tuple[Api, KubeClient]) -> None:
    cluster, core = api
    cluster.add_secret(cluster.team_a, "run-1-permit-key", "s3cret")
    cluster.proxy.faults.inject(500, count=100, match=lambda request: request.kind == "Secret")
    verifier = PermitKeyVerifier(core, cache_seconds=60, clock=time.monotonic)
    with pytest.raises(CredentialLookupError, match="HTTP 500"):
        await verifier.verify(cluster.team_a, "run-1", "s3cret")


async def test_the_runs_stream_token_is_refused(api: tuple[Api, KubeClient]) -> None:
    """Every reader of a run's stream holds its stream token; it must not buy permits or post penalties."""
    cluster, core = api
    cluster.add_secret(cluster.team_a, "run-1-permit-key", "the-runners-own-key")
    cluster.add_secret(cluster.team_a, "run-1-stream-token", "the-readers-token", key=contract.STREAM_TOKEN_KEY)
    verifier = PermitKeyVerifier(core, cache_seconds=60, clock=time.monotonic)
    assert not await verifier.verify(cluster.team_a, "run-1", "the-readers-token")
    assert await verifier.verify(cluster.team_a, "run-1", "the-runners-own-key")
    assert cluster.proxy.requests.count(kind="Secret", verb="get") == 1  # only the permit key was read
