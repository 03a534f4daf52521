"""API server errors, overload, bad specs and missing Secrets: a clear outcome, never a stuck or crashed operator."""

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentrun_api import conditions as c
from tests.harness.apiserver import EmulatedApiServer, RequestRecord
from tests.harness.inprocess_operator import Cluster, eventually, run_manifest, running_operator

pytestmark = pytest.mark.integration

PENDING_PROXY = (
    "pending: injects API faults and reads the request log, which needs the API proxy (tests.harness.apiproxy)"
)

CRD = Path(__file__).resolve().parents[2] / "crds" / "agentruns.agentrun.dev.yaml"


def child_create(record: RequestRecord) -> bool:
    """The operator creating a run's children (kopf's own requests have their own retries, tested by kopf)."""
    return record.verb == "create" and record.kind not in ("Event", "AgentRun", "")


@pytest.mark.skip(reason=PENDING_PROXY)
async def test_server_errors_and_throttling_for_a_while_still_end_in_the_right_outcome(
    apiserver: EmulatedApiServer,
) -> None:
    cluster = Cluster(apiserver)
    cluster.add_api_key_secret()
    async with running_operator(apiserver):
        failing = apiserver.faults.inject(500, count=3, match=child_create)
        throttled = apiserver.faults.inject(429, count=2, retry_after=1, match=child_create)
        cluster.create(run_manifest())
        await eventually(lambda: cluster.get("Job", "q3-runner"), timeout=20, message="the Job despite errors")
        pod = cluster.start_pod()
        await eventually(lambda: cluster.status().get("phase") == "Running", timeout=15)
        status_patches = apiserver.faults.inject(
            503, count=3, match=lambda r: r.verb == "patch" and r.subresource == "status"
        )
        cluster.report(iteration=2, pod=pod, outcome="Succeeded")
        await eventually(lambda: cluster.status().get("phase") == "Succeeded", timeout=15)
        assert (failing.hits, throttled.hits, status_patches.hits) == (3, 2, 3)
        assert len(cluster.store.all_of("Job", "default")) == 1


async def test_missing_api_key_secret_is_a_clear_retried_condition_until_it_appears(cluster: Cluster) -> None:
    async with running_operator(cluster):
        cluster.create(run_manifest())
        accepted = await eventually(
            lambda: (cond := cluster.condition(c.ACCEPTED)) is not None and cond["status"] == "False" and cond,
            message="Accepted=False",
        )
        assert accepted["reason"] == c.REASON_SECRET_NOT_FOUND
        assert "spec.model.apiKeySecretRef" in accepted["message"]
        assert cluster.status()["phase"] == "Pending"
        assert cluster.get("Job", "q3-runner") is None
        cluster.add_api_key_secret()
        await eventually(lambda: cluster.get("Job", "q3-runner"), message="the Job once the Secret exists")
        await eventually(lambda: (cluster.condition(c.ACCEPTED) or {}).get("status") == "True")


async def test_missing_storage_class_is_reported_on_the_field(cluster: Cluster) -> None:
    cluster.add_api_key_secret()
    async with running_operator(cluster):
        cluster.create(run_manifest(checkpoint={"store": "PersistentVolumeClaim", "storageClassName": "absent"}))
        accepted = await eventually(
            lambda: (cond := cluster.condition(c.ACCEPTED)) is not None and cond["status"] == "False" and cond
        )
        assert accepted["reason"] == c.REASON_STORAGE_CLASS_NOT_FOUND
        assert "spec.checkpoint.storageClassName" in accepted["message"]
        assert cluster.get("PersistentVolumeClaim", "q3-ckpt") is None


@pytest.fixture
async def lax_apiserver() -> AsyncIterator[EmulatedApiServer]:
    """An API server that admits anything, as an older CRD without today's rules would."""
    async with EmulatedApiServer([CRD], admission_factory=None) as server:
        yield server


@pytest.mark.skip(reason=PENDING_PROXY)
async def test_spec_that_slipped_past_admission_fails_naming_the_field_and_is_not_retried(
    lax_apiserver: EmulatedApiServer,
) -> None:
    cluster = Cluster(lax_apiserver)
    async with running_operator(lax_apiserver):
        cluster.create(run_manifest(maxIterations=0, model={"name": "m", "requestTimeout": "soon"}))
        await eventually(lambda: cluster.status().get("phase") == "Failed", message="phase Failed")
        status = cluster.status()
        assert status["reason"] == c.REASON_INVALID_SPEC
        assert "spec.maxIterations" in status["message"]
        assert "spec.model.requestTimeout" in status["message"]
        failed = cluster.condition(c.FAILED)
        assert failed is not None
        assert failed["reason"] == c.REASON_INVALID_SPEC
        await eventually(lambda: c.REASON_INVALID_SPEC in cluster.event_reasons(), message="the InvalidSpec Event")
        writes = lax_apiserver.requests.count(verb="patch", kind="AgentRun", subresource="status")
        # A second, valid run still works: the handler loop is alive.
        cluster.add_api_key_secret()
        cluster.create(run_manifest(name="fine"))
        await eventually(lambda: cluster.get("Job", "fine-runner"), message="the valid run's Job")
        assert cluster.get("Job", "q3-runner") is None
        assert lax_apiserver.requests.count(verb="patch", kind="AgentRun", subresource="status") >= writes
        assert cluster.status()["phase"] == "Failed"
