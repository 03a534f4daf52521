"""Replay after the end for a run whose checkpoint is on a PVC: the real runner process checkpoints to its
volume, serves its stream and, once the run has ended, archives its event log into ConfigMaps on the
API server; after the runner is gone, a reader of the stream gateway gets the whole log from
that archive. The runner does this with exactly the rights its operator-built Role grants, and deleting
the AgentRun collects the archive."""

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from httpx_sse import ServerSentEvent

from agentrun_api import constants, contract
from agentrun_api.contract import PROGRESS_KEY, Outcome, ProgressReport
from agentrun_api.spec import AgentRunSpec
from agentrun_common.eventlog.archive import MANIFEST_KEY, read_manifest
from tests.harness.gateway import (
    as_log,
    gateway_after_the_runner,
    gateway_endpoint,
    read_runner_stream_to_end,
    read_until_finished,
)
from tests.harness.model_server import ModelServer, research_script
from tests.harness.run_identity import AGENTRUN_API, list_configmaps, provision_run, recreate_run, set_run_phase
from tests.harness.runner import API_KEY, STREAM_TOKEN, load_state, make_config, make_spec, runner_env
from tests.harness.testbed import KubeTestbed

pytestmark = pytest.mark.integration

RUN = "pvcrun"


def _archive(testbed: KubeTestbed, namespace: str) -> list[dict[str, Any]]:
    return list_configmaps(testbed, namespace, contract.events_archive_name(RUN, 0)[:-1])


class EndedPvcRun:
    def __init__(
        self,
        direct: list[ServerSentEvent],
        log: list[tuple[int, str, Any]],
        spec: AgentRunSpec,
        uid: str,
        output: list[str],
    ) -> None:
        self.direct = direct  # what a reader attached to the runner itself received
        self.log = log  # the runner's event log, as its PVC checkpoint holds it
        self.spec = spec
        self.uid = uid  # the AgentRun's
        self.output = output  # the runner process's log lines


@pytest.fixture
async def ended_pvc_run(testbed: KubeTestbed, namespace: str, tmp_path: Path) -> EndedPvcRun:
    async with ModelServer(research_script()) as model:
        spec = make_spec(
            model.base_url,
            streaming={"enabled": True, "heartbeatInterval": "1s"},
            checkpoint={"store": "PersistentVolumeClaim"},
        )
        # The runner's ServiceAccount with exactly the Role the operator builds for this spec.
        run = provision_run(testbed, namespace, spec, tmp_path, name=RUN, stream_token=STREAM_TOKEN)
        config = make_config(spec, tmp_path, store="PersistentVolumeClaim", namespace=namespace, name=RUN, uid=run.uid)
        # As in a pod: Kubernetes access, progress into the <run>-progress ConfigMap (no local file).
        extra = {
            "KUBECONFIG": str(run.kubeconfig),
            "AGENTRUN_RUNNER_PROGRESS_FILE": "",
            "AGENTRUN_RUNNER_SSE_LINGER_SECONDS": "0.5",
        }
        output: list[str] = []
        direct = await read_runner_stream_to_end(runner_env(tmp_path, config, extra), STREAM_TOKEN, output)
    state = await load_state(config)  # the runner's own log, from its checkpoint on the volume
    set_run_phase(testbed, namespace, RUN, "Succeeded")
    return EndedPvcRun(direct, [(e.id, e.type, e.data) for e in state.events], spec, run.uid, output)


@pytest.fixture
async def gateway_url(testbed: KubeTestbed, namespace: str, tmp_path: Path) -> AsyncIterator[str]:
    api = gateway_endpoint(testbed, namespace, tmp_path)
    async with gateway_after_the_runner(api, namespace, RUN) as url:
        yield url


async def test_a_reader_joining_after_a_pvc_runner_is_gone_gets_its_whole_log(
    ended_pvc_run: EndedPvcRun, gateway_url: str, testbed: KubeTestbed, namespace: str
) -> None:
    assert not [cm for cm in list_configmaps(testbed, namespace) if "-ckpt-" in cm["metadata"]["name"]]

    status, replayed = await read_until_finished(gateway_url, STREAM_TOKEN)

    assert status == 200
    assert len(ended_pvc_run.log) > 5
    assert as_log(replayed) == ended_pvc_run.log  # every event of the runner's log, same ids, same data
    assert as_log(replayed) == as_log(ended_pvc_run.direct)  # what its own stream served
    assert replayed[-1].event == "finished"
    assert json.loads(replayed[-1].data)["outcome"] == "Succeeded"


async def test_a_reader_resuming_after_the_end_gets_only_what_it_missed(
    ended_pvc_run: EndedPvcRun, gateway_url: str
) -> None:
    middle = ended_pvc_run.log[len(ended_pvc_run.log) // 2][0]

    status, rest = await read_until_finished(gateway_url, STREAM_TOKEN, last_id=middle)

    assert status == 200
    assert as_log(rest) == [entry for entry in ended_pvc_run.log if entry[0] > middle]


async def test_a_new_run_of_the_same_name_is_not_served_the_deleted_ones_archive(
    ended_pvc_run: EndedPvcRun, gateway_url: str, testbed: KubeTestbed, namespace: str
) -> None:
    recreate_run(testbed, namespace, RUN)
    set_run_phase(testbed, namespace, RUN, "Failed")
    assert [cm["metadata"]["name"] for cm in _archive(testbed, namespace)] == [contract.events_archive_name(RUN, 0)]

    status, replayed = await read_until_finished(gateway_url, STREAM_TOKEN)

    assert status == 200
    assert [(e.event, e.id) for e in replayed] == [("finished", "")]  # the gateway's own end, no event of the log
    assert json.loads(replayed[0].data) == {"phase": "Failed", "reason": "RunEnded", "replay": "unavailable"}


async def test_the_archive_is_owned_by_the_run_holds_no_secret_and_goes_with_it(
    ended_pvc_run: EndedPvcRun, testbed: KubeTestbed, namespace: str
) -> None:
    archive = _archive(testbed, namespace)

    assert [cm["metadata"]["name"] for cm in archive] == [contract.events_archive_name(RUN, 0)]
    manifest = read_manifest(archive[0]["data"])
    assert manifest is not None
    assert manifest.events == len(ended_pvc_run.log)
    assert manifest.last_id == ended_pvc_run.log[-1][0]
    (owner,) = archive[0]["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == (constants.KIND, RUN, ended_pvc_run.uid)
    assert archive[0]["metadata"]["labels"][constants.LABEL_RUN] == RUN
    text = json.dumps(archive)
    for secret in (API_KEY, STREAM_TOKEN):
        assert secret not in text
    assert MANIFEST_KEY in archive[0]["data"]

    # kube-controller-manager's garbage collector collects it; early in a session it may take up to its 30 s
    # discovery period to learn of the AgentRun CRD.
    testbed.admin.delete(f"{AGENTRUN_API}/namespaces/{namespace}/agentruns/{RUN}").raise_for_status()
    for _ in range(900):
        if not _archive(testbed, namespace):
            break
        await asyncio.sleep(0.1)
    assert _archive(testbed, namespace) == []


async def test_the_runner_needs_nothing_beyond_its_operator_built_role(
    ended_pvc_run: EndedPvcRun, testbed: KubeTestbed, namespace: str
) -> None:
    # The runner ran with nothing but its ServiceAccount's token, bound to the operator-built Role alone: the real
    # API server refused whatever that Role does not grant, and the runner logs a refused write (HTTP 403) as a
    # warning without failing the run. So: every write it makes landed, and it logged no refusal.
    refusals = [line for line in ended_pvc_run.output if "HTTP 403" in line or "forbidden" in line.lower()]
    assert refusals == []
    assert [cm["metadata"]["name"] for cm in _archive(testbed, namespace)] == [contract.events_archive_name(RUN, 0)]
    progress = next(cm for cm in list_configmaps(testbed, namespace) if cm["metadata"]["name"] == f"{RUN}-progress")
    report = ProgressReport.model_validate_json(progress["data"][PROGRESS_KEY])
    assert report.outcome is Outcome.SUCCEEDED
