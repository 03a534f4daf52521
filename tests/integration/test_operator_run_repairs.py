"""Runs that would end wrongly or never end: a crashed supervision, lost companions, bad names, a missing Secret."""

import dataclasses
import os
from collections.abc import Generator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from agentrun_api import conditions as c
from agentrun_api import constants, names
from agentrun_api.contract import ProgressReport, RunIdentity, progress_name
from agentrun_runner.kube import ConfigMaps, load_configuration
from agentrun_runner.progress import ConfigMapProgressSink
from tests.harness.apiproxy import ApiProxy, RequestRecord
from tests.harness.inprocess_operator import FAST, Cluster, eventually, run_manifest, running_operator
from tests.harness.run_identity import provision_run
from tests.harness.runner import make_spec
from tests.harness.testbed import KubeTestbed

pytestmark = pytest.mark.integration

CRD = Path(__file__).resolve().parents[2] / "crds" / "agentruns.agentrun.dev.yaml"


def _status_write(record: RequestRecord) -> bool:
    return record.verb == "patch" and record.kind == constants.KIND and record.subresource == "status"


async def test_a_crashed_supervision_is_retried_and_the_run_ends(cluster: Cluster, proxy: ApiProxy) -> None:
    cluster.add_api_key_secret()
    async with running_operator(cluster):
        cluster.create(run_manifest())
        await eventually(lambda: cluster.get("Job", "q3-runner"), message="the Job")
        pod = await cluster.start_pod()
        await eventually(lambda: cluster.status().get("phase") == "Running", message="phase Running")
        # The write of the outcome gets an HTML page where JSON belongs (a broken middlebox): not an API error,
        # so it is no request the supervisor retries in place; its whole supervision fails.
        garbled = proxy.faults.inject(body=b"<html>502 Bad Gateway</html>", count=2, match=_status_write)
        cluster.report(
            iteration=2,
            pod=pod,
            outcome="Succeeded",
            result={"summary": "done", "ref": "configmap/q3-ckpt-0#result", "bytes": 4},
        )
        await eventually(lambda: garbled.hits == 2, message="both garbled answers")
        await eventually(
            lambda: cluster.status().get("phase") == "Succeeded",
            timeout=20,
            message=f"phase Succeeded, not {cluster.status()}",
        )
        assert cluster.status()["result"]["summary"] == "done"


async def test_a_run_whose_secret_never_appears_fails_after_the_grace_naming_it(cluster: Cluster) -> None:
    settings = dataclasses.replace(FAST, prerequisite_grace_seconds=3.0)
    async with running_operator(cluster, settings):
        cluster.create(run_manifest())
        pending = await eventually(
            lambda: (cond := cluster.condition(c.ACCEPTED)) is not None and cond["status"] == "False" and cond,
            message="Accepted=False while the Secret may still come",
        )
        assert cluster.status()["phase"] == "Pending"
        assert "fails if still missing 3s after creation" in pending["message"]
        await eventually(lambda: cluster.status().get("phase") == "Failed", timeout=15, message="phase Failed")
        status = cluster.status()
        assert status["reason"] == c.REASON_SECRET_NOT_FOUND
        assert "spec.model.apiKeySecretRef: Secret 'openai' not found" in status["message"]
        assert "grace 3s" in status["message"]
        failed = cluster.condition(c.FAILED)
        assert failed is not None
        assert failed["reason"] == c.REASON_SECRET_NOT_FOUND
        assert cluster.get("Job", "q3-runner") is None
        await eventually(lambda: c.REASON_SECRET_NOT_FOUND in cluster.event_reasons(), message="the Event")


async def test_a_secret_without_the_key_fails_naming_the_keys_it_has_never_their_values(cluster: Cluster) -> None:
    cluster.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "openai"},
            "stringData": {"token": "sk-secret-value", "org": "acme-org-value"},
        }
    )
    settings = dataclasses.replace(FAST, prerequisite_grace_seconds=2.0)
    async with running_operator(cluster, settings):
        cluster.create(run_manifest())
        await eventually(lambda: cluster.status().get("phase") == "Failed", timeout=15, message="phase Failed")
        message = cluster.status()["message"]
        assert "Secret 'openai' has no key 'api-key' (its keys: org, token)" in message
        assert "sk-secret-value" not in message
        assert "acme-org-value" not in message
        events = " ".join(e.get("message", "") for e in cluster.events())
        assert "its keys: org, token" in events
        assert "sk-secret-value" not in events


def test_the_api_server_refuses_names_the_run_cannot_carry(cluster: Cluster) -> None:
    for name, words in [
        ("q3.v2", "must be a DNS-1035 label"),
        ("a" * (names.RUN_NAME_MAX_LENGTH + 1), f"must be at most {names.RUN_NAME_MAX_LENGTH} characters"),
    ]:
        answer = cluster.admin.post(cluster.path(constants.KIND), json=run_manifest(name=name))
        assert answer.status_code == 422, answer.text
        assert words in answer.json()["message"]
    longest = "a" * names.RUN_NAME_MAX_LENGTH
    assert cluster.admin.post(cluster.path(constants.KIND), json=run_manifest(name=longest)).status_code == 201


@pytest.fixture
def crd_without_name_rule(testbed: KubeTestbed) -> Generator[None, None, None]:
    """The AgentRun CRD as a version before the name rule was: any name is admitted. Today's CRD comes back after."""
    crd = yaml.safe_load(CRD.read_text())
    for version in crd["spec"]["versions"]:
        version["schema"]["openAPIV3Schema"].pop("x-kubernetes-validations", None)
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


async def test_a_name_that_slipped_past_admission_ends_the_run_with_a_reason_and_no_children(
    crd_without_name_rule: None, cluster: Cluster
) -> None:
    cluster.add_api_key_secret()
    bad = run_manifest(name="q3.v2")
    await eventually(
        lambda: cluster.admin.post(cluster.path(constants.KIND), json=bad).status_code == 201,
        message="the CRD without the name rule to admit the dotted name",
    )
    async with running_operator(cluster):
        await eventually(lambda: cluster.status("q3.v2").get("phase") == "Failed", message="phase Failed")
        status = cluster.status("q3.v2")
        assert status["reason"] == c.REASON_INVALID_NAME
        assert "DNS-1035 label" in status["message"]
        await eventually(lambda: c.REASON_INVALID_NAME in cluster.event_reasons("q3.v2"), message="the Event")
        for kind in ("ServiceAccount", "Role", "ConfigMap", "Secret", "Service", "Job"):
            assert [o for o in cluster.items(kind) if o["metadata"]["name"].startswith("q3.v2")] == [], kind


async def test_deleted_companions_of_a_live_run_are_created_again_and_the_run_succeeds(cluster: Cluster) -> None:
    cluster.add_api_key_secret()
    settings = dataclasses.replace(FAST, companion_check_interval_seconds=1.0)
    async with running_operator(cluster, settings):
        cluster.create(run_manifest())
        await eventually(lambda: cluster.get("Job", "q3-runner"), message="the Job")
        pod = await cluster.start_pod()
        await eventually(lambda: cluster.status().get("phase") == "Running", message="phase Running")
        uid = cluster.run()["metadata"]["uid"]
        companions = [
            ("ConfigMap", "q3-progress"),
            ("ConfigMap", "q3-runner-config"),
            ("Secret", "q3-stream-token"),
            ("Service", "q3-stream"),
            ("ServiceAccount", "q3-runner"),
            ("Role", "q3-runner"),
            ("RoleBinding", "q3-runner"),
        ]
        for kind, name in companions:
            before = cluster.get(kind, name)
            assert before is not None, f"{kind}/{name}"
            cluster.delete(kind, name)

            def recreated(kind: str = kind, name: str = name, old: str = before["metadata"]["uid"]) -> bool:
                now = cluster.get(kind, name)
                return now is not None and now["metadata"]["uid"] != old

            await eventually(recreated, timeout=15, message=f"{kind}/{name} created again")
            again = cluster.get(kind, name)
            assert again is not None
            assert again["metadata"]["ownerReferences"][0]["uid"] == uid
            assert again["metadata"]["labels"][constants.LABEL_MANAGED_BY] == constants.MANAGED_BY
        await eventually(
            lambda: c.REASON_COMPANION_RESTORED in cluster.event_reasons(), message="the CompanionRestored Event"
        )
        assert cluster.status()["phase"] == "Running"
        cluster.report(
            iteration=3,
            pod=pod,
            outcome="Succeeded",
            result={"summary": "kept", "ref": "configmap/q3-ckpt-0#result", "bytes": 4},
        )
        await eventually(lambda: cluster.status().get("phase") == "Succeeded", timeout=15, message="phase Succeeded")
        assert cluster.status()["result"]["summary"] == "kept"


async def test_a_progress_configmap_the_runner_creates_again_carries_the_labels_the_operator_watches(
    testbed: KubeTestbed, namespace: str, tmp_path: Path
) -> None:
    spec = make_spec("http://127.0.0.1:9/v1", checkpoint={"store": "ConfigMap"})  # its Role may create ConfigMaps
    run = provision_run(testbed, namespace, spec, tmp_path, name="relabel")
    path = f"/api/v1/namespaces/{namespace}/configmaps/{progress_name('relabel')}"
    testbed.admin.delete(path).raise_for_status()
    os.environ["KUBECONFIG"] = str(run.kubeconfig)
    try:
        client = ConfigMaps(
            load_configuration(), namespace, owner=RunIdentity(namespace=namespace, name="relabel", uid=run.uid)
        )
    finally:
        os.environ.pop("KUBECONFIG")
    try:
        report = ProgressReport(run_uid=run.uid, pod="p", iteration=1, reported_at=datetime.now(UTC))
        await ConfigMapProgressSink(client, "relabel").write(report)
    finally:
        await client.close()
    created = testbed.admin.get(path).json()
    labels = created["metadata"]["labels"]
    assert labels[constants.LABEL_MANAGED_BY] == constants.MANAGED_BY
    assert labels[constants.LABEL_ROLE] == "progress"
    assert labels[constants.LABEL_RUN] == "relabel"
    assert created["metadata"]["ownerReferences"][0]["uid"] == run.uid


async def test_a_deleted_progress_configmap_is_created_again_at_once_and_the_outcome_still_counts(
    cluster: Cluster,
) -> None:
    cluster.add_api_key_secret()
    assert FAST.companion_check_interval_seconds >= 60  # so only the watch can bring it back within the test
    async with running_operator(cluster):
        cluster.create(run_manifest())
        await eventually(lambda: cluster.get("Job", "q3-runner"), message="the Job")
        pod = await cluster.start_pod()
        await eventually(lambda: cluster.status().get("phase") == "Running", message="phase Running")
        old = cluster.get("ConfigMap", "q3-progress")
        assert old is not None
        cluster.delete("ConfigMap", "q3-progress")
        await eventually(
            lambda: (
                (cm := cluster.get("ConfigMap", "q3-progress")) is not None
                and cm["metadata"]["uid"] != old["metadata"]["uid"]
            ),
            timeout=10,
            message="the progress ConfigMap created again",
        )
        cluster.report(
            iteration=2,
            pod=pod,
            outcome="Succeeded",
            result={"summary": "still here", "ref": "configmap/q3-ckpt-0#result", "bytes": 10},
        )
        await eventually(lambda: cluster.status().get("phase") == "Succeeded", timeout=15, message="phase Succeeded")
        assert cluster.status()["result"]["summary"] == "still here"


async def test_a_child_the_api_server_refuses_as_invalid_ends_the_run_instead_of_retrying(
    cluster: Cluster, proxy: ApiProxy
) -> None:
    cluster.add_api_key_secret()
    async with running_operator(cluster):
        refused = proxy.faults.inject(422, match=lambda r: r.verb == "create" and r.kind == "Service")
        cluster.create(run_manifest())
        await eventually(lambda: cluster.status().get("phase") == "Failed", message="phase Failed")
        status = cluster.status()
        assert status["reason"] == c.REASON_CHILD_REJECTED
        assert "the API server rejected Service q3-stream" in status["message"]
        await eventually(lambda: c.REASON_CHILD_REJECTED in cluster.event_reasons(), message="the Event")
        assert refused.hits == 1
        assert cluster.get("Job", "q3-runner") is None
