"""The chart installed in a real cluster (`make kind-up images kind-load deploy`): CRD served, operator up."""

import time
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from agentrun_api import constants
from tests.cluster.conftest import Cluster

pytestmark = pytest.mark.cluster

WAIT_SECONDS = 25


def minimal_run(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": constants.API_VERSION,
        "kind": constants.KIND,
        "metadata": {"name": name},
        "spec": {
            "instructions": "Answer in one sentence.",
            "input": "What is a Kubernetes Job?",
            "model": {"name": "gpt-4.1-mini", "apiKeySecretRef": {"name": "openai-api-key", "key": "api-key"}},
            "maxExecutionTime": "5m",
            "maxIterations": 3,
            **spec,
        },
    }


def test_agentrun_crd_is_established(cluster: Cluster) -> None:
    crd = client.ApiextensionsV1Api(cluster.api).read_custom_resource_definition(constants.CRD_NAME)
    conditions = {c.type: c.status for c in crd.status.conditions}
    assert conditions.get("Established") == "True"


def test_operator_deployment_is_available(cluster: Cluster) -> None:
    apps = client.AppsV1Api(cluster.api)
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        deployments = apps.list_namespaced_deployment(
            cluster.release_namespace, label_selector="app.kubernetes.io/component=operator"
        ).items
        if deployments and all((d.status.available_replicas or 0) >= 1 for d in deployments):
            return
        assert time.monotonic() < deadline, f"no available operator Deployment in {cluster.release_namespace}"
        time.sleep(1)


def test_api_server_rejects_an_invalid_agentrun(cluster: Cluster, test_namespace: str) -> None:
    objects = client.CustomObjectsApi(cluster.api)
    with pytest.raises(ApiException) as rejected:
        objects.create_namespaced_custom_object(
            constants.GROUP,
            constants.VERSION,
            test_namespace,
            constants.PLURAL,
            minimal_run("bad", maxIterations=0),
            dry_run="All",
        )
    assert rejected.value.status == 422
    assert "maxIterations" in rejected.value.body


def test_operator_answers_a_new_run_with_a_status(cluster: Cluster, test_namespace: str) -> None:
    """Whatever becomes of it (the model Secret is absent here), the operator writes a phase into status."""
    objects = client.CustomObjectsApi(cluster.api)
    objects.create_namespaced_custom_object(
        constants.GROUP, constants.VERSION, test_namespace, constants.PLURAL, minimal_run("hello")
    )
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        run = objects.get_namespaced_custom_object(
            constants.GROUP, constants.VERSION, test_namespace, constants.PLURAL, "hello"
        )
        if run.get("status", {}).get("phase"):
            return
        assert time.monotonic() < deadline, "the operator wrote no status.phase"
        time.sleep(1)
