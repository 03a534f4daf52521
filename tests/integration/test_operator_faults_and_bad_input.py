"""API server errors, overload, bad specs and missing Secrets: a clear outcome, never a stuck or crashed operator."""

from collections.abc import Generator
from pathlib import Path

import pytest
import yaml

from agentrun_api import conditions as c
from tests.harness.apiproxy import ApiProxy, RequestRecord
from tests.harness.inprocess_operator import Cluster, eventually, run_manifest, running_operator
from tests.harness.testbed import KubeTestbed

pytestmark = pytest.mark.integration

PENDING_PROXY = (
    "pending: injects API faults and reads the request log, which needs the API proxy (tests.harness.apiproxy)"
)

CRD = Path(__file__).resolve().parents[2] / "crds" / "agentruns.agentrun.dev.yaml"


def child_create(record: RequestRecord) -> bool:
    """The operator creating a run's children (kopf's own requests have their own retries, tested by kopf)."""
    return record.verb == "create" and record.kind not in ("Event", "AgentRun", "")


async def test_server_errors_and_throttling_for_a_while_still_end_in_the_right_outcome(
    cluster: Cluster, proxy: ApiProxy
) -> None:
    cluster.add_api_key_secret()
    async with running_operator(cluster):
        failing = proxy.faults.inject(500, count=3, match=child_create)
        throttled = proxy.faults.inject(429, count=2, retry_after=1, match=child_create)
        cluster.create(run_manifest())
        await eventually(lambda: cluster.get("Job", "q3-runner"), timeout=20, message="the Job despite errors")
        pod = await cluster.start_pod()
        await eventually(lambda: cluster.status().get("phase") == "Running", timeout=15)
        status_patches = proxy.faults.inject(
            503, count=3, match=lambda r: r.verb == "patch" and r.subresource == "status"
        )
        cluster.report(iteration=2, pod=pod, outcome="Succeeded")
        await eventually(lambda: cluster.status().get("phase") == "Succeeded", timeout=15)
        assert (failing.hits, throttled.hits, status_patches.hits) == (3, 2, 3)
        assert len(cluster.items("Job")) == 1


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


def _admitted(cluster: Cluster, run: dict[str, object]) -> bool:
    answer = cluster.admin.post(cluster.path("AgentRun"), json=run)
    return answer.status_code == 201


@pytest.fixture
def lax_crd(testbed: KubeTestbed) -> Generator[None, None, None]:
    """The AgentRun CRD as an older version without today's rules would be: any spec is admitted. This
    session's control plane gets today's CRD back afterwards."""
    crd = yaml.safe_load(CRD.read_text())
    for version in crd["spec"]["versions"]:
        version["schema"]["openAPIV3Schema"]["properties"]["spec"] = {
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": True,
        }
        version["schema"]["openAPIV3Schema"].pop("required", None)
    answer = testbed.admin.patch(
        f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd['metadata']['name']}",
        params={"fieldManager": "agentrun-tests", "force": "true"},
        headers={"Content-Type": "application/apply-patch+yaml"},
        content=yaml.safe_dump(crd),
    )
    answer.raise_for_status()
    try:
        yield
    finally:
        testbed.install_crds()


async def test_spec_that_slipped_past_admission_fails_naming_the_field_and_is_not_retried(
    lax_crd: None, cluster: Cluster, proxy: ApiProxy
) -> None:
    bad = run_manifest(maxIterations=0, model={"name": "m", "requestTimeout": "soon"})
    # The API server takes a moment to serve the CRD it was given.
    await eventually(lambda: _admitted(cluster, bad), message="the lax CRD to admit the bad run")
    async with running_operator(cluster):
        await eventually(lambda: cluster.status().get("phase") == "Failed", message="phase Failed")
        status = cluster.status()
        assert status["reason"] == c.REASON_INVALID_SPEC
        assert "spec.maxIterations" in status["message"]
        assert "spec.model.requestTimeout" in status["message"]
        failed = cluster.condition(c.FAILED)
        assert failed is not None
        assert failed["reason"] == c.REASON_INVALID_SPEC
        await eventually(lambda: c.REASON_INVALID_SPEC in cluster.event_reasons(), message="the InvalidSpec Event")
        writes = proxy.requests.count(verb="patch", kind="AgentRun", subresource="status")
        # A second, valid run still works: the handler loop is alive.
        cluster.add_api_key_secret()
        cluster.create(run_manifest(name="fine"))
        await eventually(lambda: cluster.get("Job", "fine-runner"), message="the valid run's Job")
        assert cluster.get("Job", "q3-runner") is None
        assert proxy.requests.count(verb="patch", kind="AgentRun", subresource="status") >= writes
        assert cluster.status()["phase"] == "Failed"
