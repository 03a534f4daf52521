"""Replay after the runner is gone: a real runner process checkpoints into ConfigMaps on the emulated API
server and exits; a reader joining the stream gateway afterwards gets the whole event log from the
checkpoint, then the end."""

import base64
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from httpx_sse import ServerSentEvent, aconnect_sse

from agentrun_gateway.server import create_app, create_runner
from agentrun_gateway.settings import GatewaySettings
from tests.harness.apiserver import EmulatedApiServer
from tests.harness.model_server import ModelServer, research_script
from tests.harness.runner import (
    STREAM_TOKEN,
    RunnerProcess,
    load_configmap_state,
    make_config,
    make_spec,
    runner_env,
    write_kubeconfig,
)

pytestmark = pytest.mark.integration

NAMESPACE = "default"  # the runner config's namespace (tests.harness.runner.make_config)
RUN = "demo"
MERGE_PATCH = "application/merge-patch+json"


def _agentrun() -> dict[str, Any]:
    return {
        "apiVersion": "agentrun.dev/v1alpha1",
        "kind": "AgentRun",
        "metadata": {"name": RUN, "namespace": NAMESPACE},
        "spec": {
            "instructions": "You research.",
            "input": "Compare the vendors.",
            "model": {"name": "scripted-model"},
            "maxExecutionTime": "5m",
            "maxIterations": 20,
            "streaming": {"heartbeatInterval": "1s"},
        },
    }


async def _read_all(url: str, token: str, last_id: int | None = None) -> tuple[int, list[ServerSentEvent]]:
    headers = {"Authorization": f"Bearer {token}"}
    if last_id is not None:
        headers["Last-Event-ID"] = str(last_id)
    events: list[ServerSentEvent] = []
    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(15.0)) as client,
        aconnect_sse(client, "GET", url, headers=headers) as source,
    ):
        if source.response.status_code != 200:
            return source.response.status_code, events
        async for event in source.aiter_sse():
            events.append(event)
            if event.event == "finished":
                break
    return 200, events


def _as_log(events: list[ServerSentEvent]) -> list[tuple[int, str, Any]]:
    return [(int(e.id), e.event, json.loads(e.data)) for e in events]


@pytest.fixture
async def ended_run(apiserver: EmulatedApiServer, tmp_path: Path) -> list[ServerSentEvent]:
    """The run, ended: its runner served the stream, checkpointed into ConfigMaps and exited. Yields the
    events a reader attached to the runner itself received."""
    store = apiserver.store
    with contextlib.suppress(Exception):  # the emulator may already have the namespace
        store.create(store.resource("namespaces"), None, {"metadata": {"name": NAMESPACE}})
    secret = {
        "metadata": {"name": f"{RUN}-stream-token", "namespace": NAMESPACE},
        "data": {"token": base64.b64encode(STREAM_TOKEN.encode()).decode()},
    }
    store.create(store.resource("secrets"), NAMESPACE, secret)
    store.create(store.resource("agentruns"), NAMESPACE, _agentrun())
    async with ModelServer(research_script()) as model:
        spec = make_spec(model.base_url, streaming={"enabled": True, "heartbeatInterval": "1s"})
        config = make_config(spec, tmp_path, store="ConfigMap", name=RUN)
        kubeconfig = write_kubeconfig(str(apiserver.url), tmp_path / "kubeconfig")
        env = runner_env(tmp_path, config, {"KUBECONFIG": str(kubeconfig), "AGENTRUN_RUNNER_SSE_LINGER_SECONDS": "2"})
        runner = await RunnerProcess(env).start()
        try:
            port = await runner.stream_port()
            status, direct = await _read_all(f"http://127.0.0.1:{port}/events", STREAM_TOKEN)
            assert status == 200
            assert await runner.wait() == 0, runner.output
        finally:
            await runner.close()
    # The runner's event log as its checkpoint holds it, for a resumed runner: what the stream served.
    state, problem = await load_configmap_state(config, kubeconfig)
    assert problem is None
    assert [(e.id, e.type, e.data) for e in state.events] == _as_log(direct)
    store.patch(
        store.resource("agentruns"),
        NAMESPACE,
        RUN,
        MERGE_PATCH,
        {"status": {"phase": "Succeeded"}},
        subresource="status",
    )
    return direct


@pytest.fixture
async def gateway_url(apiserver: EmulatedApiServer) -> AsyncIterator[str]:
    settings = GatewaySettings(
        host="127.0.0.1",
        port=0,
        upstream_url="http://127.0.0.1:9/events?run={namespace}/{name}",  # the runner is gone: nothing listens
        kube_api_url=str(apiserver.url),
        kube_token_file="",
        kube_ca_file="",
        reattach_initial_delay_seconds=0.05,
        reattach_max_delay_seconds=0.2,
        ended_drain_seconds=0.3,
        run_cache_seconds=0.05,
        shutdown_timeout_seconds=0.1,
    )
    runner = create_runner(create_app(settings), settings)  # no archive passed: the checkpoint archive
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/runs/{NAMESPACE}/{RUN}/events"
    finally:
        await runner.cleanup()


async def test_a_reader_joining_after_the_runner_exited_gets_the_whole_log_from_the_checkpoint(
    ended_run: list[ServerSentEvent], gateway_url: str
) -> None:
    status, replayed = await _read_all(gateway_url, STREAM_TOKEN)

    assert status == 200
    assert len(ended_run) > 5
    assert _as_log(replayed) == _as_log(ended_run)  # every event, same ids, same data
    assert replayed[-1].event == "finished"
    assert json.loads(replayed[-1].data)["outcome"] == "Succeeded"


async def test_a_reader_resuming_after_the_end_gets_only_what_it_missed(
    ended_run: list[ServerSentEvent], gateway_url: str
) -> None:
    middle = int(ended_run[len(ended_run) // 2].id)

    status, rest = await _read_all(gateway_url, STREAM_TOKEN, last_id=middle)

    assert status == 200
    assert _as_log(rest) == [entry for entry in _as_log(ended_run) if entry[0] > middle]


async def test_the_archive_is_refused_to_a_wrong_token(ended_run: list[ServerSentEvent], gateway_url: str) -> None:
    status, events = await _read_all(gateway_url, "not-the-stream-token")

    assert status == 401
    assert events == []
