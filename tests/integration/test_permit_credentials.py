"""The permit server checks a run's token against its stream-token Secret, read with the operator's own
API client from an API endpoint on loopback that serves Secrets (the only thing the verifier reads)."""

import base64
import time
from collections.abc import AsyncIterator

import kopf
import pytest
from aiohttp import web

from agentrun_operator.kube import KubeClient
from agentrun_operator.permits.credentials import CredentialLookupError, StreamTokenVerifier

pytestmark = pytest.mark.integration


class SecretsEndpoint:
    def __init__(self) -> None:
        self.secrets: dict[tuple[str, str], dict[str, str]] = {}
        self.reads = 0
        self.failing = False

    async def read_secret(self, request: web.Request) -> web.Response:
        self.reads += 1
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        if self.failing:
            return web.json_response({"kind": "Status", "code": 500, "message": "etcd is sad"}, status=500)
        data = self.secrets.get((namespace, name))
        if data is None:
            return web.json_response(
                {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404},
                status=404,
            )
        return web.json_response(
            {
                "kind": "Secret",
                "apiVersion": "v1",
                "metadata": {"name": name, "namespace": namespace},
                "data": {key: base64.b64encode(value.encode()).decode() for key, value in data.items()},
            }
        )


@pytest.fixture
async def api() -> AsyncIterator[tuple[SecretsEndpoint, KubeClient]]:
    endpoint = SecretsEndpoint()
    app = web.Application()
    app.router.add_get("/api/v1/namespaces/{namespace}/secrets/{name}", endpoint.read_secret)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    kube = KubeClient(kopf.ConnectionInfo(server=f"http://127.0.0.1:{runner.addresses[0][1]}"))
    try:
        yield endpoint, kube
    finally:
        await kube.close()
        await runner.cleanup()


async def test_only_the_runs_own_stream_token_is_accepted(api: tuple[SecretsEndpoint, KubeClient]) -> None:
    endpoint, core = api
    endpoint.secrets[("team-a", "run-1-stream-token")] = {"token": "s3cret"}
    verifier = StreamTokenVerifier(core, cache_seconds=60, clock=time.monotonic)
    assert await verifier.verify("team-a", "run-1", "s3cret")
    assert not await verifier.verify("team-a", "run-1", "guess")
    assert not await verifier.verify("team-b", "run-1", "s3cret")  # another namespace's run of that name
    assert not await verifier.verify("team-a", "run-2", "s3cret")  # no Secret at all


async def test_the_secret_is_read_once_per_cache_period(api: tuple[SecretsEndpoint, KubeClient]) -> None:
    endpoint, core = api
    endpoint.secrets[("team-a", "run-1-stream-token")] = {"token": "s3cret"}
    verifier = StreamTokenVerifier(core, cache_seconds=60, clock=time.monotonic)
    for _ in range(5):
        assert await verifier.verify("team-a", "run-1", "s3cret")
        assert not await verifier.verify("team-a", "run-1", "wrong")
    assert endpoint.reads == 1


async def test_an_api_server_failure_is_reported_as_retryable(api: tuple[SecretsEndpoint, KubeClient]) -> None:
    endpoint, core = api
    endpoint.failing = True
    verifier = StreamTokenVerifier(core, cache_seconds=60, clock=time.monotonic)
    with pytest.raises(CredentialLookupError, match="HTTP 500"):
        await verifier.verify("team-a", "run-1", "s3cret")
