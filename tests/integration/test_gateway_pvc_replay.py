"""Replay after the end for a run whose checkpoint is on a PVC: the real runner process checkpoints to its
volume, serves its stream and, once the run has ended, archives its event log into ConfigMaps on the
emulated API server; after the runner is gone, a reader of the stream gateway gets the whole log from
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
from agentrun_api.spec import AgentRunSpec
from agentrun_operator import children
from agentrun_runner.archive import MANIFEST_KEY, read_manifest
from tests.harness.apiserver import EmulatedApiServer
from tests.harness.gateway import (
    add_stream_token,
    as_log,
    gateway_after_the_runner,
    read_runner_stream_to_end,
    read_until_finished,
    set_run_phase,
)
from tests.harness.model_server import ModelServer, research_script
from tests.harness.rbac import RbacAuthorizer, Request, ServiceAccount
from tests.harness.runner import (
    API_KEY,
    STREAM_TOKEN,
    load_state,
    make_config,
    make_spec,
    runner_env,
    write_kubeconfig,
)

pytestmark = pytest.mark.integration

NAMESPACE = "default"  # the runner config's namespace (tests.harness.runner.make_config)
RUN = "pvcrun"


def _archive(apiserver: EmulatedApiServer) -> list[dict[str, Any]]:
    prefix = contract.events_archive_name(RUN, 0)[:-1]
    found = [cm for cm in apiserver.store.all_of("ConfigMap", NAMESPACE) if cm["metadata"]["name"].startswith(prefix)]
    return sorted(found, key=lambda cm: cm["metadata"]["name"])


class EndedPvcRun:
    def __init__(self, direct: list[ServerSentEvent], log: list[tuple[int, str, Any]], spec: AgentRunSpec) -> None:
        self.direct = direct  # what a reader attached to the runner itself received
        self.log = log  # the runner's event log, as its PVC checkpoint holds it
        self.spec = spec


@pytest.fixture
async def ended_pvc_run(apiserver: EmulatedApiServer, tmp_path: Path) -> EndedPvcRun:
    store = apiserver.store
    add_stream_token(apiserver, NAMESPACE, RUN, STREAM_TOKEN)
    async with ModelServer(research_script()) as model:
        spec = make_spec(
            model.base_url,
            streaming={"enabled": True, "heartbeatInterval": "1s"},
            checkpoint={"store": "PersistentVolumeClaim"},
        )
        manifest = {
            "apiVersion": constants.API_VERSION,
            "kind": constants.KIND,
            "metadata": {"name": RUN, "namespace": NAMESPACE},
            "spec": spec.model_dump(mode="json", by_alias=True, exclude_none=True),
        }
        uid = store.create(store.resource("agentruns"), NAMESPACE, manifest)["metadata"]["uid"]
        config = make_config(spec, tmp_path, store="PersistentVolumeClaim", name=RUN, uid=uid)
        kubeconfig = write_kubeconfig(str(apiserver.url), tmp_path / "kubeconfig")
        # As in a pod: Kubernetes access, progress into the <run>-progress ConfigMap (no local file).
        extra = {
            "KUBECONFIG": str(kubeconfig),
            "AGENTRUN_RUNNER_PROGRESS_FILE": "",
            "AGENTRUN_RUNNER_SSE_LINGER_SECONDS": "0.5",
        }
        direct = await read_runner_stream_to_end(runner_env(tmp_path, config, extra), STREAM_TOKEN)
    state = await load_state(config)  # the runner's own log, from its checkpoint on the volume
    set_run_phase(apiserver, NAMESPACE, RUN, "Succeeded")
    return EndedPvcRun(direct, [(e.id, e.type, e.data) for e in state.events], spec)


@pytest.fixture
async def gateway_url(apiserver: EmulatedApiServer) -> AsyncIterator[str]:
    async with gateway_after_the_runner(apiserver, NAMESPACE, RUN) as url:
        yield url


async def test_a_reader_joining_after_a_pvc_runner_is_gone_gets_its_whole_log(
    ended_pvc_run: EndedPvcRun, gateway_url: str, apiserver: EmulatedApiServer
) -> None:
    assert not [cm for cm in apiserver.store.all_of("ConfigMap", NAMESPACE) if "-ckpt-" in cm["metadata"]["name"]]

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


async def test_the_archive_is_owned_by_the_run_holds_no_secret_and_goes_with_it(
    ended_pvc_run: EndedPvcRun, apiserver: EmulatedApiServer
) -> None:
    archive = _archive(apiserver)
    run = apiserver.store.try_get(constants.KIND, NAMESPACE, RUN)
    assert run is not None

    assert [cm["metadata"]["name"] for cm in archive] == [contract.events_archive_name(RUN, 0)]
    manifest = read_manifest(archive[0]["data"])
    assert manifest is not None
    assert manifest.events == len(ended_pvc_run.log)
    assert manifest.last_id == ended_pvc_run.log[-1][0]
    (owner,) = archive[0]["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == (constants.KIND, RUN, run["metadata"]["uid"])
    assert archive[0]["metadata"]["labels"][constants.LABEL_RUN] == RUN
    text = json.dumps(archive)
    for secret in (API_KEY, STREAM_TOKEN):
        assert secret not in text
    assert MANIFEST_KEY in archive[0]["data"]

    apiserver.store.delete(apiserver.store.resource("agentruns"), NAMESPACE, RUN)
    for _ in range(100):
        if not _archive(apiserver):
            break
        await asyncio.sleep(0.02)
    assert _archive(apiserver) == []


async def test_the_runner_needs_nothing_beyond_its_operator_built_role(
    ended_pvc_run: EndedPvcRun, apiserver: EmulatedApiServer
) -> None:
    run = apiserver.store.try_get(constants.KIND, NAMESPACE, RUN)
    assert run is not None
    owner = children.RunOwner(NAMESPACE, RUN, run["metadata"]["uid"])
    role = children.adopted(children.build_role(owner, ended_pvc_run.spec), owner)
    binding = children.adopted(children.build_role_binding(owner), owner)
    rbac = RbacAuthorizer([role], [binding], [], [])
    account = ServiceAccount(NAMESPACE, children.identity_name(RUN))
    requests = [r for r in apiserver.requests if r.verb]  # only the runner talked to the API server so far

    archive_writes = [r for r in requests if r.name.startswith(f"{RUN}-events-")]
    refused = [
        (r.verb, r.resource, r.name)
        for r in requests
        if not rbac.can(account, Request(r.verb, r.resource, r.namespace or None, r.name or None, r.group))
    ]

    assert {r.verb for r in archive_writes} <= {"patch", "create"}
    assert archive_writes
    assert refused == []
