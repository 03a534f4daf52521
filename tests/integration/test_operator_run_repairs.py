"""Runs that would end wrongly or never end: a crashed supervision, lost companions, bad names, a missing Secret."""

import dataclasses

import pytest

from agentrun_api import conditions as c
from agentrun_api import constants
from tests.harness.apiproxy import ApiProxy, RequestRecord
from tests.harness.inprocess_operator import FAST, Cluster, eventually, run_manifest, running_operator

pytestmark = pytest.mark.integration


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
