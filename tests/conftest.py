"""Fixtures shared by every test layer, and session-wide test hygiene."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Generator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.apiserver import EmulatedApiServer

REPO_ROOT = Path(__file__).resolve().parent.parent
AGENTRUN_CRD = REPO_ROOT / "crds" / "agentruns.agentrun.dev.yaml"


@pytest.fixture
async def apiserver() -> AsyncIterator[EmulatedApiServer]:
    """An emulated kube-apiserver on 127.0.0.1 with the AgentRun CRD installed; fails the test if the emulator
    itself raised while serving."""
    async with EmulatedApiServer([AGENTRUN_CRD]) as server:
        yield server
    assert not server.handler.internal_errors, server.handler.internal_errors


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Generator[None, Any, Any]:
    """looptime's plugin asks the event loop policy for "the" loop even around synchronous tests;
    on Python 3.11 that call creates a loop nobody closes, and with warnings as errors the session
    then fails at exit ("unclosed event loop"). Each synchronous test gets its own loop, closed
    right after, so the lookup finds that one."""
    if pyfuncitem.get_closest_marker("asyncio") is not None:  # pytest-asyncio's tests (auto mode marks them)
        return (yield)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return (yield)
    finally:
        asyncio.set_event_loop(None)
        loop.close()
