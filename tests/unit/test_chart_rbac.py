"""The operator's RBAC in the chart: exactly the rules of agentrun_operator.permissions, no wildcard, no more."""

from typing import Any

import pytest
import yaml

from agentrun_operator import permissions
from agentrun_operator.permissions import Mode
from tests.harness.chart import CHART_DIR, NAMESPACE, ci_scenarios, find, kinds, render_objects

pytestmark = pytest.mark.unit

SCENARIOS = ci_scenarios()
RBAC_KINDS = {"ClusterRole", "Role", "ClusterRoleBinding", "RoleBinding"}
# Verbs that let a holder get around RBAC itself; the operator needs none of them.
ESCALATING_VERBS = {"escalate", "bind", "impersonate", "*"}


def policy_rules(rules: list[permissions.Rule]) -> list[dict[str, list[str]]]:
    return [rule.as_policy_rule() for rule in rules]


def rbac_objects(values: dict[str, Any]) -> list[dict[str, Any]]:
    return [o for o in render_objects(values) if o["kind"] in RBAC_KINDS]


def test_chart_rules_file_is_generated_from_the_permissions_module() -> None:
    on_disk = (CHART_DIR / "files" / "rbac-rules.yaml").read_text()
    assert on_disk == permissions.render_chart_rules(), "run `make chart-sync`"


def test_every_rule_says_why_and_grants_no_wildcard_or_escalation() -> None:
    for rule in permissions.OPERATOR_RULES + permissions.GATEWAY_RULES:
        assert len(rule.why) > 20, rule
        assert "*" not in rule.api_group, rule
        assert all("*" not in r for r in rule.resources), rule
        assert not set(rule.verbs) & ESCALATING_VERBS, rule


def test_secrets_can_be_neither_listed_nor_watched() -> None:
    (secrets,) = [rule for rule in permissions.OPERATOR_RULES if "secrets" in rule.resources]
    assert set(secrets.verbs) == {"create", "get"}


def test_the_internet_facing_gateway_reads_secrets_only_in_its_own_namespace() -> None:
    """The operator grants it each streaming run's stream-token Secret by name (Role <run>-stream-reader); the
    runs API's API key Secrets (hashes) it may get, not list, in the release namespace alone."""
    (api_keys,) = [rule for rule in permissions.GATEWAY_RULES if "secrets" in rule.resources]
    assert api_keys.own_namespace
    assert api_keys.verbs == ("get",)
    gateway = {"enabled": True, "route": {"host": "agents.example.com"}}
    for values in ({"gateway": gateway}, {"watchNamespace": "agents", "gateway": gateway}):
        objects = rbac_objects(values)
        roles = [
            obj
            for obj in objects
            if obj["metadata"]["name"] == "agentrun-operator-stream-gateway" and obj["kind"] in ("Role", "ClusterRole")
        ]
        assert roles
        for role in roles:
            assert not [rule for rule in role["rules"] if "secrets" in rule["resources"]], role
        keys_role = find(objects, "Role", "agentrun-operator-stream-gateway-api-keys")
        assert keys_role["metadata"]["namespace"] == "agentrun-system"  # the release namespace
        assert keys_role["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]
        binding = find(objects, "RoleBinding", "agentrun-operator-stream-gateway-api-keys")
        assert binding["subjects"][0]["name"] == "agentrun-operator-stream-gateway"


def test_operator_holds_every_configmap_verb_a_runner_role_may_grant() -> None:
    """RBAC escalation rule: the operator can only create a Role granting verbs it holds itself."""
    (configmaps,) = [rule for rule in permissions.OPERATOR_RULES if "configmaps" in rule.resources]
    assert {"create", "get", "update", "patch"} <= set(configmaps.verbs)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_rendered_rbac_has_no_wildcard(scenario: str) -> None:
    for obj in rbac_objects(SCENARIOS[scenario]):
        for rule in obj.get("rules", []):
            for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
                assert all("*" not in item for item in rule.get(field, [])), (obj["kind"], rule)
            assert not set(rule["verbs"]) & ESCALATING_VERBS


def test_clusterwide_install_grants_exactly_the_clusterwide_rules() -> None:
    objects = rbac_objects(SCENARIOS["default"])
    assert sorted(o["kind"] for o in objects) == ["ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"]
    assert find(objects, "Role")["metadata"]["name"].endswith("-leader-election")
    assert find(objects, "ClusterRole")["rules"] == policy_rules(permissions.rules_for(Mode.CLUSTERWIDE))


def test_namespaced_install_grants_namespaced_rules_in_a_role_and_only_cluster_reads_cluster_wide() -> None:
    objects = rbac_objects(SCENARIOS["namespaced"])
    expected = permissions.rules_for(Mode.NAMESPACED)
    role = find(objects, "Role", "agentrun-operator")
    assert role["metadata"]["namespace"] == "agents"
    assert role["rules"] == policy_rules([r for r in expected if not r.cluster_scoped])
    cluster_role = find(objects, "ClusterRole")
    assert cluster_role["rules"] == policy_rules([r for r in expected if r.cluster_scoped])
    granted = {res for rule in cluster_role["rules"] for res in rule["resources"]}
    # Watching one namespace, kopf does not observe CRDs; cluster pools are served in either mode.
    assert granted == {
        "storageclasses",
        "clusterthrottlepools",
        "clusterthrottlepools/status",
        "subjectaccessreviews",
    }


@pytest.mark.parametrize("scenario", ["default", "namespaced"])
def test_bindings_bind_the_operator_service_account_to_its_roles(scenario: str) -> None:
    objects = render_objects(SCENARIOS[scenario])
    account = find(objects, "ServiceAccount")
    assert find(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]
    for binding in (o for o in objects if o["kind"] in {"ClusterRoleBinding", "RoleBinding"}):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": NAMESPACE}
        ]
        role_kind = binding["roleRef"]["kind"]
        role = find(objects, role_kind, binding["roleRef"]["name"])
        assert role["metadata"].get("namespace") == binding["metadata"].get("namespace")


def test_leader_election_rules_live_in_the_operators_own_namespace_only() -> None:
    own = permissions.own_namespace_rules()
    assert {(r.api_group, resources) for r in own for resources in r.resources} == {
        ("coordination.k8s.io", "leases"),
        ("", "pods"),
    }
    assert not any(r.cluster_scoped for r in own)
    for mode in (Mode.CLUSTERWIDE, Mode.NAMESPACED):
        assert not [r for r in permissions.rules_for(mode) if r.own_namespace]
    (pods,) = [r for r in own if "pods" in r.resources]
    assert pods.verbs == ("patch",)  # its own pod's leader label, nothing else


def test_rbac_can_be_left_to_the_cluster_admin() -> None:
    objects = render_objects({"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "agentrun"}})
    assert not RBAC_KINDS & set(kinds(objects))
    assert "ServiceAccount" not in kinds(objects)
    assert find(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "agentrun"


def test_rules_file_is_plain_rbac_yaml() -> None:
    """What the chart reads with fromYaml: the same structure permissions.chart_rules() returns."""
    loaded = yaml.safe_load((CHART_DIR / "files" / "rbac-rules.yaml").read_text())
    assert loaded == permissions.chart_rules()


def test_gateway_gets_its_own_least_privilege_rbac() -> None:
    values = {"gateway": {"enabled": True, "route": {"host": "agents.example.com"}}}
    objects = rbac_objects(values)
    gateway_role = find(objects, "ClusterRole", "agentrun-operator-stream-gateway")
    assert gateway_role["rules"] == policy_rules(permissions.rules_for(Mode.CLUSTERWIDE, permissions.GATEWAY_RULES))
    binding = find(objects, "ClusterRoleBinding", "agentrun-operator-stream-gateway")
    assert binding["subjects"][0]["name"] == "agentrun-operator-stream-gateway"
    # The operator's own role is unchanged by the gateway.
    assert find(objects, "ClusterRole", "agentrun-operator")["rules"] == policy_rules(
        permissions.rules_for(Mode.CLUSTERWIDE)
    )


def test_namespaced_gateway_reads_runs_and_checkpoints_only_in_the_watched_namespace() -> None:
    values = {"watchNamespace": "agents", "gateway": {"enabled": True, "route": {"host": "agents.example.com"}}}
    objects = rbac_objects(values)
    role = find(objects, "Role", "agentrun-operator-stream-gateway")
    assert role["metadata"]["namespace"] == "agents"
    assert {r for rule in role["rules"] for r in rule["resources"]} == {
        "agentruns",
        "agentrunapprovals",
        "agentruntemplates",
        "configmaps",
    }
    # The runs API records decisions in its callers' names by the policy's own verb, never by impersonating them.
    [approvals] = [rule for rule in role["rules"] if rule["resources"] == ["agentrunapprovals"]]
    assert approvals["verbs"] == ["create", "get", "record"]
    cluster_role = find(objects, "ClusterRole", "agentrun-operator-stream-gateway")
    assert {r for rule in cluster_role["rules"] for r in rule["resources"]} == {"tokenreviews", "subjectaccessreviews"}
