"""The real kopf operator with the ThrottlePool handlers, against the emulated apiserver serving the generated
ThrottlePool CRD (its schema validates every object and status write): a declared pool is served by the
permit server, and its live state reaches the pool's status at a bounded rate."""

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import kopf
import pytest
from kubernetes.config import kube_config

from agentrun_operator.permits import handlers  # noqa: F401 - the import registers the ThrottlePool handlers
from agentrun_operator.permits.handlers import status_from_snapshot
from agentrun_operator.permits.pool import PoolSnapshot
from agentrun_operator.permits.server import PermitServer
from agentrun_runner.throttle_remote import RemoteLimiter
from tests.harness.apiserver import ApiServerSettings, EmulatedApiServer
from tests.integration.test_apiserver_clients import kubectl

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
POOLS = "/apis/agentrun.dev/v1alpha1/namespaces/team-a/throttlepools"
SECRETS = "/api/v1/namespaces/team-a/secrets"
STATUS_INTERVAL = 0.5


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 15) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.1)


async def test_a_declared_pool_grants_permits_and_shows_them_in_its_status(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = ApiServerSettings(namespaces=["team-a"])
    crd = REPO / "crds" / "throttlepools.agentrun.dev.yaml"
    async with EmulatedApiServer([crd], settings=settings) as apiserver:
        # kopf and the permit server log in through the kubernetes library, which read KUBECONFIG at import.
        monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(apiserver.kubeconfig_path))
        monkeypatch.setenv("KUBECONFIG", str(apiserver.kubeconfig_path))
        monkeypatch.setenv("AGENTRUN_PERMIT_HOST", "127.0.0.1")
        monkeypatch.setenv("AGENTRUN_PERMIT_PORT", "0")
        monkeypatch.setenv("AGENTRUN_PERMIT_LEASE_SECONDS", "1")
        monkeypatch.setenv("AGENTRUN_POOL_STATUS_INTERVAL_SECONDS", str(STATUS_INTERVAL))

        async with aiohttp.ClientSession(base_url=apiserver.url + "/") as api:
            token = base64.b64encode(b"run-1-token").decode()
            created = await api.post(
                SECRETS, json={"metadata": {"name": "run-1-stream-token"}, "data": {"token": token}}
            )
            assert created.status == 201
            pool = {
                "apiVersion": "agentrun.dev/v1alpha1",
                "kind": "ThrottlePool",
                "metadata": {"name": "shared", "namespace": "team-a"},
                "spec": {"maxRequestsInFlight": 1, "requestsPerMinute": 600},
            }
            created = await api.post(POOLS, json=pool)
            assert created.status == 201, await created.text()

            async def status() -> dict[str, Any]:
                async with api.get(f"{POOLS}/shared") as response:
                    body: dict[str, Any] = await response.json()
                    return body.get("status") or {}

            memo = kopf.Memo()
            stop = asyncio.Event()
            operator_settings = kopf.OperatorSettings()
            operator_settings.posting.enabled = False
            operator = asyncio.create_task(
                kopf.operator(
                    standalone=True, namespaces=["team-a"], memo=memo, settings=operator_settings, stop_flag=stop
                )
            )
            try:

                async def started() -> bool:
                    return "permit_server" in memo

                await eventually(started)
                server: PermitServer = memo.permit_server
                limiter = RemoteLimiter(
                    server_url=f"http://127.0.0.1:{server.port}",
                    namespace="team-a",
                    pool="shared",
                    run="run-1",
                    token="run-1-token",
                )
                measured_from = time.monotonic()
                writes_before = _status_writes(apiserver)
                permit, _ = await limiter.acquire(max_wait_seconds=10)

                async def shows_in_flight() -> bool:
                    current = await status()
                    return current.get("inFlight") == 1 and current.get("grantedLastMinute") == 1

                await eventually(shows_in_flight)
                await permit.release()
                await limiter.aclose()

                async def shows_released() -> bool:
                    current = await status()
                    return current.get("inFlight") == 0 and current.get("accepting") is True

                await eventually(shows_released)
                assert (await status())["observedGeneration"] == 1
                await asyncio.sleep(4 * STATUS_INTERVAL)  # an idle pool: nothing changes, nothing is written
                elapsed = time.monotonic() - measured_from
                assert 2 <= _status_writes(apiserver) - writes_before <= elapsed / STATUS_INTERVAL + 1
            finally:
                stop.set()
                await asyncio.wait_for(operator, timeout=10)


def _status_writes(apiserver: EmulatedApiServer) -> int:
    return apiserver.requests.count(verb="patch", resource="throttlepools", subresource="status")


async def test_kubectl_get_throttlepools_shows_in_flight_queue_and_rate(
    apiserver: EmulatedApiServer, tmp_path: Path
) -> None:
    code, out, err = await kubectl(apiserver, tmp_path, "apply", "-f", str(REPO / "examples" / "throttlepool.yaml"))
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
        ),
        generation=1,
        now=datetime.now(UTC),
    )
    pools = apiserver.store.resource("throttlepools")
    status = {key: value for key, value in live.items() if value is not None}
    apiserver.store.patch(
        pools, "default", "shared-openai", "application/merge-patch+json", {"status": status}, subresource="status"
    )
    code, out, err = await kubectl(apiserver, tmp_path, "get", "throttlepools")
    assert code == 0, err
    header, row = out.splitlines()
    assert header.split() == ["NAME", "IN-FLIGHT", "QUEUED", "RATE", "AGE"]
    assert row.split()[:4] == ["shared-openai", "4", "23", "58"]
    code, out, err = await kubectl(apiserver, tmp_path, "get", "tp", "-o", "wide")
    assert code == 0, err
    assert out.splitlines()[0].split() == ["NAME", "IN-FLIGHT", "QUEUED", "RATE", "AGE", "MAX-IN-FLIGHT", "RPM"]
    assert out.splitlines()[1].split()[5:] == ["4", "60"]
