"""Runs that would end wrongly or never end: a crashed supervision, lost companions, bad names, a missing Secret."""

import pytest

from agentrun_api import constants
from tests.harness.apiproxy import ApiProxy, RequestRecord
from tests.harness.inprocess_operator import Cluster, eventually, run_manifest, running_operator

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
