"""`make demo`'s entry point, run as a person runs it: its output shows the run from Pending to Succeeded,
the kill, the resume from the checkpoint, the result and the stream's events."""

import itertools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness.local_cluster import REPO_ROOT
from tests.harness.nodeagent import MountNamespaceUnavailableError, check_mount_namespaces
from tests.harness.source_roots import pythonpath

pytestmark = pytest.mark.e2e

DEMO_TIMEOUT_SECONDS = 150  # it takes about 50 s; the bound only keeps a hung demo from hanging the suite


@pytest.fixture(scope="module")
def demo_output() -> tuple[int, str]:
    try:
        check_mount_namespaces()
    except MountNamespaceUnavailableError as error:
        pytest.skip(str(error))
    # The scripted model, whatever this machine's environment says: the demo's kill needs its slow answers.
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    env["PYTHONPATH"] = pythonpath()
    finished = subprocess.run(
        [sys.executable, "-m", "tests.harness.demo"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_SECONDS,
    )
    return finished.returncode, finished.stdout + finished.stderr


def watch_rows(output: str) -> list[list[str]]:
    """The cells of each `kubectl get agentruns -w` row the demo relayed."""
    return [line.split("|", 1)[1].split() for line in output.splitlines() if line.startswith("  watch  |")]


def test_demo_exits_zero_and_says_what_is_emulated(demo_output: tuple[int, str]) -> None:
    code, output = demo_output
    assert code == 0, output[-3000:]
    assert "REAL      Kubernetes: etcd, kube-apiserver" in output
    assert "EMULATED  the kubelet: a node agent" in output
    assert re.search(r"Server Version: v1\.\d+\.\d+", output), output[:3000]  # kubectl version, the real server
    assert re.search(r"^\s+agentrun-node\s+Ready\s", output, re.MULTILINE)
    assert "Traceback" not in output
    assert Path(REPO_ROOT / "examples" / "minimal.yaml").read_text().count("baseURL") == 0  # the file is untouched
    assert re.search(r"spec\.model\.baseURL: http://127\.0\.0\.1:\d+/v1", output)


def test_watch_shows_pending_then_running_progress_then_succeeded(demo_output: tuple[int, str]) -> None:
    _, output = demo_output
    rows = [cells for cells in watch_rows(output) if cells[:1] == ["minimal"] and len(cells) >= 4]
    phases: list[str] = []
    for cells in rows:
        if not phases or phases[-1] != cells[1]:
            phases.append(cells[1])
    assert phases[0] == "Pending", phases
    assert phases[-1] == "Succeeded", phases
    assert "Running" in phases
    assert all(phase in ("Pending", "Running") for phase in phases[:-1]), phases
    progress = {int(cells[2].split("/")[0]) for cells in rows if cells[1] == "Running"}
    assert {1, 5, 9} <= progress  # the PROGRESS column moved while the run was Running
    assert rows[-1][1:3] == ["Succeeded", "10/10"]


def test_runner_is_killed_and_the_replacement_resumes_from_its_checkpoint(demo_output: tuple[int, str]) -> None:
    _, output = demo_output
    killed = re.search(r"chaos: SIGKILL to runner pod (\S+) .*checkpointed at iteration (\d+)", output)
    assert killed, output[-3000:]
    assert f"pod {killed.group(1)} ended with exit code 137" in output
    replacement = re.search(r"the real Job controller started a replacement pod: (\S+)", output)
    assert replacement
    assert replacement.group(1) != killed.group(1)
    # kubectl get pods: the killed pod in Error beside its Running replacement, both on the node
    assert re.search(rf"^\s+{killed.group(1)}\s+0/1\s+Error\s", output, re.MULTILINE)
    # kubectl logs of the last runner, served by the node through the API server
    assert re.search(r"\$ kubectl logs minimal-runner-\S+ --tail=6\n(    .*\n)*    .*agentrun_runner", output)
    resumed = re.search(r"Event Resumed: runner pod (\S+) resumed from the checkpoint at iteration (\d+)", output)
    assert resumed
    assert resumed.group(1) == replacement.group(1)
    assert int(resumed.group(2)) >= int(killed.group(2))
    assert re.search(r"restarts: 1;", output)


def test_conditions_status_and_events_say_complete(demo_output: tuple[int, str]) -> None:
    _, output = demo_output
    assert "agentrun.agentrun.dev/minimal condition met" in output
    assert re.search(r"^\s+phase: Succeeded$", output, re.MULTILINE)
    events = re.findall(r"^\s+(Normal|Warning)\s+(\w+)\s", output, re.MULTILINE)
    reasons = [reason for _, reason in events]
    for expected in ("ChildrenCreated", "RunnerStarted", "Checkpointed", "Restarted", "Resumed", "Succeeded"):
        assert expected in reasons, reasons


def test_result_is_printed_from_status_and_from_the_checkpoint_store(demo_output: tuple[int, str]) -> None:
    _, output = demo_output
    summary = re.search(r"status\.result\.summary: (.+)", output)
    assert summary
    assert summary.group(1).startswith("Three uses of Kubernetes Jobs")
    full = output.split("The full result", 1)[1].split("== The stream", 1)[0]
    # Through the kubectl plugin when this Python has it installed (make install), else from the ConfigMap.
    assert "$ kubectl agentrun result minimal" in full or "$ kubectl get configmap minimal-ckpt-" in full, full
    assert summary.group(1) in full


def test_stream_events_have_strictly_increasing_ids_across_the_reconnect(demo_output: tuple[int, str]) -> None:
    _, output = demo_output
    events = re.findall(r"^  id: (\d+)\s+event: (\w+)\s+pod: (\S+)", output, re.MULTILINE)
    ids = [int(event_id) for event_id, _, _ in events]
    assert len(ids) > 20
    assert all(a < b for a, b in itertools.pairwise(ids)), ids
    assert events[-1][1] == "finished"
    assert len({pod for _, _, pod in events}) == 2  # read from the killed pod, then from its replacement
    assert re.search(r"stream \| connected to http://[\d.]+:8080/events \(pod \S+\) with Last-Event-ID: \d+", output)
