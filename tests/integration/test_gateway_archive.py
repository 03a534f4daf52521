"""Replay after the runner is gone: a real runner process checkpoints into ConfigMaps on the API server, with its
own ServiceAccount's rights, and exits; a reader joining the stream gateway afterwards gets the whole event log from the
checkpoint, then the end."""

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from httpx_sse import ServerSentEvent

from agentrun_api.contract import checkpoint_segment_name
from tests.harness.gateway import (
    as_log,
    gateway_after_the_runner,
    gateway_endpoint,
    read_runner_stream_to_end,
    read_until_finished,
)
from tests.harness.model_server import ModelServer, research_script
from tests.harness.run_identity import list_configmaps, provision_run, recreate_run, set_owner, set_run_phase
from tests.harness.runner import STREAM_TOKEN, load_configmap_state, make_config, make_spec, runner_env
from tests.harness.testbed import KubeTestbed

pytestmark = pytest.mark.integration

RUN = "demo"


@pytest.fixture
async def ended_run(testbed: KubeTestbed, namespace: str, tmp_path: Path) -> list[ServerSentEvent]:
    """The run, ended: its runner served the stream, checkpointed into ConfigMaps and exited. Yields the
    events a reader attached to the runner itself received."""
    async with ModelServer(research_script()) as model:
        spec = make_spec(
            model.base_url, streaming={"enabled": True, "heartbeatInterval": "1s"}, checkpoint={"store": "ConfigMap"}
        )
        run = provision_run(testbed, namespace, spec, tmp_path, name=RUN, stream_token=STREAM_TOKEN)
        config = make_config(spec, tmp_path, store="ConfigMap", namespace=namespace, name=RUN, uid=run.uid)
        env = runner_env(
            tmp_path, config, {"KUBECONFIG": str(run.kubeconfig), "AGENTRUN_RUNNER_SSE_LINGER_SECONDS": "2"}
        )
        direct = await read_runner_stream_to_end(env, STREAM_TOKEN)
    # The runner's event log as its checkpoint holds it, for a resumed runner: what the stream served.
    state, problem = await load_configmap_state(config, run.kubeconfig)
    assert problem is None
    assert [(e.id, e.type, e.data) for e in state.events] == as_log(direct)
    set_run_phase(testbed, namespace, RUN, "Succeeded")
    return direct


@pytest.fixture
async def gateway_url(testbed: KubeTestbed, namespace: str, tmp_path: Path) -> AsyncIterator[str]:
    api = gateway_endpoint(testbed, namespace, tmp_path)
    async with gateway_after_the_runner(api, namespace, RUN) as url:
        yield url


async def test_a_reader_joining_after_the_runner_exited_gets_the_whole_log_from_the_checkpoint(
    ended_run: list[ServerSentEvent], gateway_url: str
) -> None:
    status, replayed = await read_until_finished(gateway_url, STREAM_TOKEN)

    assert status == 200
    assert len(ended_run) > 5
    assert as_log(replayed) == as_log(ended_run)  # every event, same ids, same data
    assert replayed[-1].event == "finished"
    assert json.loads(replayed[-1].data)["outcome"] == "Succeeded"


async def test_a_reader_resuming_after_the_end_gets_only_what_it_missed(
    ended_run: list[ServerSentEvent], gateway_url: str
) -> None:
    middle = int(ended_run[len(ended_run) // 2].id)

    status, rest = await read_until_finished(gateway_url, STREAM_TOKEN, last_id=middle)

    assert status == 200
    assert as_log(rest) == [entry for entry in as_log(ended_run) if entry[0] > middle]


async def test_the_archive_is_refused_to_a_wrong_token(ended_run: list[ServerSentEvent], gateway_url: str) -> None:
    status, events = await read_until_finished(gateway_url, "not-the-stream-token")

    assert status == 401
    assert events == []


def only_the_gateways_end(events: list[ServerSentEvent]) -> dict[str, object]:
    """The one event a reader gets when nothing of the run can be replayed: the gateway's own ``finished``."""
    assert [(e.event, e.id) for e in events] == [("finished", "")]
    end: dict[str, object] = json.loads(events[0].data)
    return end


async def test_a_new_run_of_the_same_name_is_not_served_what_the_deleted_one_left(
    ended_run: list[ServerSentEvent], gateway_url: str, testbed: KubeTestbed, namespace: str
) -> None:
    segments = [
        cm["metadata"]["name"] for cm in list_configmaps(testbed, namespace, checkpoint_segment_name(RUN, 0)[:-1])
    ]
    assert segments  # the deleted run's checkpoint stays until the garbage collector gets to it
    recreate_run(testbed, namespace, RUN)
    set_run_phase(testbed, namespace, RUN, "Failed")

    status, replayed = await read_until_finished(gateway_url, STREAM_TOKEN)

    assert status == 200
    assert only_the_gateways_end(replayed) == {"phase": "Failed", "reason": "RunEnded", "replay": "unavailable"}


async def test_checkpoint_records_of_another_uid_are_not_served_even_from_a_configmap_the_run_owns(
    ended_run: list[ServerSentEvent], gateway_url: str, testbed: KubeTestbed, namespace: str
) -> None:
    uid = recreate_run(testbed, namespace, RUN)
    set_run_phase(testbed, namespace, RUN, "Failed")
    # Planted: segments the new run owns, holding records bound to the deleted run's uid.
    for cm in list_configmaps(testbed, namespace, checkpoint_segment_name(RUN, 0)[:-1]):
        set_owner(testbed, namespace, cm["metadata"]["name"], RUN, uid)

    status, replayed = await read_until_finished(gateway_url, STREAM_TOKEN)

    assert status == 200
    assert only_the_gateways_end(replayed)["replay"] == "unavailable"
