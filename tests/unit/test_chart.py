"""The Helm chart, rendered by the real Helm engine and checked by Kubernetes' own OpenAPI schemas."""

import re
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

from agentrun_api import constants
from agentrun_api.spec import AgentRunSpec
from agentrun_operator import permissions
from agentrun_operator.leadership import LEADER_LABEL
from tests.harness.chart import (
    CHART_DIR,
    NAMESPACE,
    NEWEST_KUBERNETES,
    OLDEST_KUBERNETES,
    REPO_ROOT,
    chart_crd_documents,
    ci_scenarios,
    find,
    kinds,
    notes,
    render,
    render_objects,
)

pytestmark = pytest.mark.unit

SCENARIOS = ci_scenarios()
# Kinds whose schemas are not part of Kubernetes itself, so kubernetes-validate has none for them.
NOT_IN_KUBERNETES = {"ServiceMonitor", "PodMonitor"}
# The operator settings the brief fixes; the chart must set each of them and nothing else named AGENTRUN_*.
OPERATOR_SETTINGS_ENV = {
    "AGENTRUN_WATCH_NAMESPACE",
    "AGENTRUN_RUNNER_IMAGE",
    "AGENTRUN_RUNNER_IMAGE_PULL_SECRETS",
    "AGENTRUN_STATUS_MIN_INTERVAL_SECONDS",
    "AGENTRUN_PROGRESS_INTERVAL_SECONDS",
    "AGENTRUN_METRICS_PORT",
    "AGENTRUN_HEALTH_PORT",
    "AGENTRUN_LOG_FORMAT",
    "AGENTRUN_STREAM_BASE_URL",
    # How long a run waits for a missing Secret or StorageClass; how often its companions are checked.
    "AGENTRUN_PREREQUISITE_GRACE_SECONDS",
    "AGENTRUN_COMPANION_CHECK_INTERVAL_SECONDS",
    # The ThrottlePool permit server's port (agentrun_operator.permits.settings).
    "AGENTRUN_PERMIT_PORT",
    # The permit server's in-cluster URL, given to throttled runs (OperatorSettings.permit_server_url).
    "AGENTRUN_PERMIT_SERVER_URL",
    # Not in the brief's list: leader election between replicas (agentrun_operator.leadership).
    "AGENTRUN_LEADER_ELECTION_LEASE",
    "AGENTRUN_LEADER_ELECTION_NAMESPACE",
    "AGENTRUN_LEASE_DURATION_SECONDS",
    "AGENTRUN_LEASE_RENEW_DEADLINE_SECONDS",
    "AGENTRUN_LEASE_RETRY_PERIOD_SECONDS",
    # The controller in front of the stream gateway, from gateway.controller (OperatorSettings.stream_controller).
    "AGENTRUN_STREAM_CONTROLLER",
    # The stream gateway's ServiceAccount, granted each streaming run's stream-token Secret by name
    # (OperatorSettings.gateway_service_account); empty without the gateway.
    "AGENTRUN_GATEWAY_SERVICE_ACCOUNT",
    # The platform policy, from policy.* (agentrun_operator.policy).
    "AGENTRUN_POLICY_ALLOWED_IMAGES",
    "AGENTRUN_POLICY_REQUIRE_IMAGE_DIGEST",
    "AGENTRUN_POLICY_ALLOWED_MODEL_HOSTS",
    "AGENTRUN_POLICY_ALLOWED_WEBHOOK_HOSTS",
    "AGENTRUN_POLICY_ALLOWED_TOOL_HOSTS",
    "AGENTRUN_POLICY_ALLOW_TOOL_LOOPBACK",
    "AGENTRUN_POLICY_DEFAULT_RUNNER_RESOURCES",
}


def operator_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = find(objects, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item.get("value", "") for item in container["env"]}


def test_ci_scenarios_cover_the_issue_list() -> None:
    assert {"default", "namespaced", "monitoring", "crds-off"} <= set(SCENARIOS)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
@pytest.mark.parametrize("kubernetes_version", [OLDEST_KUBERNETES, NEWEST_KUBERNETES])
def test_every_rendered_object_is_valid_for_kubernetes(scenario: str, kubernetes_version: str) -> None:
    objects = render_objects(SCENARIOS[scenario]) + chart_crd_documents()
    validated = 0
    for obj in objects:
        if obj["kind"] in NOT_IN_KUBERNETES:
            continue
        # strict: unknown fields are errors, as the API server's strict field validation makes them.
        kubernetes_validate.validate(obj, kubernetes_version, strict=True)
        validated += 1
    assert validated >= 6


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
@pytest.mark.parametrize("kubernetes_version", [OLDEST_KUBERNETES, NEWEST_KUBERNETES])
def test_helm_lint_is_clean(scenario: str, kubernetes_version: str) -> None:
    report = helm_python.lint(
        CHART_DIR, SCENARIOS[scenario], strict=True, namespace="agentrun-system", kube_version=f"v{kubernetes_version}"
    )
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [], report
    assert problems == [], report


def test_helm_lint_finds_a_broken_template(tmp_path: Any) -> None:
    """The linter is really run: a chart with a template error fails it."""
    broken = tmp_path / "agentrun-operator"
    with helm_python.Chart.load(CHART_DIR) as chart:
        chart.save_dir(tmp_path)
    (broken / "templates" / "broken.yaml").write_text("{{ .Values.nothing.here }}\n")
    report = helm_python.lint(broken, strict=True)
    assert report["errors"] or any(m["severity"] >= 3 for m in report["messages"])


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"replicaCont": 2}, "replicaCont"),
        ({"metrics": {"serviceMonitor": {"enabeld": True}}}, "enabeld"),
        ({"operator": {"logformat": "json"}}, "logformat"),
        ({"crds": {"enabled": True, "kept": True}}, "kept"),
    ],
)
def test_values_schema_rejects_a_misspelt_key(values: dict[str, Any], where: str) -> None:
    with pytest.raises(helm_python.HelmValuesError, match=f"additional properties '{where}' not allowed"):
        render(values)


@pytest.mark.parametrize(
    "values",
    [
        {"replicaCount": 0},
        {"operator": {"logFormat": "yaml"}},
        {"operator": {"metricsPort": 70000}},
        {"image": {"pullPolicy": "Sometimes"}},
        {"runnerImage": {"pullSecrets": [{"name": "Not_A_Secret"}]}},
        {"imagePullSecrets": [{"name": "regcred", "namespace": "other"}]},
        {"watchNamespace": "Not_A_Namespace"},
        {"operator": {"streamBaseURL": "agents.example.com"}},
    ],
)
def test_values_schema_rejects_out_of_range_values(values: dict[str, Any]) -> None:
    with pytest.raises(helm_python.HelmValuesError):
        render(values)


def test_every_value_is_in_the_schema_documented_in_values_yaml_and_in_the_readme() -> None:
    """Walk values.yaml: each leaf key has a comment above it, a schema entry and a README table row."""
    values_text = (CHART_DIR / "values.yaml").read_text()
    schema = yaml.safe_load((CHART_DIR / "values.schema.json").read_text())
    readme = (CHART_DIR / "README.md").read_text()

    def walk(node: dict[str, Any], schema_node: dict[str, Any], prefix: str) -> list[str]:
        assert schema_node.get("additionalProperties") is False, f"{prefix or 'top level'} must be strict"
        documented = []
        for key, value in node.items():
            path = f"{prefix}{key}"
            assert key in schema_node["properties"], f"{path} is missing from values.schema.json"
            sub = schema_node["properties"][key]
            is_open_map = sub.get("type") == "object" and "properties" not in sub
            if isinstance(value, dict) and value and not is_open_map and key != "resources":
                documented += walk(value, sub, f"{path}.")
            else:
                documented.append(path)
        return documented

    leaves = walk(yaml.safe_load(values_text), schema, "")
    comments = comments_above_keys(values_text)
    for path in leaves:
        assert comments.get(path), f"{path} has no comment above it in values.yaml"
        assert f"`{path}`" in readme, f"{path} is missing from the README's values table"


def comments_above_keys(text: str) -> dict[str, str]:
    """Dotted key path -> the comment lines right above the key in a YAML file indented by two spaces."""
    found: dict[str, str] = {}
    stack: list[str] = []
    comment: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            comment.append(stripped.lstrip("#- ").strip())
            continue
        key = re.match(r"^( *)([A-Za-z][\w-]*):", line)
        if key:
            stack = [*stack[: len(key.group(1)) // 2], key.group(2)]
            found[".".join(stack)] = " ".join(comment)
        comment = []
    return found


REPOSITORY_CRDS = sorted((REPO_ROOT / "crds").glob("*.yaml"))


def test_the_chart_crds_are_the_repository_crds() -> None:
    """One source: files/crds/ holds byte-for-byte copies of crds/ (`make chart-sync` refreshes them)."""
    copies = sorted((CHART_DIR / "files" / "crds").glob("*.yaml"))
    assert [p.name for p in copies] == [p.name for p in REPOSITORY_CRDS], "run `make chart-sync`"
    for source, copy in zip(REPOSITORY_CRDS, copies, strict=True):
        assert copy.read_bytes() == source.read_bytes(), f"{copy.name} differs from crds/: run `make chart-sync`"


@pytest.mark.parametrize("source", REPOSITORY_CRDS, ids=lambda p: p.stem)
def test_crd_is_rendered_with_its_schema_intact_and_kept_on_uninstall(source: Path) -> None:
    expected = yaml.safe_load(source.read_text())
    crd = find(render_objects(), "CustomResourceDefinition", expected["metadata"]["name"])
    assert crd["spec"] == expected["spec"]
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert crd["metadata"]["labels"]["app.kubernetes.io/instance"] == "agentrun-operator"


def test_crds_are_deleted_on_uninstall_when_keep_is_off() -> None:
    objects = render_objects({"crds": {"enabled": True, "keep": False}})
    crds = [o for o in objects if o["kind"] == "CustomResourceDefinition"]
    assert len(crds) == len(REPOSITORY_CRDS)
    for crd in crds:
        assert "helm.sh/resource-policy" not in crd["metadata"].get("annotations", {})


def test_crds_off_renders_no_agentrun_crd() -> None:
    objects = render_objects(SCENARIOS["crds-off"])
    assert "CustomResourceDefinition" not in kinds(objects)
    # No leader election there: no Lease Role, and the permit Service selects the one operator pod.
    assert not [o for o in objects if o["kind"] == "Role" and o["metadata"]["name"].endswith("-leader-election")]
    permits = find(objects, "Service", "agentrun-operator-permits")
    assert "agentrun.dev/leader" not in permits["spec"]["selector"]


def test_operator_deployment_is_one_recreated_leader_electing_replica_with_a_kopf_liveness_probe() -> None:
    objects = render_objects()
    deployment = find(objects, "Deployment")
    container = operator_container(objects)
    env = env_of(container)
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {
        "metrics": int(env["AGENTRUN_METRICS_PORT"]),
        "health": int(env["AGENTRUN_HEALTH_PORT"]),
        "permits": int(env["AGENTRUN_PERMIT_PORT"]),
    }
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    # Runners reach the permit server through the permits Service, on the port the operator listens on.
    permits = next(
        o for o in objects if o["kind"] == "Service" and any(p["name"] == "permits" for p in o["spec"]["ports"])
    )
    permit_port = next(p["port"] for p in permits["spec"]["ports"] if p["name"] == "permits")
    namespace = permits["metadata"].get("namespace") or deployment["metadata"].get("namespace")
    assert env["AGENTRUN_PERMIT_SERVER_URL"] == f"http://{permits['metadata']['name']}.{namespace}.svc:{permit_port}"
    assert env["AGENTRUN_LEADER_ELECTION_LEASE"] == "agentrun-operator"
    assert env["AGENTRUN_LEADER_ELECTION_NAMESPACE"] == namespace
    assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in container["env"]
    assert {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}} in container["env"]
    # The servers bind the pod's IP (two replicas on one network do not collide; the Services point there).
    assert {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}} in container["env"]


def test_permit_service_routes_runners_to_the_leader_pod_only() -> None:
    objects = render_objects()
    deployment = find(objects, "Deployment")
    permits = find(objects, "Service", "agentrun-operator-permits")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = permits["spec"]["selector"]
    # The label the leader puts on its own pod (agentrun_operator.leadership.LEADER_LABEL), never in the template:
    # a new pod is not the leader until it holds the Lease.
    assert selector.pop(LEADER_LABEL) == "true"
    assert LEADER_LABEL not in pod_labels
    assert selector.items() <= pod_labels.items()
    metrics = find(objects, "Service", "agentrun-operator-metrics")
    assert LEADER_LABEL not in metrics["spec"]["selector"]  # every replica is scraped


def test_leader_election_role_grants_the_lease_and_the_pod_label_in_the_release_namespace() -> None:
    objects = render_objects()
    role = find(objects, "Role", "agentrun-operator-leader-election")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert role["rules"] == [rule.as_policy_rule() for rule in permissions.own_namespace_rules()]
    binding = find(objects, "RoleBinding", "agentrun-operator-leader-election")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]


def test_operator_env_sets_exactly_the_operator_settings() -> None:
    env = env_of(operator_container(render_objects()))
    assert {name for name in env if name.startswith("AGENTRUN_")} == OPERATOR_SETTINGS_ENV
    assert env["AGENTRUN_WATCH_NAMESPACE"] == ""
    assert env["AGENTRUN_LOG_FORMAT"] == "json"
    assert env["AGENTRUN_STREAM_CONTROLLER"] == "ingress-nginx"
    assert env["AGENTRUN_GATEWAY_SERVICE_ACCOUNT"] == ""  # no gateway: no run grants one its stream token


def test_the_operator_grants_stream_tokens_to_the_gateways_own_service_account() -> None:
    objects = render_objects({"gateway": {"enabled": True, "route": {"host": "a.example.com"}}})
    gateway = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("stream-gateway"))
    operator = next(o for o in objects if o["kind"] == "Deployment" and o is not gateway)
    account = gateway["spec"]["template"]["spec"]["serviceAccountName"]
    expected = f"{gateway['metadata']['namespace']}/{account}"
    assert env_of(operator_container([operator]))["AGENTRUN_GATEWAY_SERVICE_ACCOUNT"] == expected


def test_operator_and_gateway_take_the_stream_controller_from_the_one_value() -> None:
    objects = render_objects(
        {"gateway": {"enabled": True, "controller": "azure-agic", "route": {"host": "a.example.com"}}}
    )
    gateway = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("stream-gateway"))
    (gateway_container,) = gateway["spec"]["template"]["spec"]["containers"]
    operator = next(o for o in objects if o["kind"] == "Deployment" and o is not gateway)
    assert env_of(operator_container([operator]))["AGENTRUN_STREAM_CONTROLLER"] == "azure-agic"
    assert env_of(gateway_container)["AGENTRUN_GATEWAY_CONTROLLER"] == "azure-agic"


def test_image_tags_default_to_the_app_version() -> None:
    app_version = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())["appVersion"]
    container = operator_container(render_objects())
    assert container["image"] == f"ghcr.io/agentrun/agentrun-operator/operator:{app_version}"
    assert env_of(container)["AGENTRUN_RUNNER_IMAGE"] == f"ghcr.io/agentrun/agentrun-operator/runner:{app_version}"
    pinned = operator_container(render_objects(SCENARIOS["crds-off"]))
    assert pinned["image"] == "platform/agentrun-operator:0.1.0-rc1"


def test_operator_pod_meets_the_restricted_pod_security_standard() -> None:
    deployment = find(render_objects(), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = operator_container([deployment])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert set(container["resources"]) == {"requests", "limits"}
    assert all(volume.keys() == {"name", "emptyDir"} for volume in pod["volumes"])


def test_namespaced_scenario_elects_a_leader_and_reconciles_in_the_watched_namespace_only() -> None:
    objects = render_objects(SCENARIOS["namespaced"])
    env = env_of(operator_container(objects))
    assert env["AGENTRUN_WATCH_NAMESPACE"] == "agents"
    assert env["AGENTRUN_STREAM_BASE_URL"] == "https://agents.example.com"
    assert env["AGENTRUN_LEADER_ELECTION_LEASE"] == "agentrun-operator"
    assert find(objects, "Role", "agentrun-operator")["metadata"]["namespace"] == "agents"
    assert find(objects, "Role", "agentrun-operator-leader-election")["metadata"]["namespace"] == NAMESPACE
    assert find(objects, "Deployment")["spec"]["replicas"] == 2


def test_more_than_one_replica_without_leader_election_is_refused() -> None:
    with pytest.raises(helm_python.HelmRenderError, match=r"needs leaderElection\.enabled"):
        render({"replicaCount": 2, "leaderElection": {"enabled": False}})


def test_monitoring_scenario_scrapes_the_metrics_port() -> None:
    objects = render_objects(SCENARIOS["monitoring"])
    monitor = find(objects, "ServiceMonitor")
    service = find(objects, "Service", "agentrun-operator-metrics")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s"}]
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    # The ServiceMonitor selects the metrics Service, and the Service selects the operator pods.
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    pod_labels = find(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    # Plus the leader label, which only the leader's pod carries (test_permit_service_routes_runners_to_the_leader_pod_only).
    assert {**pod_labels, LEADER_LABEL: "true"}.items() >= service["spec"]["selector"].items()
    dashboard = find(objects, "ConfigMap")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["namespace"] == "monitoring"


def test_podmonitor_scenario_selects_the_operator_pods() -> None:
    objects = render_objects(SCENARIOS["podmonitor"])
    monitor = find(objects, "PodMonitor")
    pod_labels = find(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    assert [o["metadata"]["name"] for o in objects if o["kind"] == "Service"] == ["agentrun-operator-permits"]


def test_service_and_pod_monitors_together_are_refused() -> None:
    with pytest.raises(helm_python.HelmRenderError, match="one of"):
        render({"metrics": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}}})


def test_every_object_carries_the_standard_labels() -> None:
    for obj in render_objects(SCENARIOS["monitoring"]):
        labels = obj["metadata"]["labels"]
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/managed-by"):
            assert key in labels, f"{obj['kind']} {obj['metadata']['name']} lacks {key}"


def test_notes_tell_how_to_apply_and_watch_a_first_run_that_the_api_accepts() -> None:
    text = notes()
    assert "kubectl -n default get agentruns -w" in text
    assert "wait --for=condition=Complete agentrun/minimal" in text
    assert "wait --for=condition=Failed agentrun/minimal" in text
    manifest = re.search(r"<<'YAML'\n(.*?)\nYAML\n", text, re.DOTALL)
    assert manifest is not None
    run = yaml.safe_load(manifest.group(1))
    assert run["apiVersion"] == constants.API_VERSION
    assert run["kind"] == constants.KIND
    # The models accept it; the real API server's verdict is
    # tests/integration/test_crd_admission.py::test_the_first_run_in_the_charts_notes_is_accepted.
    assert set(run) == {"apiVersion", "kind", "metadata", "spec"}
    AgentRunSpec.model_validate(run["spec"])


def test_notes_follow_the_watched_namespace() -> None:
    text = notes(SCENARIOS["namespaced"])
    assert "kubectl -n agents get agentruns -w" in text
    assert "AgentRuns in namespace agents only" in text


def test_permit_server_service_reaches_the_operator_pods() -> None:
    objects = render_objects()
    service = find(objects, "Service", "agentrun-operator-permits")
    assert service["spec"]["ports"] == [{"name": "permits", "port": 8090, "targetPort": "permits", "protocol": "TCP"}]
    pod_labels = find(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    # Plus the leader label, which only the leader's pod carries (test_permit_service_routes_runners_to_the_leader_pod_only).
    assert {**pod_labels, LEADER_LABEL: "true"}.items() >= service["spec"]["selector"].items()
