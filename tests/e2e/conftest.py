"""Fixtures of the e2e layer: a LocalCluster per test (the operator installed by the chart), with the model Secret
runs refer to."""

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.e2e.runs import local_cluster
from tests.harness.local_cluster import LocalCluster
from tests.harness.model_server import research_script
from tests.harness.nodeagent.kube import KubeClient
from tests.harness.runner import ToolServer
from tests.harness.testbed import KubeTestbed


@pytest.fixture
async def cluster(testbed: KubeTestbed, tmp_path: Path) -> AsyncIterator[LocalCluster]:
    # Slow answers keep the run going long enough to kill its pod in the middle. The operator is the chart's,
    # installed with Helm for the test's namespace.
    async with local_cluster(testbed, tmp_path, research_script(delay=0.4), scripted=False, from_chart=True) as running:
        yield running


@pytest.fixture
async def operator_process_cluster(testbed: KubeTestbed, tmp_path: Path) -> AsyncIterator[LocalCluster]:
    """The operator as a child process, with its own ServiceAccount under the chart's RBAC: for tests whose stream
    gateway runs outside the chart as the harness's gateway identity (tests.harness.identities), which the chart's
    operator, with its gateway off, grants nothing. A module uses it by naming it as its ``cluster``."""
    async with local_cluster(testbed, tmp_path, research_script(delay=0.4), scripted=False) as running:
        yield running


@pytest.fixture
async def kube(cluster: LocalCluster) -> AsyncIterator[KubeClient]:
    async with KubeClient(str(cluster.kubeconfig_path)) as client:
        yield client


@pytest.fixture
async def tools() -> AsyncIterator[ToolServer]:
    """The far side of the runs' http_fetch: counts executions per Idempotency-Key."""
    async with ToolServer() as server:
        yield server
