"""Checkpoint stores against their real backends: corrupt or partial records are detected and the
runner falls back to the last good state and says so; ConfigMap state past 1 MiB spills into more
segments with every write small."""

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agentrun_api.contract import CONFIGMAP_SEGMENT_LIMIT_BYTES, EXIT_OUTCOME_RECORDED, Outcome, RunIdentity
from agentrun_common.eventlog.records import bind_record, encode_record
from agentrun_runner.checkpoint import CheckpointError, ConfigMapStore, PvcStore
from agentrun_runner.kube import ConfigMaps, load_configuration
from tests.harness.apiproxy import ApiProxy
from tests.harness.model_server import Answer, ModelServer, by_turn, call
from tests.harness.run_identity import list_configmaps, provision_run
from tests.harness.runner import make_config, make_spec, read_progress, run_in_process
from tests.harness.testbed import KubeTestbed

pytestmark = pytest.mark.integration

EXIT_SIGTERM = 143
TURNS = by_turn([Answer(tool_calls=[call("list_files")])] * 6 + [Answer("finished")])


async def stop_after(tmp_path: Path, iteration: int) -> None:
    """Send this process SIGTERM once the runner reported ``iteration`` (the runner handles it)."""
    async with asyncio.timeout(20):
        while True:
            try:
                if read_progress(tmp_path).iteration >= iteration:
                    break
            except (FileNotFoundError, ValueError):
                pass
            await asyncio.sleep(0.01)
    os.kill(os.getpid(), signal.SIGTERM)


def record_offsets(log: bytes) -> list[int]:
    """Start offsets of the frames in a PVC checkpoint log (header: 10-digit length, space, sha256, newline)."""
    offsets, offset = [], 0
    while offset < len(log):
        offsets.append(offset)
        offset += 76 + int(log[offset : offset + 10]) + 1
    return offsets


@pytest.mark.parametrize("damage", ["truncate-last", "flip-last", "flip-middle"])
async def test_corrupt_checkpoint_falls_back_to_last_good_state_and_says_so(tmp_path: Path, damage: str) -> None:
    slow = by_turn([Answer(tool_calls=[call("list_files")], delay=0.05)] * 6 + [Answer("finished")])
    async with ModelServer(slow) as model:
        config = make_config(make_spec(model.base_url), tmp_path)
        stopper = asyncio.create_task(stop_after(tmp_path, 4))
        stopped = await run_in_process(config, tmp_path)
        await stopper
        assert stopped.exit_code == EXIT_SIGTERM

        log_path = tmp_path / "checkpoint" / "checkpoint.log"
        log = bytearray(log_path.read_bytes())
        offsets = record_offsets(bytes(log))
        damaged = len(offsets) - 1 if damage.endswith("last") else len(offsets) // 2
        if damage == "truncate-last":
            del log[-10:]
        else:
            log[offsets[damaged] + 100] ^= 0x20
        log_path.write_bytes(bytes(log))

        first_request_after = len(model.requests)
        run = await run_in_process(config, tmp_path)

    assert run.exit_code == EXIT_OUTCOME_RECORDED
    assert run.progress.outcome is Outcome.SUCCEEDED
    fallbacks = [e for e in run.state.events if e.type == "checkpoint" and e.data.get("fallback")]
    assert len(fallbacks) == 1
    problem = fallbacks[0].data["problem"]
    assert f"checkpoint record {damaged} at byte {offsets[damaged]}" in problem
    assert ("truncated" if damage == "truncate-last" else "checksum mismatch") in problem
    # The runner resumed from the record before the damaged one, not from scratch.
    assert run.progress.resumed_from_iteration is not None
    assert 0 < run.progress.resumed_from_iteration <= stopped.state.counters.step
    assert model.requests[first_request_after].turn == run.progress.resumed_from_iteration
    assert run.state.messages[-1] == {"role": "assistant", "content": "finished"}
    assert sum(1 for m in run.state.messages if m["role"] == "assistant") == 7
    # The damaged tail was cut, so the store loads clean now.
    assert (await PvcStore(log_path.parent, "x", run_uid=config.run.uid).load()).problem is None


async def test_first_record_corrupt_starts_over_and_reports_it(tmp_path: Path) -> None:
    async with ModelServer(TURNS) as model:
        config = make_config(make_spec(model.base_url), tmp_path)
        first = await run_in_process(config, tmp_path)
        assert first.progress.outcome is Outcome.SUCCEEDED
        log_path = tmp_path / "checkpoint" / "checkpoint.log"
        log = bytearray(log_path.read_bytes())
        log[0:10] = b"xxxxxxxxxx"
        log_path.write_bytes(bytes(log))
        (tmp_path / "checkpoint" / "result.txt").unlink()
        again = await run_in_process(config, tmp_path)

    assert again.progress.outcome is Outcome.SUCCEEDED
    assert again.progress.resumed_from_iteration is None
    fallback = next(e for e in again.state.events if e.type == "checkpoint" and e.data.get("fallback"))
    assert "checkpoint record 0 at byte 0" in fallback.data["problem"]
    assert "malformed record header" in fallback.data["problem"]
    assert again.state.messages == first.state.messages


StoreOpener = Callable[[str], Awaitable[ConfigMaps]]


@dataclass
class Backend:
    """The real API server behind the API proxy (which sees each write's size); ``open(run)`` gives a ConfigMaps
    client with that run's runner ServiceAccount and the operator's Role for a ConfigMap-store run."""

    testbed: KubeTestbed
    namespace: str
    proxy: ApiProxy
    open: StoreOpener

    def segments(self, run: str) -> list[dict[str, Any]]:
        return list_configmaps(self.testbed, self.namespace, f"{run}-ckpt-")

    def patch_bodies(self, run: str) -> list[int]:
        return [r.body_bytes for r in self.proxy.requests.records if r.verb == "patch" and r.name.startswith(run)]


@pytest.fixture
async def configmaps(testbed: KubeTestbed, namespace: str, tmp_path: Path) -> AsyncIterator[Backend]:
    clients: list[ConfigMaps] = []
    control_plane = testbed.control_plane
    async with ApiProxy(control_plane.url, ca_file=control_plane.ca_file) as proxy:

        async def open_store(run: str) -> ConfigMaps:
            spec = make_spec("http://127.0.0.1:9/v1", checkpoint={"store": "ConfigMap"})
            provisioned = provision_run(testbed, namespace, spec, tmp_path, name=run)
            kubeconfig = proxy.write_kubeconfig(tmp_path / f"{run}.kubeconfig", provisioned.token, namespace=namespace)
            os.environ["KUBECONFIG"] = str(kubeconfig)
            try:
                owner = RunIdentity(namespace=namespace, name=run, uid=provisioned.uid)
                client = ConfigMaps(load_configuration(), namespace, owner=owner)
            finally:
                os.environ.pop("KUBECONFIG")
            clients.append(client)
            return client

        try:
            yield Backend(testbed, namespace, proxy, open_store)
        finally:
            for client in clients:
                await client.close()


def uid_of(client: ConfigMaps) -> str:
    assert client.owner_uid is not None
    return client.owner_uid


def record(seq: int, payload: str) -> dict[str, object]:
    return {"seq": seq, "payload": payload}


async def test_configmap_state_over_1mib_spills_into_segments_with_small_writes(configmaps: Backend) -> None:
    client = await configmaps.open("big")
    store = ConfigMapStore(client, "big", run_uid=uid_of(client), max_segments=36)
    assert (await store.load()).records == []
    for seq in range(40):  # 40 x ~60 KB: about 2.4 MB of state in all
        await store.append(record(seq, chr(ord("a") + seq % 26) * 60_000))

    segments = configmaps.segments("big")
    assert [cm["metadata"]["name"] for cm in segments] == ["big-ckpt-0", "big-ckpt-1", "big-ckpt-2"]
    for segment in segments:
        data = segment["data"]
        assert sum(len(k) + len(v) for k, v in data.items()) <= CONFIGMAP_SEGMENT_LIMIT_BYTES, segment["metadata"]
    writes = configmaps.patch_bodies("big")
    assert max(writes) < 62_000, "each write carries one record, not the history"
    assert writes[-1] - writes[0] < 16, "the 40th write is as small as the first"

    reloaded = await ConfigMapStore(client, "big", run_uid=uid_of(client), max_segments=36).load()
    assert reloaded.problem is None
    assert [r["seq"] for r in reloaded.records] == list(range(40))
    assert reloaded.records[39]["payload"] == "n" * 60_000


async def test_a_record_larger_than_a_segment_is_split_and_read_back(configmaps: Backend) -> None:
    client = await configmaps.open("huge")
    store = ConfigMapStore(client, "huge", run_uid=uid_of(client), max_segments=36)
    await store.load()
    await store.append(record(0, "small"))
    await store.append(record(1, "z" * 2_000_000))
    await store.append(record(2, "after"))
    assert len(configmaps.segments("huge")) == 3
    reloaded = await ConfigMapStore(client, "huge", run_uid=uid_of(client), max_segments=36).load()
    assert reloaded.problem is None
    assert [r["payload"][:5] for r in reloaded.records] == ["small", "zzzzz", "after"]
    assert len(reloaded.records[1]["payload"]) == 2_000_000


async def test_configmap_segments_past_the_cap_fail_with_advice(configmaps: Backend) -> None:
    client = await configmaps.open("capped")
    store = ConfigMapStore(client, "capped", run_uid=uid_of(client), max_segments=2, segment_limit_bytes=10_000)
    await store.load()
    for seq in range(4):  # two segments of 10 kB hold four 4 kB records
        await store.append(record(seq, "q" * 4_000))
    with pytest.raises(CheckpointError, match=r"fills all 2 ConfigMap segments.*PersistentVolumeClaim"):
        await store.append(record(4, "q" * 4_000))


async def test_segments_another_run_left_or_planted_are_claimed_empty_and_not_resumed(
    configmaps: Backend,
) -> None:
    client = await configmaps.open("reused")
    # Segments under this run's name that it did not write: planted by another runner (or kept from a
    # deleted run of the same name), holding a conversation stamped with another uid, over two segments.
    planter = ConfigMaps(client._client.credentials, configmaps.namespace)
    try:
        foreign = ConfigMapStore(
            planter, "reused", run_uid="uid-of-another-run", max_segments=36, segment_limit_bytes=9_000
        )
        await foreign.load()
        for seq in range(3):
            await foreign.append(record(seq, "the other run's conversation " * 150))
    finally:
        await planter.close()
    assert len(configmaps.segments("reused")) == 2

    store = ConfigMapStore(client, "reused", run_uid=uid_of(client), max_segments=36)
    loaded = await store.load()
    assert loaded.records == []
    assert loaded.problem is not None
    assert "reused-ckpt-0, reused-ckpt-1 belonged to another run" in loaded.problem
    for segment in configmaps.segments("reused"):
        assert not segment.get("data"), segment["metadata"]["name"]
        assert [ref["uid"] for ref in segment["metadata"]["ownerReferences"]] == [uid_of(client)]

    await store.append(record(0, "this run's own"))
    reloaded = await ConfigMapStore(client, "reused", run_uid=uid_of(client), max_segments=36).load()
    assert reloaded.problem is None
    assert [r["payload"] for r in reloaded.records] == ["this run's own"]


async def test_a_record_of_another_uid_in_an_owned_segment_is_dropped(configmaps: Backend) -> None:
    client = await configmaps.open("mixed")
    store = ConfigMapStore(client, "mixed", run_uid=uid_of(client), max_segments=36)
    await store.load()
    await store.append(record(0, "ours"))
    planted = encode_record(bind_record(record(1, "planted"), "uid-of-another-run")).decode("ascii")
    await client.patch_data("mixed-ckpt-0", {"r00000001-000": planted})

    loaded = await ConfigMapStore(client, "mixed", run_uid=uid_of(client), max_segments=36).load()
    assert [r["payload"] for r in loaded.records] == ["ours"]
    assert loaded.problem is not None
    assert "uid-of-another-run" in loaded.problem
    data = await client.get_data("mixed-ckpt-0")
    assert data is not None
    assert sorted(data) == ["r00000000-000"]


async def test_corrupt_configmap_record_is_dropped_and_reported(configmaps: Backend) -> None:
    client = await configmaps.open("bad")
    store = ConfigMapStore(client, "bad", run_uid=uid_of(client), max_segments=36)
    await store.load()
    for seq in range(5):
        await store.append(record(seq, f"state {seq}"))
    data = await client.get_data("bad-ckpt-0")
    assert data is not None
    damaged = data["r00000003-000"].replace("state 3", "state 9")
    await client.patch_data("bad-ckpt-0", {"r00000003-000": damaged})

    loaded = await ConfigMapStore(client, "bad", run_uid=uid_of(client), max_segments=36).load()
    assert [r["seq"] for r in loaded.records] == [0, 1, 2]
    assert loaded.problem is not None
    assert "checkpoint record 3" in loaded.problem
    assert "checksum mismatch" in loaded.problem
    # The bad record and the ones after it are gone, so the next append follows record 2.
    data = await client.get_data("bad-ckpt-0")
    assert data is not None
    assert sorted(data) == ["r00000000-000", "r00000001-000", "r00000002-000"]
    again = ConfigMapStore(client, "bad", run_uid=uid_of(client), max_segments=36)
    assert (await again.load()).problem is None
    await again.append(record(3, "state 3 again"))
    assert json.loads((await again.load()).records[3]["payload"].join('""')) == "state 3 again"


async def test_segments_the_runner_creates_are_owned_by_its_agentrun_and_collected_with_it(
    testbed: KubeTestbed, namespace: str, tmp_path: Path
) -> None:
    spec = make_spec("http://127.0.0.1:9/v1", checkpoint={"store": "ConfigMap"})
    run = provision_run(testbed, namespace, spec, tmp_path, name="owned")
    os.environ["KUBECONFIG"] = str(run.kubeconfig)
    try:
        client = ConfigMaps(
            load_configuration(), namespace, owner=RunIdentity(namespace=namespace, name="owned", uid=run.uid)
        )
    finally:
        os.environ.pop("KUBECONFIG")
    try:
        checkpoints = ConfigMapStore(client, "owned", run_uid=uid_of(client), max_segments=36)
        await checkpoints.load()
        await checkpoints.append(record(0, "state"))
    finally:
        await client.close()

    [segment] = list_configmaps(testbed, namespace, "owned-ckpt-")
    [owner] = segment["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("AgentRun", "owned", run.uid)

    # kube-controller-manager's garbage collector removes the run's dependents once it is gone. It re-reads API
    # discovery every 30 s, so early in a session it may take that long to learn of the AgentRun CRD at all.
    testbed.admin.delete(f"/apis/agentrun.dev/v1alpha1/namespaces/{namespace}/agentruns/owned").raise_for_status()
    for _ in range(900):
        if not list_configmaps(testbed, namespace, "owned-ckpt-"):
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the run's checkpoint segments outlived the AgentRun by 90 s")
