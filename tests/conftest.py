"""Fixtures shared by every test layer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.harness.apiserver import EmulatedApiServer

REPO_ROOT = Path(__file__).resolve().parent.parent
AGENTRUN_CRD = REPO_ROOT / "crds" / "agentruns.agentrun.dev.yaml"
THROTTLEPOOL_CRD = REPO_ROOT / "crds" / "throttlepools.agentrun.dev.yaml"


@pytest.fixture
async def apiserver() -> AsyncIterator[EmulatedApiServer]:
    """An emulated kube-apiserver on 127.0.0.1 with the AgentRun and ThrottlePool CRDs installed; fails the test
    if the emulator itself raised while serving."""
    async with EmulatedApiServer([AGENTRUN_CRD, THROTTLEPOOL_CRD]) as server:
        yield server
    assert not server.handler.internal_errors, server.handler.internal_errors
