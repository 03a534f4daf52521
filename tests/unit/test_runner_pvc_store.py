"""The PVC store's log file: a torn tail is cut back to the last good record; the result is written whole.

(Async tests live apart from sync ones: with looptime installed, a module mixing both leaks a loop.)"""

from pathlib import Path

import pytest

from agentrun_runner.checkpoint import PvcStore

pytestmark = pytest.mark.unit


async def test_pvc_log_with_a_torn_tail_is_cut_back_to_the_last_good_record(tmp_path: Path) -> None:
    store = PvcStore(tmp_path, "demo-ckpt")
    sizes = [await store.append({"seq": n, "v": "x" * 50}) for n in range(4)]
    log = tmp_path / "checkpoint.log"
    log.write_bytes(log.read_bytes()[:-7])  # a write cut short by a crash

    loaded = await PvcStore(tmp_path, "demo-ckpt").load()
    assert [r["seq"] for r in loaded.records] == [0, 1, 2]
    assert loaded.problem is not None
    assert "checkpoint record 3" in loaded.problem
    assert log.stat().st_size == sum(sizes[:3])

    again = PvcStore(tmp_path, "demo-ckpt")
    await again.load()
    await again.append({"seq": 3, "v": "new"})
    reloaded = await PvcStore(tmp_path, "demo-ckpt").load()
    assert reloaded.problem is None
    assert reloaded.records[3]["v"] == "new"
    assert reloaded.total_bytes == log.stat().st_size


async def test_pvc_result_is_written_whole(tmp_path: Path) -> None:
    store = PvcStore(tmp_path, "demo-ckpt")
    assert await store.save_result("the answer") == "pvc/demo-ckpt/result.txt"
    assert (tmp_path / "result.txt").read_text() == "the answer"
    assert not (tmp_path / "result.txt.tmp").exists()
