"""The emulated apiserver's command line: `python -m tests.harness.apiserver --port 0 --kubeconfig out.yaml`."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import aiohttp
import pytest
import yaml

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.integration


async def test_cli_prints_its_url_writes_a_kubeconfig_and_stops_on_sigterm(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "out.yaml"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.harness.apiserver", "--port", "0", "--kubeconfig", str(kubeconfig), "--namespace", "demo",
        cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={"PYTHONPATH": f"{REPO_ROOT}:{REPO_ROOT / 'api'}", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert process.stdout is not None
    try:
        url = (await asyncio.wait_for(process.stdout.readline(), 20)).decode().strip()
        assert url.startswith("http://127.0.0.1:")
        config = yaml.safe_load(kubeconfig.read_text())
        assert config["clusters"][0]["cluster"]["server"] == url
        assert config["users"][0]["user"]["token"]
        async with aiohttp.ClientSession() as http:
            assert (await http.get(f"{url}/api/v1/namespaces/demo")).status == 200
            assert (await http.get(f"{url}/apis/agentrun.dev/v1alpha1/agentruns")).status == 200
    finally:
        process.send_signal(signal.SIGTERM)
        stdout, stderr = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 0, stderr.decode()
    assert "total" in stdout.decode()  # the request summary printed on the way out
