"""Fixtures and hooks shared by every test layer."""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.ground_check import require_real_ground
from tests.harness.testbed import KubeTestbed

REPO_ROOT = Path(__file__).resolve().parent.parent
AGENTRUN_CRD = REPO_ROOT / "crds" / "agentruns.agentrun.dev.yaml"
THROTTLEPOOL_CRD = REPO_ROOT / "crds" / "throttlepools.agentrun.dev.yaml"


@pytest.fixture(scope="session")
def testbed(tmp_path_factory: pytest.TempPathFactory) -> Generator[KubeTestbed, None, None]:
    """The real control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler), its node agent and
    volume provisioner, with the project's CRDs: one per test session. Tests isolate themselves by namespace."""
    require_real_ground("the test control plane")
    with KubeTestbed(tmp_path_factory.mktemp("testbed")) as bed:
        yield bed
        assert not bed.node.reconcile_errors, bed.node.reconcile_errors


@pytest.fixture
def namespace(testbed: KubeTestbed, request: pytest.FixtureRequest) -> Generator[str, None, None]:
    """A fresh namespace on the test control plane, named after the test, deleted afterwards."""
    name = testbed.create_namespace(request.node.name)
    yield name
    testbed.delete_namespace(name)


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
