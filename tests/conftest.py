"""Fixtures and hooks shared by every test layer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Generator
from pathlib import Path
from typing import Any

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


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Generator[None, Any, Any]:
    """Give each synchronous test an event loop of its own and close it afterwards.

    looptime's plugin asks the event loop policy for the current loop in every test, synchronous ones
    too; on Python 3.11 that creates a loop nobody closes, and its unclosed sockets surface later as
    unraisable-exception warnings in whichever test is running, which fail the suite (warnings are errors).
    Async tests are recognised by pytest-asyncio's marker (auto mode adds it): by this hook their
    function is already pytest-asyncio's synchronous wrapper, and a loop set here would hide
    looptime's own loop from the test.
    """
    if pyfuncitem.get_closest_marker("asyncio") is not None:
        return (yield)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return (yield)
    finally:
        asyncio.set_event_loop(None)
        loop.close()
