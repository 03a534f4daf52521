"""Fixtures and helpers of the integration tests on the real control plane."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Generator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.apiproxy import ApiProxy
from tests.harness.inprocess_operator import Cluster, run_manifest
from tests.harness.testbed import KubeTestbed

MERGE = {"Content-Type": "application/merge-patch+json"}


def agentrun(name: str, **spec: Any) -> dict[str, Any]:
    """A minimal valid AgentRun manifest."""
    return {
        "apiVersion": "agentrun.dev/v1alpha1",
        "kind": "AgentRun",
        "metadata": {"name": name},
        "spec": {
            "instructions": "You are terse.",
            "input": "Say hi.",
            "model": {"name": "gpt-4.1-mini"},
            "maxExecutionTime": "10m",
            "maxIterations": 5,
            **spec,
        },
    }


@pytest.fixture(scope="session")
def garbage_collector_ready(testbed: KubeTestbed, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Wait until the garbage collector deletes what an AgentRun owns. It learns of new resources (the CRDs,
    installed just after the control plane starts) by rediscovering the API every 30 s, so a session's first
    test would otherwise see children of a deleted run outlive it by up to half a minute."""
    probe = Cluster(testbed, testbed.create_namespace("gc-probe", schedulable=False), Path())
    try:
        owner = probe.create(run_manifest("probe"))
        probe.create(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": "probe-child",
                    "ownerReferences": [
                        {
                            "apiVersion": owner["apiVersion"],
                            "kind": owner["kind"],
                            "name": "probe",
                            "uid": owner["metadata"]["uid"],
                        }
                    ],
                },
            }
        )
        probe.delete(owner["kind"], "probe")
        deadline = time.monotonic() + 90
        while probe.get("ConfigMap", "probe-child") is not None:
            assert time.monotonic() < deadline, "the garbage collector never deleted an AgentRun's child"
            time.sleep(0.2)
    finally:
        testbed.delete_namespace(probe.namespace)


@pytest.fixture
def cluster(
    testbed: KubeTestbed, garbage_collector_ready: None, tmp_path: Path, request: pytest.FixtureRequest
) -> Generator[Cluster, None, None]:
    """A namespace of the real control plane whose pods no node runs (the test plays the kubelet), the
    operator's ServiceAccount granted the chart's rules in it; deleted afterwards."""
    cluster = Cluster.create_for(testbed, request.node.name, tmp_path)
    yield cluster
    testbed.delete_namespace(cluster.namespace)


@pytest.fixture
async def proxy(cluster: Cluster, tmp_path: Path) -> AsyncIterator[ApiProxy]:
    """The API proxy in front of the real API server, the operator's way to it from then on: its request log
    (``proxy.requests``) and fault hook (``proxy.faults``). The test's own requests go around it, so every
    logged request is the operator's."""
    control_plane = cluster.testbed.control_plane
    async with ApiProxy(control_plane.url, ca_file=control_plane.ca_file) as api_proxy:
        cluster.through(api_proxy, tmp_path)
        yield api_proxy
    assert not api_proxy.internal_errors, api_proxy.internal_errors
