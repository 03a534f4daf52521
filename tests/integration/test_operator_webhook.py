"""The completion webhook: delivered after the end, retried with backoff, signed, recorded apart from the phase."""

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from agentrun_api import conditions as c
from agentrun_operator import webhook
from agentrun_operator.policy import Policy
from tests.harness.inprocess_operator import FAST, Cluster, eventually, run_manifest, running_operator

pytestmark = pytest.mark.integration

SIGNING_KEY = b"whsec-integration-test"


class Receiver:
    """A webhook receiver on 127.0.0.1 that fails the first `failures` deliveries with 503."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.deliveries: list[dict[str, Any]] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.deliveries.append({"headers": dict(request.headers), "body": body})
        if len(self.deliveries) <= self.failures:
            return web.Response(status=503)
        return web.Response(status=204)


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    hook = Receiver(failures=2)
    app = web.Application()
    app.router.add_post("/hooks/agentrun", hook.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield hook, f"http://127.0.0.1:{port}/hooks/agentrun"
    finally:
        await runner.cleanup()


def add_signing_key(cluster: Cluster) -> None:
    """The model's API key and the webhook signing key (Secret `hook-key`, key `key`)."""
    cluster.add_api_key_secret()
    cluster.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "hook-key"},
            "stringData": {"key": SIGNING_KEY.decode()},
        }
    )


async def start_run_with_webhook(cluster: Cluster, url: str, *, max_attempts: int) -> str:
    """Run q3 with a signed completion webhook to `url`, its Job created and its pod running; returns the pod."""
    cluster.create(
        run_manifest(
            completionWebhook={
                "url": url,
                "signingKeySecretRef": {"name": "hook-key", "key": "key"},
                "maxAttempts": max_attempts,
            }
        )
    )
    await eventually(lambda: cluster.get("Job", "q3-runner"))
    return await cluster.start_pod()


def report_succeeded(cluster: Cluster, pod: str, *, iteration: int) -> None:
    """The runner's last progress report: the run succeeded with a stored result."""
    cluster.report(
        iteration=iteration,
        pod=pod,
        outcome="Succeeded",
        result={"summary": "done", "ref": "configmap/q3-ckpt-0#result", "bytes": 4},
    )


async def test_webhook_is_retried_until_delivered_and_every_attempt_is_signed(
    cluster: Cluster, receiver: tuple[Receiver, str]
) -> None:
    hook, url = receiver
    add_signing_key(cluster)
    async with running_operator(cluster):
        pod = await start_run_with_webhook(cluster, url, max_attempts=4)
        report_succeeded(cluster, pod, iteration=4)
        await eventually(lambda: (cluster.status().get("notification") or {}).get("delivered"), message="delivered")

    notification = cluster.status()["notification"]
    assert notification["attempts"] == 3
    assert cluster.status()["phase"] == "Succeeded"
    notified = cluster.condition(c.NOTIFIED)
    assert notified is not None
    assert (notified["status"], notified["reason"]) == ("True", c.REASON_DELIVERED)
    assert len(hook.deliveries) == 3
    event_ids = {d["headers"][webhook.EVENT_ID_HEADER] for d in hook.deliveries}
    assert event_ids == {notification["eventId"]}
    for delivery in hook.deliveries:
        headers = delivery["headers"]
        assert webhook.verify(
            SIGNING_KEY, headers[webhook.TIMESTAMP_HEADER], delivery["body"], headers[webhook.SIGNATURE_HEADER]
        )
        assert not webhook.verify(
            b"wrong-key", headers[webhook.TIMESTAMP_HEADER], delivery["body"], headers[webhook.SIGNATURE_HEADER]
        )
    document = json.loads(hook.deliveries[-1]["body"])
    assert (document["phase"], document["run"]["name"], document["result"]["summary"]) == ("Succeeded", "q3", "done")
    assert SIGNING_KEY.decode() not in json.dumps(cluster.run())


async def test_webhook_gives_up_after_max_attempts_without_touching_the_phase(
    cluster: Cluster, receiver: tuple[Receiver, str]
) -> None:
    hook, url = receiver
    hook.failures = 100
    add_signing_key(cluster)
    async with running_operator(cluster):
        pod = await start_run_with_webhook(cluster, url, max_attempts=2)
        cluster.report(iteration=1, pod=pod, outcome="ModelRequestRejected")
        await eventually(lambda: (cluster.status().get("notification") or {}).get("attempts") == 2)
        await eventually(lambda: c.REASON_DELIVERY_FAILED in cluster.event_reasons())

    assert len(hook.deliveries) == 2
    status = cluster.status()
    assert (status["phase"], status["reason"]) == ("Failed", c.REASON_MODEL_REJECTED)
    assert status["notification"]["delivered"] is False
    assert "HTTP 503" in status["notification"]["lastError"]
    notified = cluster.condition(c.NOTIFIED)
    assert notified is not None
    assert notified["status"] == "False"


@pytest.fixture
async def redirecting_receiver() -> AsyncIterator[tuple[list[str], str]]:
    """A loopback server whose webhook path answers 307 to a second path that would accept the POST."""
    reached: list[str] = []

    async def redirect(request: web.Request) -> web.Response:
        reached.append(request.path)
        raise web.HTTPTemporaryRedirect("/landing?token=from-the-location")

    async def landing(request: web.Request) -> web.Response:
        reached.append(request.path)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hooks/agentrun", redirect)
    app.router.add_post("/landing", landing)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield reached, f"http://127.0.0.1:{port}/hooks/agentrun"
    finally:
        await runner.cleanup()


async def test_a_redirect_is_a_failed_delivery_and_is_never_followed(
    cluster: Cluster, redirecting_receiver: tuple[list[str], str]
) -> None:
    reached, url = redirecting_receiver
    add_signing_key(cluster)
    async with running_operator(cluster):
        pod = await start_run_with_webhook(cluster, url, max_attempts=2)
        report_succeeded(cluster, pod, iteration=1)
        await eventually(lambda: (cluster.status().get("notification") or {}).get("attempts") == 2)

    assert reached == ["/hooks/agentrun", "/hooks/agentrun"]  # the Location was never posted to
    notification = cluster.status()["notification"]
    assert notification["delivered"] is False
    assert "HTTP 307 redirect" in notification["lastError"]
    assert "redirects are not followed" in notification["lastError"]
    assert "from-the-location" not in json.dumps(cluster.run())
    notified = cluster.condition(c.NOTIFIED)
    assert notified is not None
    assert (notified["status"], notified["reason"]) == ("False", c.REASON_DELIVERY_FAILED)


async def test_a_webhook_host_the_policy_no_longer_allows_is_not_posted_to(
    cluster: Cluster, receiver: tuple[Receiver, str]
) -> None:
    """A run admitted under an open policy, delivered after the policy was narrowed (operator restarted)."""
    hook, url = receiver
    add_signing_key(cluster)
    narrowed = dataclasses.replace(FAST, policy=Policy(allowed_webhook_hosts=("hooks.example.com",)))
    async with running_operator(cluster):
        pod = await start_run_with_webhook(cluster, url, max_attempts=1)
    report_succeeded(cluster, pod, iteration=1)
    async with running_operator(cluster, narrowed):
        await eventually(lambda: (cluster.status().get("notification") or {}).get("attempts") == 1)

    assert hook.deliveries == []
    assert "not allowed by the operator's policy" in cluster.status()["notification"]["lastError"]


async def test_a_run_refused_by_the_policy_is_never_notified_even_after_an_operator_restart(
    cluster: Cluster, receiver: tuple[Receiver, str]
) -> None:
    """Refused at admission, it never ran: like a run with an invalid spec, its webhook stays silent."""
    hook, url = receiver
    add_signing_key(cluster)
    refusing = dataclasses.replace(FAST, policy=Policy(allowed_images=("registry.example/*",)))
    cluster.create(
        run_manifest(
            runner={"image": "docker.io/someone/else:1"},
            completionWebhook={"url": url, "signingKeySecretRef": {"name": "hook-key", "key": "key"}},
        )
    )
    async with running_operator(cluster, refusing):
        await eventually(lambda: cluster.status().get("reason") == "PolicyViolation", message="refused")
    async with running_operator(cluster, refusing):  # a new operator supervises the ended run afresh
        await asyncio.sleep(2.0)  # four supervise intervals: time for a delivery that must not happen

    assert hook.deliveries == []
    assert "notification" not in cluster.status()
    assert cluster.get("Job", "q3-runner") is None
