"""The PVC store's log file: a torn tail is cut back to the last good record; the result is written whole.

(Async tests live apart from sync ones: with looptime installed, a module mixing both leaks a loop.)"""

from pathlib import Path

import pytest

from agentrun_runner.checkpoint import PvcStore

pytestmark = pytest.mark.unit

UID = "4c7f0d5e-run-uid"


async def test_pvc_log_with_a_torn_tail_is_cut_back_to_the_last_good_record(tmp_path: Path) -> None:
    store = PvcStore(tmp_path, "demo-ckpt", run_uid=UID)
    sizes = [await store.append({"seq": n, "v": "x" * 50}) for n in range(4)]
    log = tmp_path / "checkpoint.log"
    log.write_bytes(log.read_bytes()[:-7])  # a write cut short by a crash

    loaded = await PvcStore(tmp_path, "demo-ckpt", run_uid=UID).load()
    assert [r["seq"] for r in loaded.records] == [0, 1, 2]
    assert loaded.problem is not None
    assert "checkpoint record 3" in loaded.problem
    assert log.stat().st_size == sum(sizes[:3])

    again = PvcStore(tmp_path, "demo-ckpt", run_uid=UID)
    await again.load()
    await again.append({"seq": 3, "v": "new"})
    reloaded = await PvcStore(tmp_path, "demo-ckpt", run_uid=UID).load()
    assert reloaded.problem is None
    assert reloaded.records[3]["v"] == "new"
    assert {r["uid"] for r in reloaded.records} == {UID}
    assert reloaded.total_bytes == log.stat().st_size


async def test_pvc_result_is_written_whole(tmp_path: Path) -> None:
    store = PvcStore(tmp_path, "demo-ckpt", run_uid=UID)
    assert await store.save_result("the answer") == "pvc/demo-ckpt/result.txt"
    assert (tmp_path / "result.txt").read_text() == "the answer"
    assert not (tmp_path / "result.txt.tmp").exists()


async def test_pvc_log_of_a_run_with_another_uid_is_refused_and_cut(tmp_path: Path) -> None:
    # A claim kept from a deleted run of the same name: its log must not become the new run's past.
    old = PvcStore(tmp_path, "demo-ckpt", run_uid="uid-of-the-deleted-run")
    for n in range(3):
        await old.append({"seq": n, "v": "old conversation"})

    loaded = await PvcStore(tmp_path, "demo-ckpt", run_uid=UID).load()
    assert loaded.records == []
    assert loaded.problem is not None
    assert "checkpoint record 0" in loaded.problem
    assert "uid-of-the-deleted-run" in loaded.problem
    assert UID in loaded.problem
    assert (tmp_path / "checkpoint.log").stat().st_size == 0

    fresh = PvcStore(tmp_path, "demo-ckpt", run_uid=UID)
    await fresh.load()
    await fresh.append({"seq": 0, "v": "new conversation"})
    assert [r["v"] for r in (await PvcStore(tmp_path, "demo-ckpt", run_uid=UID).load()).records] == ["new conversation"]


async def test_pvc_records_appended_by_another_run_after_ours_are_cut(tmp_path: Path) -> None:
    ours = PvcStore(tmp_path, "demo-ckpt", run_uid=UID)
    await ours.append({"seq": 0, "v": "ours"})
    await PvcStore(tmp_path, "demo-ckpt", run_uid="intruder").append({"seq": 1, "v": "planted"})

    loaded = await PvcStore(tmp_path, "demo-ckpt", run_uid=UID).load()
    assert [r["v"] for r in loaded.records] == ["ours"]
    assert loaded.problem is not None
    assert "intruder" in loaded.problem
