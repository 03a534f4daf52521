"""Image pull secrets through the chart, rendered by Helm's own engine: the operator's and the gateway's pods get
imagePullSecrets, and the operator gets the runner pods' default ones."""

from typing import Any

import pytest
import yaml

from agentrun_operator.settings import OperatorSettings
from tests.harness.chart import CHART_DIR, render_objects

pytestmark = pytest.mark.unit

GATEWAY_ON = {"gateway": {"enabled": True, "route": {"host": "runs.example.com"}}}


def deployments(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        o["metadata"]["name"]: o["spec"]["template"]["spec"]
        for o in render_objects(values)
        if o["kind"] == "Deployment"
    }


def operator_env(values: dict[str, Any]) -> dict[str, str]:
    (pod,) = [pod for name, pod in deployments(values).items() if not name.endswith("stream-gateway")]
    (container,) = pod["containers"]
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def test_no_pull_secrets_by_default() -> None:
    pods = deployments(GATEWAY_ON)
    assert len(pods) == 2
    assert all("imagePullSecrets" not in pod for pod in pods.values())
    assert OperatorSettings.from_env(operator_env(GATEWAY_ON)).runner_image_pull_secrets == ()


def test_operator_and_gateway_pods_pull_with_the_listed_secrets() -> None:
    values = {**GATEWAY_ON, "imagePullSecrets": [{"name": "regcred"}, {"name": "mirror-cred"}]}
    pods = deployments(values)
    assert [pod["imagePullSecrets"] for pod in pods.values()] == [[{"name": "regcred"}, {"name": "mirror-cred"}]] * 2


def test_runner_pull_secrets_reach_the_operator_settings() -> None:
    values = {"runnerImage": {"pullSecrets": [{"name": "runner-cred"}, {"name": "team.registry"}]}}
    env = operator_env(values)
    assert env["AGENTRUN_RUNNER_IMAGE_PULL_SECRETS"] == "runner-cred,team.registry"
    assert OperatorSettings.from_env(env).runner_image_pull_secrets == ("runner-cred", "team.registry")


def test_default_images_are_the_release_path_at_the_app_version() -> None:
    app_version = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())["appVersion"]
    pods = deployments(GATEWAY_ON)
    images = sorted(c["image"] for pod in pods.values() for c in pod["containers"])
    assert images == [
        f"ghcr.io/agentrun/agentrun-operator/gateway:{app_version}",
        f"ghcr.io/agentrun/agentrun-operator/operator:{app_version}",
    ]
    env = operator_env(GATEWAY_ON)
    assert env["AGENTRUN_RUNNER_IMAGE"] == f"ghcr.io/agentrun/agentrun-operator/runner:{app_version}"
