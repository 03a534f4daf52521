"""The identities the product's processes run with on the test control plane: ServiceAccounts with exactly the
RBAC the chart gives them (from agentrun_operator.permissions), and kubeconfigs holding their real tokens.

A missing permission therefore fails a test as it would fail an installation, instead of passing under an
admin's credentials.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from agentrun_operator import children
from agentrun_operator.permissions import GATEWAY_RULES, OPERATOR_RULES, Mode, Rule, own_namespace_rules, rules_for
from tests.harness.controlplane import ControlPlane, write_kubeconfig

SYSTEM_NAMESPACE = "agentrun-system"
TOKEN_SECONDS = 6 * 3600
GATEWAY_ACCOUNT = "agentrun-stream-gateway"
# The operator's AGENTRUN_GATEWAY_SERVICE_ACCOUNT in tests: the gateway identity below.
GATEWAY_SERVICE_ACCOUNT = f"{SYSTEM_NAMESPACE}/{GATEWAY_ACCOUNT}"


def _apply(admin: httpx.Client, path: str, body: dict[str, Any]) -> None:
    """Server-side apply, so a second test in the session finds the same object and changes nothing."""
    name = body["metadata"]["name"]
    answer = admin.patch(
        f"{path}/{name}",
        params={"fieldManager": "agentrun-tests", "force": "true"},
        headers={"Content-Type": "application/apply-patch+yaml"},
        json=body,
    )
    answer.raise_for_status()


def _rbac_object(kind: str, name: str, namespace: str | None) -> dict[str, Any]:
    metadata = {"name": name, "namespace": namespace} if namespace else {"name": name}
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": metadata}


def _role(kind: str, name: str, rules: list[Rule], namespace: str | None = None) -> dict[str, Any]:
    return {**_rbac_object(kind, name, namespace), "rules": [rule.as_policy_rule() for rule in rules]}


def _binding(kind: str, name: str, role_kind: str, role: str, account: str, namespace: str | None) -> dict[str, Any]:
    return {
        **_rbac_object(kind, name, namespace),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": SYSTEM_NAMESPACE}],
    }


class ComponentIdentity:
    """One product component's ServiceAccount in agentrun-system, granted its chart rules per watched namespace."""

    def __init__(self, control_plane: ControlPlane, account: str, rules: tuple[Rule, ...]) -> None:
        self._control_plane = control_plane
        self.account = account
        namespaced = rules_for(Mode.NAMESPACED, rules)
        self._namespace_rules = [rule for rule in namespaced if not rule.cluster_scoped]
        admin = control_plane.admin
        _apply(
            admin,
            "/api/v1/namespaces",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SYSTEM_NAMESPACE}},
        )
        _apply(
            admin,
            f"/api/v1/namespaces/{SYSTEM_NAMESPACE}/serviceaccounts",
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": account, "namespace": SYSTEM_NAMESPACE},
            },
        )
        # The watched namespaces' rules as one ClusterRole, granted in each namespace by a RoleBinding: the
        # rights of the chart's namespaced Role, without writing a Role into every test's namespace.
        _apply(
            admin,
            "/apis/rbac.authorization.k8s.io/v1/clusterroles",
            _role("ClusterRole", f"{account}-watched", self._namespace_rules),
        )
        cluster_rules = [rule for rule in namespaced if rule.cluster_scoped]
        if cluster_rules:
            _apply(
                admin,
                "/apis/rbac.authorization.k8s.io/v1/clusterroles",
                _role("ClusterRole", f"{account}-cluster", cluster_rules),
            )
            _apply(
                admin,
                "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
                _binding(
                    "ClusterRoleBinding", f"{account}-cluster", "ClusterRole", f"{account}-cluster", account, None
                ),
            )
        own = own_namespace_rules(rules)
        if own:
            roles = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{SYSTEM_NAMESPACE}/roles"
            _apply(admin, roles, _role("Role", f"{account}-own", own, SYSTEM_NAMESPACE))
            _apply(
                admin,
                f"/apis/rbac.authorization.k8s.io/v1/namespaces/{SYSTEM_NAMESPACE}/rolebindings",
                _binding("RoleBinding", f"{account}-own", "Role", f"{account}-own", account, SYSTEM_NAMESPACE),
            )

    def grant(self, namespace: str) -> None:
        """Give the component its rights in a namespace it watches."""
        _apply(
            self._control_plane.admin,
            f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/rolebindings",
            _binding("RoleBinding", self.account, "ClusterRole", f"{self.account}-watched", self.account, namespace),
        )

    def token(self, seconds: int = TOKEN_SECONDS) -> str:
        """A real token of the ServiceAccount (TokenRequest), as a projected volume would hold."""
        answer = self._control_plane.admin.post(
            f"/api/v1/namespaces/{SYSTEM_NAMESPACE}/serviceaccounts/{self.account}/token",
            json={
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"expirationSeconds": seconds},
            },
        )
        answer.raise_for_status()
        return str(answer.json()["status"]["token"])

    def kubeconfig(self, path: Path, namespace: str | None = None, server: str | None = None) -> Path:
        """A kubeconfig with a fresh token, for the API server or (``server``) a proxy in front of it."""
        return write_kubeconfig(
            path,
            server or self._control_plane.url,
            self._control_plane.ca_file,
            user=f"system:serviceaccount:{SYSTEM_NAMESPACE}:{self.account}",
            token=self.token(),
            namespace=namespace,
        )


def operator_identity(control_plane: ControlPlane) -> ComponentIdentity:
    return ComponentIdentity(control_plane, "agentrun-operator", OPERATOR_RULES)


def gateway_identity(control_plane: ControlPlane) -> ComponentIdentity:
    return ComponentIdentity(control_plane, GATEWAY_ACCOUNT, GATEWAY_RULES)


def grant_stream_token_to_gateway(admin: httpx.Client, namespace: str, run: str) -> None:
    """What the operator grants the gateway for a streaming run (its Role and RoleBinding <run>-stream-reader):
    `get` on that run's stream-token Secret alone. The gateway's own rules hold nothing on Secrets."""
    rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}"
    role = children.build_stream_reader_role(run)
    binding = children.build_stream_reader_binding(run, GATEWAY_SERVICE_ACCOUNT)
    _apply(admin, f"{rbac}/roles", {**role, "metadata": {**role["metadata"], "namespace": namespace}})
    _apply(admin, f"{rbac}/rolebindings", {**binding, "metadata": {**binding["metadata"], "namespace": namespace}})
