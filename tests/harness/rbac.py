"""An RBAC evaluator over stored objects: may this ServiceAccount do this verb on this object?

It answers the way the Kubernetes RBAC authorizer does for resource requests: a request is allowed when
any rule of any role bound to the subject matches it; there are no deny rules. Bindings considered:
RoleBindings in the request's namespace (to a Role of that namespace or to a ClusterRole, whose rules
then apply in that namespace only) and ClusterRoleBindings (to a ClusterRole, everywhere). A binding
matches a ServiceAccount named as ``ServiceAccount`` (its namespace defaulting to the binding's), as
the user ``system:serviceaccount:<ns>:<name>``, or through the groups every ServiceAccount is in
(``system:serviceaccounts``, ``system:serviceaccounts:<ns>``, ``system:authenticated``).

A rule matches when its verbs, apiGroups and resources contain the request's (or ``*``; a resource
with a subresource is ``pods/log``, matched also by ``*/log``), and its resourceNames, when listed,
contain the request's name. A request without a name (create, list, watch, deletecollection)
never matches a rule that lists resourceNames.

Not evaluated: nonResourceURLs, ClusterRole aggregation (the aggregated rules must already be in
the ClusterRole's ``rules``, as the controller writes them), impersonation, and other authorizers
(Node, webhook).
"""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

JsonObject = Mapping[str, Any]


@dataclass(frozen=True)
class ServiceAccount:
    namespace: str
    name: str

    @property
    def username(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.name}"

    @property
    def groups(self) -> frozenset[str]:
        return frozenset({"system:serviceaccounts", f"system:serviceaccounts:{self.namespace}", "system:authenticated"})


@dataclass(frozen=True)
class Request:
    verb: str
    resource: str  # plural, e.g. "configmaps"; with a subresource "pods/log"
    namespace: str | None  # None for cluster-scoped resources
    name: str | None = None
    api_group: str = ""  # "" is the core group


class RbacAuthorizer:
    """``RbacAuthorizer(roles, role_bindings, cluster_roles, cluster_role_bindings).can(account, request)``."""

    def __init__(
        self,
        roles: Iterable[JsonObject],
        role_bindings: Iterable[JsonObject],
        cluster_roles: Iterable[JsonObject],
        cluster_role_bindings: Iterable[JsonObject],
    ) -> None:
        self._roles = {(r["metadata"]["namespace"], r["metadata"]["name"]): r for r in roles}
        self._cluster_roles = {r["metadata"]["name"]: r for r in cluster_roles}
        self._role_bindings = list(role_bindings)
        self._cluster_role_bindings = list(cluster_role_bindings)

    def can(self, account: ServiceAccount, request: Request) -> bool:
        return any(_rule_allows(rule, request) for rule in self.rules_for(account, request.namespace))

    def rules_for(self, account: ServiceAccount, namespace: str | None) -> list[JsonObject]:
        """Every rule that applies to the account for requests in ``namespace`` (None: cluster scope)."""
        rules: list[JsonObject] = []
        for binding in self._cluster_role_bindings:
            if _binds(binding, account, binding_namespace=None):
                rules += self._referenced_rules(binding, namespace=None)
        if namespace is not None:
            for binding in self._role_bindings:
                if binding["metadata"]["namespace"] == namespace and _binds(binding, account, namespace):
                    rules += self._referenced_rules(binding, namespace)
        return rules

    def _referenced_rules(self, binding: JsonObject, namespace: str | None) -> list[JsonObject]:
        ref = binding.get("roleRef") or {}
        if ref.get("kind") == "ClusterRole":
            role = self._cluster_roles.get(ref.get("name", ""))
        elif ref.get("kind") == "Role" and namespace is not None:
            role = self._roles.get((namespace, ref.get("name", "")))
        else:
            role = None  # a ClusterRoleBinding cannot reference a Role
        return list((role or {}).get("rules") or [])


def _binds(binding: JsonObject, account: ServiceAccount, binding_namespace: str | None) -> bool:
    return any(_subject_is(subject, account, binding_namespace) for subject in binding.get("subjects") or [])


def _subject_is(subject: JsonObject, account: ServiceAccount, binding_namespace: str | None) -> bool:
    kind, name = subject.get("kind"), subject.get("name")
    if kind == "ServiceAccount":
        return name == account.name and (subject.get("namespace") or binding_namespace) == account.namespace
    if kind == "User":
        return name == account.username
    return kind == "Group" and name in account.groups


def _contains(values: Sequence[str], wanted: str) -> bool:
    return "*" in values or wanted in values


def _resource_matches(resources: Sequence[str], wanted: str) -> bool:
    if _contains(resources, wanted):
        return True
    if "/" in wanted:
        return f"*/{wanted.split('/', 1)[1]}" in resources
    return False


def _rule_allows(rule: JsonObject, request: Request) -> bool:
    if not _contains(rule.get("verbs") or [], request.verb):
        return False
    if not _contains(rule.get("apiGroups") or [], request.api_group):
        return False
    if not _resource_matches(rule.get("resources") or [], request.resource):
        return False
    names = rule.get("resourceNames") or []
    return not names or (request.name is not None and request.name in names)
