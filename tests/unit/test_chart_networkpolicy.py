"""The chart's NetworkPolicies and platform policy, rendered by the real Helm engine: each policy selects the
pods the product really labels, lets through what each component needs, and is valid Kubernetes."""

from datetime import UTC, datetime, timedelta
from typing import Any

import helm_python
import kubernetes_validate
import pytest

from agentrun_api import contract
from agentrun_api.spec import AgentRunSpec, ResourceRequirements
from agentrun_operator.children import RunOwner, build_job
from agentrun_operator.settings import OperatorSettings
from tests.harness.chart import NAMESPACE, NEWEST_KUBERNETES, OLDEST_KUBERNETES, ci_scenarios, find, render_objects

pytestmark = pytest.mark.unit

SCENARIO = ci_scenarios()["networkpolicy"]
DNS = [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]


def policies(values: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (o["metadata"]["namespace"], o["metadata"]["name"]): o
        for o in render_objects(values)
        if o["kind"] == "NetworkPolicy"
    }


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, selector
    return all(labels.get(key) == value for key, value in selector.get("matchLabels", {}).items())


def runner_pod_labels(namespace: str) -> dict[str, str]:
    spec = AgentRunSpec.model_validate(
        {"instructions": "i", "input": "x", "model": {"name": "m"}, "maxExecutionTime": "5m", "maxIterations": 2}
    )
    now = datetime(2026, 1, 1, tzinfo=UTC)
    owner = RunOwner(namespace=namespace, name="q3", uid="u")
    job = build_job(owner, spec, OperatorSettings(), deadline=now + timedelta(minutes=5), now=now)
    labels: dict[str, str] = job["spec"]["template"]["metadata"]["labels"]
    return labels


def deployment_pod_labels(objects: list[dict[str, Any]], name: str) -> dict[str, str]:
    deployment = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == name)
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    return labels


def env_of(objects: list[dict[str, Any]]) -> dict[str, str]:
    (container,) = find(objects, "Deployment", "agentrun-operator")["spec"]["template"]["spec"]["containers"]
    return {item["name"]: item.get("value", "") for item in container["env"]}


def test_no_network_policy_unless_enabled() -> None:
    assert policies({}) == {}


def test_enabling_without_api_server_cidrs_is_refused_naming_the_value() -> None:
    with pytest.raises(helm_python.HelmError, match=r"networkPolicy\.apiServer\.cidrs"):
        render_objects({"networkPolicy": {"enabled": True}})


@pytest.mark.parametrize("kubernetes_version", [OLDEST_KUBERNETES, NEWEST_KUBERNETES])
def test_every_network_policy_is_valid_kubernetes(kubernetes_version: str) -> None:
    rendered = policies(SCENARIO)
    assert set(rendered) == {
        (NAMESPACE, "agentrun-operator"),
        (NAMESPACE, "agentrun-operator-stream-gateway"),
        ("team-a", "agentrun-operator-runners"),
        ("team-b", "agentrun-operator-runners"),
    }
    for policy in rendered.values():
        kubernetes_validate.validate(policy, kubernetes_version, strict=True)
        assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]


def test_runner_policy_selects_runner_pods_and_allows_dns_api_permits_and_listed_hosts_only() -> None:
    objects = render_objects(SCENARIO)
    runner = policies(SCENARIO)[("team-a", "agentrun-operator-runners")]["spec"]
    assert selects(runner["podSelector"], runner_pod_labels("team-a"))
    operator_labels = deployment_pod_labels(objects, "agentrun-operator")
    assert not selects(runner["podSelector"], operator_labels)

    dns, api, permits, models = runner["egress"]
    assert dns["ports"] == DNS
    assert api == {
        "to": [{"ipBlock": {"cidr": "10.0.0.10/32"}}],
        "ports": [{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 6443}],
    }
    assert permits["ports"] == [{"protocol": "TCP", "port": 8090}]
    (permit_peer,) = permits["to"]
    assert permit_peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}}
    assert selects(permit_peer["podSelector"], operator_labels)
    assert models == {
        "to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "169.254.169.254/32"]}}],
        "ports": [{"protocol": "TCP", "port": 443}],
    }

    (stream,) = runner["ingress"]
    assert stream["ports"] == [{"protocol": "TCP", "port": contract.STREAM_PORT}]
    (reader,) = stream["from"]
    assert selects(reader["podSelector"], deployment_pod_labels(objects, "agentrun-operator-stream-gateway"))


def test_operator_policy_takes_permits_only_from_runner_pods_and_posts_webhooks_to_listed_cidrs() -> None:
    objects = render_objects(SCENARIO)
    operator = policies(SCENARIO)[(NAMESPACE, "agentrun-operator")]["spec"]
    assert selects(operator["podSelector"], deployment_pod_labels(objects, "agentrun-operator"))
    metrics, health, permits = operator["ingress"]
    assert metrics["from"] == SCENARIO["networkPolicy"]["operator"]["metricsFrom"]
    assert "from" not in health  # the kubelet's probe
    (runners,) = permits["from"]
    assert selects(runners["podSelector"], runner_pod_labels("team-b"))
    assert runners["namespaceSelector"]["matchExpressions"] == [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a", "team-b"]}
    ]
    assert operator["egress"][-1] == {
        "to": [{"ipBlock": {"cidr": "192.0.2.0/24"}}],
        "ports": [{"protocol": "TCP", "port": 443}],
    }


def test_gateway_policy_reaches_runner_stream_ports_only() -> None:
    objects = render_objects(SCENARIO)
    gateway = policies(SCENARIO)[(NAMESPACE, "agentrun-operator-stream-gateway")]["spec"]
    assert selects(gateway["podSelector"], deployment_pod_labels(objects, "agentrun-operator-stream-gateway"))
    assert gateway["ingress"][0]["from"] == SCENARIO["networkPolicy"]["gateway"]["ingressFrom"]
    dns, api, runners = gateway["egress"]
    assert dns["ports"] == DNS
    assert api["to"] == [{"ipBlock": {"cidr": "10.0.0.10/32"}}]
    assert runners["ports"] == [{"protocol": "TCP", "port": contract.STREAM_PORT}]
    assert selects(runners["to"][0]["podSelector"], runner_pod_labels("team-a"))


def test_runner_namespace_defaults_to_the_watched_namespace_and_without_gateway_readers_are_local() -> None:
    values = {"watchNamespace": "agents", "networkPolicy": {"enabled": True, "apiServer": {"cidrs": ["10.0.0.1/32"]}}}
    rendered = policies(values)
    assert set(rendered) == {(NAMESPACE, "agentrun-operator"), ("agents", "agentrun-operator-runners")}
    (stream,) = rendered[("agents", "agentrun-operator-runners")]["spec"]["ingress"]
    assert stream["from"] == [{"podSelector": {}}]  # pods of the run's own namespace read the in-cluster URL


def test_a_fresh_install_allows_only_its_runner_image_and_the_openai_api_and_no_webhook_host() -> None:
    env = env_of(render_objects({}))
    settings = OperatorSettings.from_env(env)
    assert settings.policy.allowed_images == ("ghcr.io/agentrun/agentrun-operator/runner",)
    assert settings.policy.image_allowed(settings.runner_image)
    assert settings.policy.allowed_model_hosts == ("api.openai.com",)
    assert settings.policy.allowed_webhook_hosts == ()
    assert settings.policy.require_image_digest is False
    assert settings.policy.default_runner_resources == ResourceRequirements()


def test_policy_values_reach_the_operator_and_always_allow_the_default_runner_image() -> None:
    settings = OperatorSettings.from_env(env_of(render_objects(SCENARIO)))
    assert settings.policy.allowed_images == ("ghcr.io/agentrun/agentrun-operator/runner", "ghcr.io/acme/*")
    assert settings.policy.require_image_digest is True
    assert settings.policy.allowed_model_hosts == ("api.openai.com", "*.models.internal.example")
    assert settings.policy.allowed_webhook_hosts == ("hooks.example.com",)
    assert settings.policy.default_runner_resources.model_dump() == {
        "requests": {"cpu": "250m", "memory": "512Mi"},
        "limits": {"memory": "1Gi"},
    }


@pytest.mark.parametrize(
    "values",
    [
        {"policy": {"allowedModelHosts": ["https://api.openai.com/v1"]}},
        {"policy": {"allowedImages": ["ghcr.io/acme/**"]}},
        {"policy": {"defaultRunnerResources": {"requests": {"cpu": "lots"}}}},
        {"networkPolicy": {"runners": {"egress": [{"cidr": "everything"}]}}},
    ],
)
def test_values_schema_rejects_a_malformed_pattern(values: dict[str, Any]) -> None:
    with pytest.raises(helm_python.HelmError):
        render_objects(values)
