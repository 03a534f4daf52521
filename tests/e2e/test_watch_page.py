"""The watch page in a real headless Chromium, on the real control plane with the real operator: it follows a
run live through a dropped connection (a gateway restart) and a runner SIGKILL, and what it shows at the end is
the run's event log, event for event, as the gateway's stream gives it from id 0. What the agent wrote is shown
as text, never run as HTML. Signing in puts no token in a URL."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.runs import needs_scripted_model
from tests.e2e.test_stream_log import stream_token
from tests.harness.agentruns import agent_run, agentruns_path, runner_pods, wait_for_end, wait_for_status
from tests.harness.chromium import chromium_tab, needs_chromium
from tests.harness.gateway import Gateway, as_log, fast_settings, gateway_endpoint, read_until_finished
from tests.harness.local_cluster import LocalCluster
from tests.harness.model_server import Answer, by_turn, call
from tests.harness.nodeagent.kube import KubeClient
from tests.harness.podnet.resolver import ClusterResolver
from tests.harness.watch_page import RENDERED, as_shown, sign_in, watch_url

pytestmark = pytest.mark.e2e

# What an agent may well write; the page must show it as these characters.
HOSTILE = '<script>window.__xss = "script"</script><img src=x onerror="window.__xss = \'img\'"> & "quoted"'
LONG_ANSWER = " ".join(f"w{i}" for i in range(60))
SCRIPT = by_turn(
    [
        Answer(
            content=f"Notes first: {HOSTILE} then the rest.",
            tool_calls=[call("write_file", path="notes.md", content=HOSTILE)],
            chunk_delay=0.03,
        ),
        Answer(content=LONG_ANSWER, tool_calls=[call("read_file", path="notes.md")], chunk_delay=0.1),
        Answer(content="Done: the notes are in notes.md.", chunk_delay=0.02),
    ]
)


@pytest.fixture
def cluster(operator_process_cluster: LocalCluster) -> LocalCluster:
    """The operator as a child process (conftest.operator_process_cluster): the page's gateway runs in-process
    as the harness's gateway identity."""
    return operator_process_cluster


@contextlib.asynccontextmanager
async def served_gateway(cluster: LocalCluster, tmp_path: Path, run: str) -> AsyncIterator[Gateway]:
    """The stream gateway in-process, with its real ServiceAccount and its default upstream: the run's stream
    Service by its cluster DNS name, resolved as in a pod, routed to the runner pod behind it."""
    api = gateway_endpoint(cluster.testbed, cluster.namespace, tmp_path)
    resolver = ClusterResolver(cluster.testbed.network_plan.dns_ip)
    try:
        async with Gateway(fast_settings(api, upstream_port=None), cluster.namespace, run, resolver) as gateway:
            yield gateway
    finally:
        await resolver.close()


@pytest.mark.timeout(180)
async def test_the_page_follows_a_run_through_a_dropped_connection_and_a_runner_kill_and_shows_its_log(
    cluster: LocalCluster, kube: KubeClient, tmp_path: Path
) -> None:
    needs_chromium()
    needs_scripted_model(cluster)
    assert cluster.model_server is not None
    cluster.model_server.script = SCRIPT
    run = agent_run(
        "watched",
        cluster,
        checkpoint={"store": "ConfigMap"},
        streaming={"enabled": True, "heartbeatInterval": "1s"},
    )
    run["spec"]["model"]["stream"] = True
    await kube.create(agentruns_path(cluster.namespace), run)
    token = await stream_token(kube, "watched")
    # Running: the operator has made the run's children, the gateway's grant on its stream token among them.
    await wait_for_status(kube, "watched", lambda s: s.get("phase") == "Running", "Running")

    async with served_gateway(cluster, tmp_path, "watched") as gateway, chromium_tab() as tab:
        # Signing in: the form posts the token in the body; the page comes back at a URL without it.
        await sign_in(tab, watch_url(gateway), token)

        # Live: the first tool call's result is on the page while the run is still going.
        await tab.wait_for("document.querySelector('#events [data-type=\"tool_result\"]') !== null", "a tool result")
        assert await tab.evaluate("document.getElementById('phase').textContent") == "Running"

        # A dropped connection: the gateway restarts; the page's EventSource comes back with Last-Event-ID.
        connections_before = len(gateway.resumed_from)
        await gateway.restart()
        position = await tab.wait_for(
            "document.getElementById('connection').textContent.match(/^reconnecting after event (\\d+)$/)?.[1]",
            "the page to notice the dropped connection",
        )
        await tab.wait_for(
            "document.getElementById('connection').textContent === 'live'", "the page to reconnect after the restart"
        )
        assert int(position) > 0
        async with asyncio.timeout(10):
            while len(gateway.resumed_from) == connections_before:
                await asyncio.sleep(0.05)
        assert gateway.resumed_from[connections_before] == int(position), (
            "the browser resumed after the last event it showed"
        )
        await tab.wait_for(
            """document.querySelectorAll('#events [data-type="iteration"]')[1]
                .querySelectorAll('[data-type="token"]').length >= 5""",
            "tokens of the second model call",
        )
        # A runner kill in the middle of the second model call's stream.
        [pod] = [p for p in await runner_pods(kube, "watched") if p["status"].get("phase") == "Running"]
        cluster.node.kill_pod_process(cluster.namespace, pod["metadata"]["name"])

        await tab.wait_for(
            "document.querySelector('#events [data-type=\"finished\"]') !== null",
            "the run's end on the page",
            timeout=120,
        )
        status = await wait_for_end(kube, "watched", timeout=60)
        assert status["phase"] == "Succeeded", status
        assert status["restarts"] == 1
        rendered = await tab.evaluate(RENDERED)
        texts = await tab.evaluate("document.getElementById('events').textContent")
        smuggled = await tab.evaluate(
            "[document.querySelectorAll('#events script, #events img').length, window.__xss ?? null]"
        )
        facts = await tab.evaluate(
            "['phase', 'progress', 'connection'].map((id) => document.getElementById(id).textContent)"
        )
        retried = await tab.evaluate("document.querySelectorAll('#events .message.superseded').length")

        status_code, log = await read_until_finished(gateway.url, token, last_id=0)
        assert status_code == 200
        assert tab.errors == []

    expected = as_shown(as_log(log))
    assert rendered == expected, "the page shows the run's log, every event once, in order"
    assert [event["id"] for event in rendered] == list(range(1, len(rendered) + 1))
    iterations = [e["fields"] for e in rendered if e["type"] == "iteration"]
    assert any(i.get("retry") == "true" for i in iterations), (iterations, status)
    assert retried == 1, "the lost call's text is marked as superseded by the retry's"
    assert facts == ["Succeeded", "3 / 10", "ended"]
    # The agent's markup is on the page as text, and none of it ran.
    assert HOSTILE in texts
    assert smuggled == [0, None]


async def test_signing_in_and_the_cookie_are_bound_to_the_run(
    cluster: LocalCluster, kube: KubeClient, tmp_path: Path
) -> None:
    needs_scripted_model(cluster)
    assert cluster.model_server is not None
    cluster.model_server.script = by_turn([Answer(content="short")])
    for name in ("mine", "other"):
        spec = agent_run(name, cluster, streaming={"enabled": True, "heartbeatInterval": "1s"})
        await kube.create(agentruns_path(cluster.namespace), spec)
    token = await stream_token(kube, "mine")
    for name in ("mine", "other"):  # by then the operator has granted the gateway the runs' stream tokens
        assert (await wait_for_end(kube, name))["phase"] == "Succeeded"
    async with (
        served_gateway(cluster, tmp_path, "mine") as gateway,
        httpx.AsyncClient(timeout=10, follow_redirects=False) as client,
    ):
        page = watch_url(gateway)
        other_page = page.replace("/mine/", "/other/")

        unsigned = await client.get(page)
        assert unsigned.status_code == 401
        assert 'name="token"' in unsigned.text
        refused = await client.post(page, data={"token": "not-a-token"})
        assert refused.status_code == 401
        assert "is neither" in refused.text

        signed = await client.post(page, data={"token": token})
        assert signed.status_code == 303
        assert signed.headers["Location"] == f"/runs/{cluster.namespace}/mine/watch"
        cookie = signed.cookies.get("agentrun-watch")
        assert cookie
        assert token not in cookie
        assert token not in signed.headers["Location"]
        set_cookie = signed.headers["Set-Cookie"]
        assert f"Path=/runs/{cluster.namespace}/mine/" in set_cookie
        assert "HttpOnly" in set_cookie
        assert "SameSite=Lax" in set_cookie

        client.cookies.clear()  # each request below sends the cookie it is given, and only that one
        jar = {"Cookie": f"agentrun-watch={cookie}"}
        watched = await client.get(page, headers=jar)
        assert watched.status_code == 200
        assert "script-src 'sha256-" in watched.headers["Content-Security-Policy"]
        assert '<ol id="events"' in watched.text
        async with client.stream("GET", gateway.url, headers=jar) as stream:
            assert stream.status_code == 200
            assert stream.headers["Content-Type"].startswith("text/event-stream")

        # The same cookie opens neither another run's page nor its stream.
        assert (await client.get(other_page, headers=jar)).status_code == 401
        other_stream = other_page.removesuffix("/watch") + "/events"
        assert (await client.get(other_stream, headers=jar)).status_code == 401
        # A forged or altered cookie is refused.
        expiry, _, mac = cookie.partition(".")
        forged = f"{int(expiry) + 3600}.{mac}"
        assert (await client.get(page, headers={"Cookie": f"agentrun-watch={forged}"})).status_code == 401
        # An Authorization header signs in too (what an authenticating proxy in front would send).
        by_header = await client.get(page, headers={"Authorization": f"Bearer {token}"})
        assert by_header.status_code == 200
        assert by_header.cookies.get("agentrun-watch")
