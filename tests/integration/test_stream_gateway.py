"""The stream gateway over real HTTP: a fake runner on loopback, the real Kubernetes API server (its TokenReview
and RBAC: the gateway runs as its ServiceAccount, readers are ServiceAccounts with real tokens), and httpx-sse as
the reader. The runner and the gateway are killed and restarted mid-stream."""

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import ServerSentEvent, aconnect_sse
from prometheus_client import REGISTRY

from agentrun_gateway.kube import READER_RETRY
from tests.harness.apiproxy import ApiProxy
from tests.harness.fake_stream_runner import FakeStreamRunner, LoggedEvent
from tests.harness.gateway import (
    ApiEndpoint,
    Gateway,
    as_log,
    fast_settings,
    gateway_endpoint,
    gateway_process,
    stream_token_secret,
)
from tests.harness.identities import grant_stream_token_to_gateway
from tests.harness.run_identity import AGENTRUN_API, RBAC_API, set_run_phase
from tests.harness.sse_client import dispatched_events
from tests.harness.testbed import KubeTestbed

pytestmark = pytest.mark.integration

RUN = "r1"
STREAM_TOKEN = "s3cret-stream-token"


def _agentrun(namespace: str, heartbeat: str = "1s") -> dict[str, Any]:
    return {
        "apiVersion": "agentrun.dev/v1alpha1",
        "kind": "AgentRun",
        "metadata": {"name": RUN, "namespace": namespace},
        "spec": {
            "instructions": "You relay.",
            "input": "Stream something.",
            "model": {"name": "test-model"},
            "maxExecutionTime": "1h",
            "maxIterations": 10,
            "streaming": {"heartbeatInterval": heartbeat},
        },
    }


@dataclass(frozen=True)
class Team:
    """The run's namespace on the real API server, the gateway's way there, and two readers' Kubernetes tokens:
    alice may get agentruns in the namespace, bob is authenticated with no RBAC on agentruns."""

    testbed: KubeTestbed
    namespace: str
    api: ApiEndpoint
    alice: str
    bob: str


def _create(testbed: KubeTestbed, path: str, body: dict[str, Any]) -> None:
    answer = testbed.admin.post(path, json=body)
    assert answer.status_code < 300, answer.text


def _account_token(testbed: KubeTestbed, namespace: str, name: str) -> str:
    core = f"/api/v1/namespaces/{namespace}"
    _create(testbed, f"{core}/serviceaccounts", {"metadata": {"name": name}})
    answer = testbed.admin.post(
        f"{core}/serviceaccounts/{name}/token",
        json={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}},
    )
    answer.raise_for_status()
    return str(answer.json()["status"]["token"])


@pytest.fixture
def kube(testbed: KubeTestbed, namespace: str, tmp_path: Path) -> Team:
    _create(testbed, f"/api/v1/namespaces/{namespace}/secrets", stream_token_secret(namespace, RUN, STREAM_TOKEN))
    grant_stream_token_to_gateway(testbed.admin, namespace, RUN)
    _create(testbed, f"{AGENTRUN_API}/namespaces/{namespace}/agentruns", _agentrun(namespace))
    set_run_phase(testbed, namespace, RUN, "Running")
    alice, bob = (_account_token(testbed, namespace, name) for name in ("alice", "bob"))
    rbac = f"{RBAC_API}/namespaces/{namespace}"
    rule = {"apiGroups": ["agentrun.dev"], "resources": ["agentruns"], "verbs": ["get"]}
    _create(testbed, f"{rbac}/roles", {"metadata": {"name": "run-reader"}, "rules": [rule]})
    _create(
        testbed,
        f"{rbac}/rolebindings",
        {
            "metadata": {"name": "alice-reads-runs"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "run-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "alice", "namespace": namespace}],
        },
    )
    return Team(testbed, namespace, gateway_endpoint(testbed, namespace, tmp_path), alice, bob)


@pytest.fixture
async def runner() -> AsyncIterator[FakeStreamRunner]:
    fake = FakeStreamRunner(STREAM_TOKEN, heartbeat_seconds=0.5)
    await fake.start()
    yield fake
    await fake.kill()


@pytest.fixture
async def gateway(kube: Team, runner: FakeStreamRunner) -> AsyncIterator[Gateway]:
    async with Gateway(fast_settings(kube.api, runner.port), kube.namespace, RUN) as served:
        yield served


async def _follow(
    client: httpx.AsyncClient,
    url: str,
    received: list[ServerSentEvent],
    token: str = STREAM_TOKEN,
    last_id: str | None = None,
    deadline_seconds: float = 20.0,
) -> int:
    """Read like a browser's EventSource: reconnect after any cut with Last-Event-ID, stop at
    `finished` or HTTP 204. Returns how many times it connected."""
    connects = 0
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline:
        headers = {"Authorization": f"Bearer {token}"}
        if last_id is not None:
            headers["Last-Event-ID"] = last_id
        connects += 1
        try:
            async with aconnect_sse(client, "GET", url, headers=headers) as source:
                if source.response.status_code == 204:
                    return connects
                assert source.response.status_code == 200, source.response.status_code
                assert source.response.headers["X-Accel-Buffering"] == "no"
                assert source.response.headers["Cache-Control"] == "no-cache"
                async for event in dispatched_events(source):
                    received.append(event)
                    if event.id:
                        last_id = event.id
                    if event.event == "finished":
                        return connects
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError(f"no `finished` within {deadline_seconds} s; got {len(received)} events")


def _upstream_log(runner: FakeStreamRunner) -> list[tuple[int, str, Any]]:
    return [(e.id, e.type, e.data) for e in runner.log]


async def _wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_reader_gets_the_exact_log_across_two_runner_kills_and_a_gateway_restart(
    gateway: Gateway, runner: FakeStreamRunner
) -> None:
    received: list[ServerSentEvent] = []
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0)) as client:
        reader = asyncio.create_task(_follow(client, gateway.url, received))

        async def emit(count: int) -> None:
            for _ in range(count):
                await runner.emit("token", {"text": f"t{len(runner.log) + 1}"})
                await asyncio.sleep(0.002)

        await emit(30)
        await _wait_for(lambda: len(received) >= 20)
        await runner.kill()  # the runner's pod dies mid-stream
        await emit(10)  # a replacement pod resumes and emits from its checkpoint
        await asyncio.sleep(0.2)
        await runner.start()
        await emit(30)
        await _wait_for(lambda: len(received) >= 60)
        await runner.kill()
        await asyncio.sleep(0.2)
        await runner.start()
        await emit(20)
        await _wait_for(lambda: len(received) >= 80)
        await gateway.restart()  # the client reconnects with Last-Event-ID
        await emit(20)
        await runner.emit("finished", {"phase": "Succeeded"})
        connects = await asyncio.wait_for(reader, 20)

    assert as_log(received) == _upstream_log(runner)
    assert connects >= 2  # the gateway restart cost the client one reconnect
    assert runner.connections >= 4  # the gateway re-attached after each runner kill and its own restart


async def test_events_a_restarted_runner_replays_from_its_checkpoint_are_not_repeated(
    gateway: Gateway, runner: FakeStreamRunner
) -> None:
    received: list[ServerSentEvent] = []
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0)) as client:
        reader = asyncio.create_task(_follow(client, gateway.url, received))
        for index in range(30):
            await runner.emit("token", {"n": index})
        await _wait_for(lambda: len(received) == 30)
        await runner.kill()
        runner.replay_from = 10  # the new pod's checkpoint is 20 events behind the reader
        await runner.start()
        for index in range(30, 40):
            await runner.emit("token", {"n": index})
        await runner.emit("finished", {"phase": "Succeeded"})
        await asyncio.wait_for(reader, 10)
    assert as_log(received) == _upstream_log(runner)
    assert runner.connections >= 2


async def test_relay_recovers_when_the_runs_stream_token_is_replaced(
    gateway: Gateway, runner: FakeStreamRunner, kube: Team
) -> None:
    received: list[ServerSentEvent] = []
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0)) as client:
        reader = asyncio.create_task(_follow(client, gateway.url, received, token=kube.alice))
        for index in range(5):
            await runner.emit("token", {"n": index})
        await _wait_for(lambda: len(received) == 5)
        await runner.kill()
        runner.token = "rotated-token"  # a recreated Secret; the gateway still caches the old token
        kube.testbed.admin.patch(
            f"/api/v1/namespaces/{kube.namespace}/secrets/{RUN}-stream-token",
            headers={"Content-Type": "application/merge-patch+json"},
            json=stream_token_secret(kube.namespace, RUN, "rotated-token"),
        ).raise_for_status()
        await runner.start()
        await runner.emit("finished", {"phase": "Succeeded"})
        await asyncio.wait_for(reader, 10)
    assert as_log(received) == _upstream_log(runner)


async def test_a_runner_event_past_the_limit_drops_that_connection_and_the_gateway_re_attaches(
    kube: Team, runner: FakeStreamRunner, caplog: pytest.LogCaptureFixture
) -> None:
    limit = 64 * 1024
    dropped_before = REGISTRY.get_sample_value("agentrun_gateway_upstream_too_large_total") or 0.0
    received: list[ServerSentEvent] = []
    async with (
        Gateway(fast_settings(kube.api, runner.port, upstream_max_event_bytes=limit), kube.namespace, RUN) as gateway,
        httpx.AsyncClient(timeout=httpx.Timeout(10.0)) as client,
    ):
        reader = asyncio.create_task(_follow(client, gateway.url, received))
        await runner.emit("token", {"text": "before"})
        await _wait_for(lambda: len(received) == 1)
        await runner.emit("tool_call", {"arguments": "x" * (4 * limit)})  # a broken runner's event
        await _wait_for(lambda: runner.connections >= 3)  # dropped, and re-attached to (with backoff) again
        assert len(received) == 1  # the reader only had heartbeats meanwhile
        # The runner's replacement pod serves the event within bounds; the reader goes on from event 1.
        runner.log[1] = LoggedEvent(2, "tool_call", {"arguments": "x"})
        await runner.emit("finished", {"phase": "Succeeded"})
        await asyncio.wait_for(reader, 10)

    assert as_log(received) == _upstream_log(runner)
    dropped = (REGISTRY.get_sample_value("agentrun_gateway_upstream_too_large_total") or 0.0) - dropped_before
    assert dropped >= 2
    assert any("AGENTRUN_GATEWAY_UPSTREAM_MAX_EVENT_BYTES" in record.getMessage() for record in caplog.records)


async def test_kubernetes_api_outage_answers_503(kube: Team, runner: FakeStreamRunner) -> None:
    # The gateway reaches the API server through the fault-injecting proxy, with its own token. An outage
    # outlasts the reader's retries (a single 500 is retried away).
    async with ApiProxy(kube.testbed.control_plane.url, ca_file=kube.testbed.control_plane.ca_file) as proxy:
        proxy.faults.inject(500, count=READER_RETRY.attempts, match=lambda request: request.kind == "Secret")
        through_proxy = ApiEndpoint(proxy.url, kube.api.token_file)
        async with (
            Gateway(fast_settings(through_proxy, runner.port), kube.namespace, RUN) as gateway,
            httpx.AsyncClient() as client,
        ):
            response = await client.get(gateway.url, headers={"Authorization": f"Bearer {STREAM_TOKEN}"})
        # The injected failures are what the gateway met: the Secret read, refused at the proxy at each attempt.
        assert proxy.requests.count(kind="Secret", verb="get") == READER_RETRY.attempts
        assert proxy.faults.pending == []
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "2"


async def test_a_single_kubernetes_api_error_is_retried_and_the_reader_served(
    kube: Team, runner: FakeStreamRunner
) -> None:
    async with ApiProxy(kube.testbed.control_plane.url, ca_file=kube.testbed.control_plane.ca_file) as proxy:
        proxy.faults.inject(503, count=1, match=lambda request: request.kind == "Secret")
        through_proxy = ApiEndpoint(proxy.url, kube.api.token_file)
        async with (
            Gateway(fast_settings(through_proxy, runner.port), kube.namespace, RUN) as gateway,
            httpx.AsyncClient() as client,
            client.stream("GET", gateway.url, headers={"Authorization": f"Bearer {STREAM_TOKEN}"}) as response,
        ):
            status = response.status_code
        assert proxy.requests.count(kind="Secret", verb="get") == 2
        assert proxy.faults.pending == []
    assert status == 200


async def test_reader_resuming_from_before_the_shared_feed_memory_is_served_on_its_own(
    kube: Team, runner: FakeStreamRunner
) -> None:
    first: list[ServerSentEvent] = []
    late: list[ServerSentEvent] = []
    async with (
        Gateway(fast_settings(kube.api, runner.port, feed_memory_events=5), kube.namespace, RUN) as gateway,
        httpx.AsyncClient(timeout=httpx.Timeout(10.0)) as client,
    ):
        first_reader = asyncio.create_task(_follow(client, gateway.url, first))
        for index in range(30):  # paced, so the first reader never lags behind the feed's memory
            await runner.emit("token", {"n": index})
            await _wait_for(lambda: len(first) == len(runner.log))
        late_reader = asyncio.create_task(_follow(client, gateway.url, late, last_id="2"))
        await _wait_for(lambda: len(late) == 28)
        await runner.emit("finished", {"phase": "Succeeded"})
        await asyncio.wait_for(asyncio.gather(first_reader, late_reader), 10)
    assert as_log(first) == _upstream_log(runner)
    assert as_log(late) == _upstream_log(runner)[2:]
    assert runner.connections == 2  # the shared feed, and the late reader's own


async def test_reader_leaving_an_idle_run_releases_its_upstream_connection(
    gateway: Gateway, runner: FakeStreamRunner
) -> None:
    baseline = REGISTRY.get_sample_value("agentrun_gateway_readers") or 0.0
    headers = {"Authorization": f"Bearer {STREAM_TOKEN}"}
    async with httpx.AsyncClient(timeout=10) as client, client.stream("GET", gateway.url, headers=headers) as response:
        assert response.status_code == 200
        await _wait_for(lambda: runner.open_streams == 1)
        assert REGISTRY.get_sample_value("agentrun_gateway_readers") == baseline + 1
    # the reader hung up on a run with nothing to say: no write to it would notice soon
    await _wait_for(lambda: runner.open_streams == 0, timeout=5)
    await _wait_for(lambda: REGISTRY.get_sample_value("agentrun_gateway_readers") == baseline, timeout=5)


async def test_hundred_concurrent_readers_each_get_the_whole_log(gateway: Gateway, runner: FakeStreamRunner) -> None:
    for index in range(20):
        await runner.emit("iteration", {"n": index})
    logs: list[list[ServerSentEvent]] = [[] for _ in range(100)]
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=httpx.Timeout(15.0), limits=limits) as client:
        readers = [asyncio.create_task(_follow(client, gateway.url, log)) for log in logs]
        await _wait_for(lambda: all(len(log) >= 20 for log in logs), timeout=20)
        for index in range(20):
            await runner.emit("token", {"n": index})
        await runner.emit("finished", {"phase": "Succeeded"})
        await asyncio.wait_for(asyncio.gather(*readers), 20)
    expected = _upstream_log(runner)
    assert all(as_log(log) == expected for log in logs)
    assert runner.connections == 1  # the readers share one upstream connection


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        (None, 401),
        ("Bearer wrong-token", 401),
        (f"Basic {STREAM_TOKEN}", 401),
        ("Bearer {bob}", 403),
    ],
    ids=["no-token", "wrong-token", "not-bearer", "kubernetes-user-without-rbac"],
)
async def test_readers_without_a_valid_token_or_rbac_are_refused(
    gateway: Gateway, kube: Team, authorization: str | None, status: int
) -> None:
    headers = {"Authorization": authorization.format(bob=kube.bob)} if authorization else {}
    async with httpx.AsyncClient() as client:
        response = await client.get(gateway.url, headers=headers)
    assert response.status_code == status
    assert STREAM_TOKEN not in response.text


async def test_kubernetes_user_allowed_by_rbac_reads_the_stream(
    gateway: Gateway, runner: FakeStreamRunner, kube: Team
) -> None:
    await runner.emit("iteration", {"n": 1})
    await runner.emit("finished", {"phase": "Succeeded"})
    received: list[ServerSentEvent] = []
    async with httpx.AsyncClient(timeout=10) as client:
        await _follow(client, gateway.url, received, token=kube.alice)
        missing = await client.get(
            gateway.url.replace(f"/{RUN}/", "/absent/"), headers={"Authorization": f"Bearer {kube.alice}"}
        )
    assert as_log(received) == _upstream_log(runner)
    assert missing.status_code == 404


async def test_reader_joining_after_the_end_gets_the_full_replay_then_204(
    gateway: Gateway, runner: FakeStreamRunner, kube: Team
) -> None:
    for index in range(15):
        await runner.emit("token", {"n": index})
    await runner.emit("finished", {"phase": "Succeeded"})
    set_run_phase(kube.testbed, kube.namespace, RUN, "Succeeded")
    received: list[ServerSentEvent] = []
    async with httpx.AsyncClient(timeout=10) as client:
        await _follow(client, gateway.url, received)
        again = await client.get(
            gateway.url, headers={"Authorization": f"Bearer {STREAM_TOKEN}", "Last-Event-ID": str(len(runner.log))}
        )
    assert as_log(received) == _upstream_log(runner)
    assert again.status_code == 204  # tells an EventSource to stop reconnecting


async def test_run_that_ends_while_its_runner_is_gone_closes_with_a_final_event(
    gateway: Gateway, runner: FakeStreamRunner, kube: Team
) -> None:
    for index in range(5):
        await runner.emit("token", {"n": index})
    received: list[ServerSentEvent] = []
    async with httpx.AsyncClient(timeout=10) as client:
        reader = asyncio.create_task(_follow(client, gateway.url, received))
        await _wait_for(lambda: len(received) == 5)
        await runner.kill()  # the pod fails and no replacement comes
        set_run_phase(kube.testbed, kube.namespace, RUN, "Failed")
        await asyncio.wait_for(reader, 10)
    assert as_log(received[:-1]) == _upstream_log(runner)
    final = received[-1]
    assert final.event == "finished"  # the gateway's own, without an id (the reader's position stays at 5)
    assert json.loads(final.data) == {"phase": "Failed", "reason": "RunEnded", "replay": "partial"}


async def test_idle_reader_gets_a_heartbeat_every_interval_while_the_runner_is_away(
    gateway: Gateway, runner: FakeStreamRunner
) -> None:
    await runner.kill()  # nothing upstream: the gateway keeps re-attaching, the reader sees heartbeats only
    heartbeat_times: list[float] = []
    other_lines: list[str] = []
    async with httpx.AsyncClient(timeout=10) as client:
        headers = {"Authorization": f"Bearer {STREAM_TOKEN}"}
        async with client.stream("GET", gateway.url, headers=headers) as response:
            assert response.status_code == 200
            opened = time.monotonic()
            async for line in response.aiter_lines():
                if line.startswith(":"):
                    heartbeat_times.append(time.monotonic())
                elif line:
                    other_lines.append(line)
                if len(heartbeat_times) == 3:
                    break
    gaps = [later - earlier for earlier, later in zip([opened, *heartbeat_times], heartbeat_times, strict=False)]
    assert other_lines == []
    assert max(gaps) <= 1.0 + 0.5  # heartbeatInterval 1s, with slack for a loaded machine


async def test_python_m_agentrun_gateway_serves_and_stops_on_sigterm(kube: Team, runner: FakeStreamRunner) -> None:
    await runner.emit("finished", {"phase": "Succeeded"})
    async with gateway_process(kube.api, runner.port, stderr=asyncio.subprocess.PIPE) as (process, port):
        received: list[ServerSentEvent] = []
        async with httpx.AsyncClient(timeout=5) as client:
            health = await client.get(f"http://127.0.0.1:{port}/healthz")
            assert health.text == "ok"
            await _follow(client, f"http://127.0.0.1:{port}/runs/{kube.namespace}/{RUN}/events", received)
        assert as_log(received) == _upstream_log(runner)
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 10) == 0
    assert process.stderr is not None
    assert STREAM_TOKEN not in (await process.stderr.read()).decode()
