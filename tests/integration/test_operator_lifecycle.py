"""The real operator on the real control plane: a run from creation to its end."""

import json

import pytest

from agentrun_api import conditions as c
from tests.harness.inprocess_operator import Cluster, eventually, run_manifest, running_operator

pytestmark = pytest.mark.integration


async def test_new_run_gets_every_child_and_goes_pending_running_succeeded(cluster: Cluster) -> None:
    cluster.add_api_key_secret()
    async with running_operator(cluster):
        cluster.create(run_manifest())
        await eventually(lambda: cluster.status().get("phase") == "Pending", message="phase Pending")
        job = await eventually(lambda: cluster.get("Job", "q3-runner"), message="the Job")
        for kind, name in [
            ("ServiceAccount", "q3-runner"),
            ("Role", "q3-runner"),
            ("RoleBinding", "q3-runner"),
            ("ConfigMap", "q3-runner-config"),
            ("ConfigMap", "q3-progress"),
            ("Secret", "q3-stream-token"),
            ("Secret", "q3-permit-key"),
            ("Service", "q3-stream"),
            ("Role", "q3-stream-reader"),
            ("RoleBinding", "q3-stream-reader"),
        ]:
            child = cluster.get(kind, name)
            assert child is not None, f"{kind}/{name} missing"
            assert child["metadata"]["ownerReferences"][0]["uid"] == cluster.run()["metadata"]["uid"]
        assert job["spec"]["activeDeadlineSeconds"] == 1800  # the whole budget: no grace past it
        assert job["spec"]["backoffLimit"] == 3
        assert [r["action"] for r in job["spec"]["podFailurePolicy"]["rules"]] == ["FailJob", "Ignore"]
        pod_spec = job["spec"]["template"]["spec"]
        assert pod_spec["restartPolicy"] == "Never"
        assert pod_spec["serviceAccountName"] == "q3-runner"
        container = pod_spec["containers"][0]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        env = {e["name"]: e for e in container["env"]}
        assert env["OPENAI_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "openai", "key": "api-key"}
        role = cluster.get("Role", "q3-runner")
        assert role is not None
        assert {r for rule in role["rules"] for r in rule["resources"]} == {"configmaps"}
        config = cluster.get("ConfigMap", "q3-runner-config")
        assert config is not None
        assert '"uid":"' + cluster.run()["metadata"]["uid"] + '"' in config["data"]["run.json"]

        pod = await cluster.start_pod()
        await eventually(lambda: cluster.status().get("phase") == "Running", message="phase Running")
        cluster.report(
            iteration=3,
            usage={"promptTokens": 10, "completionTokens": 5, "totalTokens": 15},
            lastCheckpoint={"iteration": 3, "time": "2026-01-01T00:00:00Z", "bytes": 512},
        )
        await eventually(lambda: cluster.status().get("progress") == "3/50", message="progress 3/50")
        cluster.report(
            iteration=4,
            pod=pod,
            outcome="Succeeded",
            result={"summary": "Vendor B wins", "ref": "configmap/q3-ckpt-0#result", "bytes": 13},
        )
        await eventually(lambda: cluster.status().get("phase") == "Succeeded", message="phase Succeeded")
        status = cluster.status()
        assert status["result"]["summary"] == "Vendor B wins"
        complete = cluster.condition(c.COMPLETE)
        assert complete is not None
        assert complete["status"] == "True"
        assert status["observedGeneration"] == 1
        assert "kopf" not in status
        # The operator writes status only: no finalizer, no bookkeeping annotations on the user's object.
        metadata = cluster.run()["metadata"]
        assert not metadata.get("finalizers")
        assert not metadata.get("annotations")
        await eventually(
            lambda: (
                {c.REASON_CREATED, c.REASON_STARTED, "Checkpointed", c.REASON_SUCCEEDED} <= set(cluster.event_reasons())
            ),
            message="the lifecycle Events",
        )


async def test_api_key_never_leaves_its_secret(cluster: Cluster) -> None:
    cluster.add_api_key_secret()
    async with running_operator(cluster):
        cluster.create(run_manifest())
        await eventually(lambda: cluster.get("Job", "q3-runner"))
        pod = await cluster.start_pod()
        cluster.report(iteration=1, pod=pod, outcome="Succeeded")
        await eventually(lambda: cluster.status().get("phase") == "Succeeded")
        await eventually(lambda: len(cluster.events()) >= 3)
    key = "sk-test-not-real"
    for kind in ("ConfigMap", "Event", "AgentRun", "Job", "Service", "Role"):
        for obj in cluster.items(kind):
            assert key not in json.dumps(obj), f"the API key leaked into {kind}/{obj['metadata']['name']}"
