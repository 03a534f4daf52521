"""The real kopf operator with the ThrottlePool handlers, against an emulated Kubernetes API (kmock):
a declared pool is served by the permit server, and its live state reaches the pool's status."""

import asyncio
import base64
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import kmock as km
import kopf
import pytest
import yaml
from kubernetes.config import kube_config

from agentrun_operator.permits import handlers  # noqa: F401 - the import registers the ThrottlePool handlers
from agentrun_operator.permits.server import PermitServer
from agentrun_runner.throttle_remote import RemoteLimiter

pytestmark = pytest.mark.integration

POOLS = "/apis/agentrun.dev/v1alpha1/namespaces/team-a/throttlepools"
SECRETS = "/api/v1/namespaces/team-a/secrets"
VERBS = {"get", "list", "watch", "create", "patch", "update", "delete"}


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 20) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.1)
    assert await check(), what


def kubeconfig(url: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulated", "cluster": {"server": url}}],
        "users": [{"name": "operator", "user": {"token": "operator-token"}}],
        "contexts": [{"name": "emulated", "context": {"cluster": "emulated", "user": "operator"}}],
        "current-context": "emulated",
    }


async def test_a_declared_pool_grants_permits_and_shows_them_in_its_status(
    kmock: km.KubernetesEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kmock.resources["agentrun.dev/v1alpha1/throttlepools"] = km.ResourceInfo(
        kind="ThrottlePool", namespaced=True, subresources={"status"}, verbs=VERBS
    )
    kmock.resources["v1/secrets"] = km.ResourceInfo(kind="Secret", namespaced=True, verbs=VERBS)
    # The resources kopf looks for at start (it does not scan them: scanning is disabled below).
    kmock.resources["v1/namespaces"] = km.ResourceInfo(kind="Namespace", namespaced=False, verbs=VERBS)
    kmock.resources["apiextensions.k8s.io/v1/customresourcedefinitions"] = km.ResourceInfo(
        kind="CustomResourceDefinition", namespaced=False, verbs=VERBS
    )
    url = str(kmock.url).rstrip("/")
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump(kubeconfig(url)))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    # kopf logs in through the kubernetes library, which read KUBECONFIG once, at import.
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "kubeconfig"))
    monkeypatch.setenv("AGENTRUN_PERMIT_HOST", "127.0.0.1")
    monkeypatch.setenv("AGENTRUN_PERMIT_PORT", "0")
    monkeypatch.setenv("AGENTRUN_PERMIT_LEASE_SECONDS", "1")
    monkeypatch.setenv("AGENTRUN_POOL_STATUS_INTERVAL_SECONDS", "0.5")

    async with aiohttp.ClientSession(base_url=url) as api:
        token = base64.b64encode(b"run-1-token").decode()
        await api.post(SECRETS, json={"metadata": {"name": "run-1-stream-token"}, "data": {"token": token}})
        pool = {
            "apiVersion": "agentrun.dev/v1alpha1",
            "kind": "ThrottlePool",
            # What the API server would have filled in; the emulator stores bodies as given.
            "metadata": {
                "name": "shared",
                "namespace": "team-a",
                "generation": 1,
                "resourceVersion": "1",
                "uid": "u-1",
            },
            "spec": {"maxRequestsInFlight": 1, "requestsPerMinute": 600},
        }
        await api.post(POOLS, json=pool)

        async def status() -> dict[str, Any]:
            async with api.get(f"{POOLS}/shared") as response:
                body: dict[str, Any] = await response.json()
                return body.get("status") or {}

        memo = kopf.Memo()
        stop = asyncio.Event()
        settings = kopf.OperatorSettings()
        settings.posting.enabled = False
        settings.scanning.disabled = True
        operator = asyncio.create_task(
            kopf.operator(standalone=True, namespaces=["team-a"], memo=memo, settings=settings, stop_flag=stop)
        )
        try:
            await eventually(lambda: _is_set(memo), "the permit server started")
            server: PermitServer = memo.permit_server
            limiter = RemoteLimiter(
                server_url=f"http://127.0.0.1:{server.port}",
                namespace="team-a",
                pool="shared",
                run="run-1",
                token="run-1-token",
            )
            permit, _ = await limiter.acquire(max_wait_seconds=10)

            async def shows_in_flight() -> bool:
                current = await status()
                return current.get("inFlight") == 1 and current.get("grantedLastMinute") == 1

            await eventually(shows_in_flight, "status.inFlight became 1")
            await permit.release()
            await limiter.aclose()

            async def shows_released() -> bool:
                current = await status()
                return current.get("inFlight") == 0 and current.get("accepting") is True

            await eventually(shows_released, "status.inFlight went back to 0")
            assert (await status())["observedGeneration"] == 1
        finally:
            stop.set()
            await asyncio.wait_for(operator, timeout=10)


async def _is_set(memo: kopf.Memo) -> bool:
    return "permit_server" in memo
