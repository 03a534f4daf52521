"""The test RBAC evaluator answers as the Kubernetes RBAC authorizer does."""

import pytest

from tests.harness.rbac import RbacAuthorizer, Request, ServiceAccount

pytestmark = pytest.mark.unit

RUNNER = ServiceAccount("team-a", "run-runner")


def binding(kind: str, name: str, namespace: str | None, role_kind: str, role: str, subjects: list[dict[str, str]]):
    metadata = {"name": name} if namespace is None else {"name": name, "namespace": namespace}
    return {"kind": kind, "metadata": metadata, "roleRef": {"kind": role_kind, "name": role}, "subjects": subjects}


def role(name: str, namespace: str | None, *rules: dict[str, list[str]]):
    metadata = {"name": name} if namespace is None else {"name": name, "namespace": namespace}
    return {"metadata": metadata, "rules": list(rules)}


SA = {"kind": "ServiceAccount", "name": "run-runner", "namespace": "team-a"}


def authorizer(roles=(), role_bindings=(), cluster_roles=(), cluster_role_bindings=()) -> RbacAuthorizer:
    return RbacAuthorizer(roles, role_bindings, cluster_roles, cluster_role_bindings)


def test_resource_names_limit_named_requests_and_never_match_unnamed_ones():
    rbac = authorizer(
        [
            role(
                "r",
                "team-a",
                {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["mine"], "verbs": ["*"]},
            )
        ],
        [binding("RoleBinding", "b", "team-a", "Role", "r", [SA])],
    )
    assert rbac.can(RUNNER, Request("get", "configmaps", "team-a", "mine"))
    assert rbac.can(RUNNER, Request("delete", "configmaps", "team-a", "mine"))
    assert not rbac.can(RUNNER, Request("get", "configmaps", "team-a", "theirs"))
    assert not rbac.can(RUNNER, Request("create", "configmaps", "team-a"))
    assert not rbac.can(RUNNER, Request("list", "configmaps", "team-a"))
    assert not rbac.can(RUNNER, Request("get", "configmaps", "team-b", "mine"))  # a Role is namespaced
    assert not rbac.can(RUNNER, Request("get", "secrets", "team-a", "mine"))
    assert not rbac.can(ServiceAccount("team-a", "other"), Request("get", "configmaps", "team-a", "mine"))


def test_api_groups_and_wildcards_match_as_in_kubernetes():
    rules = (
        {"apiGroups": ["batch"], "resources": ["*"], "verbs": ["get"]},
        {"apiGroups": ["*"], "resources": ["*/status"], "verbs": ["patch"]},
    )
    rbac = authorizer([role("r", "team-a", *rules)], [binding("RoleBinding", "b", "team-a", "Role", "r", [SA])])
    assert rbac.can(RUNNER, Request("get", "jobs", "team-a", "j", "batch"))
    assert not rbac.can(RUNNER, Request("get", "pods", "team-a", "p"))  # core group is "", not batch
    assert rbac.can(RUNNER, Request("patch", "agentruns/status", "team-a", "x", "agentrun.dev"))
    assert not rbac.can(RUNNER, Request("patch", "agentruns", "team-a", "x", "agentrun.dev"))


def test_cluster_roles_apply_in_a_role_bindings_namespace_or_everywhere_through_a_cluster_role_binding():
    reader = role("reader", None, {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]})
    in_namespace = authorizer(
        cluster_roles=[reader], role_bindings=[binding("RoleBinding", "b", "team-a", "ClusterRole", "reader", [SA])]
    )
    assert in_namespace.can(RUNNER, Request("list", "pods", "team-a"))
    assert not in_namespace.can(RUNNER, Request("list", "pods", "team-b"))
    group = {"kind": "Group", "name": "system:serviceaccounts:team-a"}
    everywhere = authorizer(
        cluster_roles=[reader],
        cluster_role_bindings=[binding("ClusterRoleBinding", "c", None, "ClusterRole", "reader", [group])],
    )
    assert everywhere.can(RUNNER, Request("list", "pods", "team-b"))
    assert not everywhere.can(ServiceAccount("team-b", "run-runner"), Request("list", "pods", "team-b"))
    user = {"kind": "User", "name": "system:serviceaccount:team-a:run-runner"}
    by_user = authorizer(
        cluster_roles=[reader],
        cluster_role_bindings=[binding("ClusterRoleBinding", "c", None, "ClusterRole", "reader", [user])],
    )
    assert by_user.can(RUNNER, Request("list", "pods", None))
