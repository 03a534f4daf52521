"""What the operator may do in the cluster: the one list its RBAC is made from, each rule with its reason.

The Helm chart renders its ClusterRole (or, with ``watchNamespace``, a Role plus a small ClusterRole
for cluster-scoped reads) from ``helm/agentrun-operator/files/rbac-rules.yaml``, which
``make chart-sync`` writes from this module; a test fails when the two differ, and another renders the
chart and checks that its RBAC holds exactly these rules and no wildcard.

Kubernetes refuses to let the operator create a Role (or bind one) granting anything the operator does
not hold itself (the RBAC escalation rule), so the ConfigMap verbs below include every verb the runner's
per-run Role grants on its own checkpoint and progress ConfigMaps.

Run ``python -m agentrun_operator.permissions`` to print the chart's rules file.
"""

import enum
import sys
from dataclasses import dataclass
from typing import Any

import yaml

from agentrun_api import approval


class Mode(enum.Enum):
    """Which installations need a rule."""

    ALWAYS = "always"
    CLUSTERWIDE = "clusterwide"  # the operator watches every namespace
    NAMESPACED = "namespaced"  # the operator watches one namespace (chart value watchNamespace)


@dataclass(frozen=True)
class Rule:
    """One RBAC PolicyRule and why the operator needs it."""

    api_group: str  # "" is the core group
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    # True for cluster-scoped resources, which only a ClusterRole can grant.
    cluster_scoped: bool
    why: str
    mode: Mode = Mode.ALWAYS
    # True for rules on the operator's own namespace (the release's), not the watched ones: its leader
    # election Lease and its own pod. The chart grants them in a Role there, with leader election on.
    own_namespace: bool = False

    def as_policy_rule(self) -> dict[str, list[str]]:
        return {"apiGroups": [self.api_group], "resources": list(self.resources), "verbs": list(self.verbs)}


OPERATOR_RULES: tuple[Rule, ...] = (
    Rule(
        "agentrun.dev",
        ("agentruns",),
        ("get", "list", "watch", "patch"),
        cluster_scoped=False,
        why="the operator watches AgentRuns; get reads a run afresh for a supervision started again (leadership "
        "regained, or after a crash); patch only removes the finalizer an earlier operator version (kopf "
        "daemons) left on a run, once, so upgrades leave nothing undeletable; never spec",
    ),
    Rule(
        "agentrun.dev",
        ("agentruns/status",),
        ("patch",),
        cluster_scoped=False,
        why="the operator is the only writer of status, through the status subresource",
    ),
    Rule(
        "agentrun.dev",
        ("agentrunapprovals",),
        ("list", "watch"),
        cluster_scoped=False,
        why="the operator watches the decisions people make on calls that wait for approval and copies them into "
        "the run's status; it never creates one (deciding is the approvers' right, not the operator's)",
    ),
    Rule(
        "agentrun.dev",
        ("throttlepools",),
        ("list", "watch", "patch"),
        cluster_scoped=False,
        why="kopf watches ThrottlePools to configure the permit server's pools and patches their metadata "
        "(its progress annotations)",
    ),
    Rule(
        "agentrun.dev",
        ("throttlepools/status",),
        ("patch",),
        cluster_scoped=False,
        why="the pools' live status (in flight, queued, rate) for `kubectl get throttlepools`",
    ),
    Rule(
        "agentrun.dev",
        ("mcpservers",),
        ("get", "list", "watch"),
        cluster_scoped=False,
        why="the operator lists each MCPServer's tools when it is declared or changed (watch), and reads the "
        "servers a run names when it admits the run (get)",
    ),
    Rule(
        "agentrun.dev",
        ("mcpservers/status",),
        ("patch",),
        cluster_scoped=False,
        why="the tools each MCPServer lists, for runs to name and `kubectl get mcpservers` to show",
    ),
    Rule(
        "agentrun.dev",
        ("clusterthrottlepools",),
        ("list", "watch", "patch"),
        cluster_scoped=True,
        why="kopf watches ClusterThrottlePools (pools shared by runs of many namespaces) to configure the permit "
        "server and patches their metadata (its progress annotations)",
    ),
    Rule(
        "agentrun.dev",
        ("clusterthrottlepools/status",),
        ("patch",),
        cluster_scoped=True,
        why="the cluster pools' live status for `kubectl get clusterthrottlepools`",
    ),
    Rule(
        "authorization.k8s.io",
        ("subjectaccessreviews",),
        ("create",),
        cluster_scoped=True,
        why="before granting a permit of a ClusterThrottlePool, ask whether the run's ServiceAccount may 'use' it",
    ),
    Rule(
        "batch",
        ("jobs",),
        ("create", "get", "list", "watch", "patch", "delete"),
        cluster_scoped=False,
        why="each run's Job <run>-runner: created (get adopts it after a 409), watched for its outcome, patched to "
        "suspend, deleted when a run is cancelled or past ttlSecondsAfterFinished",
    ),
    Rule(
        "",
        ("pods",),
        ("list", "watch", "delete"),
        cluster_scoped=False,
        why="runner pods are watched to count restarts; a pod past its progressDeadline is deleted so the Job "
        "replaces it",
    ),
    Rule(
        "",
        ("configmaps",),
        ("create", "get", "list", "watch", "update", "patch"),
        cluster_scoped=False,
        why="the run's config and progress ConfigMaps are created (get adopts after a 409) and progress ConfigMaps "
        "watched; update and patch because the runner's Role grants them on its own ConfigMaps, and a Role may "
        "only grant what its creator holds",
    ),
    Rule(
        "",
        ("secrets",),
        ("create", "get"),
        cluster_scoped=False,
        why="create the run's <run>-stream-token and <run>-permit-key Secrets; get reads the API-key Secret's "
        "existence, adopts those Secrets after a 409, checks a runner's permit key at the permit server, and lets "
        "the operator grant the stream gateway `get` on one stream-token Secret (a Role may only grant what its "
        "creator holds); no list or watch: the operator never enumerates Secrets",
    ),
    Rule(
        "",
        ("serviceaccounts", "services", "persistentvolumeclaims"),
        ("create", "get"),
        cluster_scoped=False,
        why="the runner's ServiceAccount, the <run>-stream Service and the PVC checkpoint store; get adopts after a "
        "409; owner references let the garbage collector delete them with the run",
    ),
    Rule(
        "networking.k8s.io",
        ("ingresses",),
        ("create", "get"),
        cluster_scoped=False,
        why="a run's own stream route behind Traefik (spec.streaming.ingress): the Ingress <run>-stream; get adopts "
        "after a 409; the garbage collector deletes it with the run",
    ),
    Rule(
        "gateway.networking.k8s.io",
        ("httproutes",),
        ("create", "get"),
        cluster_scoped=False,
        why="a run's own stream route behind Gateway API or GKE Gateway: the HTTPRoute <run>-stream",
    ),
    Rule(
        "projectcontour.io",
        ("httpproxies",),
        ("create", "get"),
        cluster_scoped=False,
        why="a run's own stream route behind Contour: the HTTPProxy <run>-stream",
    ),
    Rule(
        "networking.istio.io",
        ("virtualservices",),
        ("create", "get"),
        cluster_scoped=False,
        why="a run's own stream route behind Istio: the VirtualService <run>-stream",
    ),
    Rule(
        "networking.gke.io",
        ("gcpbackendpolicies",),
        ("create", "get"),
        cluster_scoped=False,
        why="the GCPBackendPolicy <run>-stream with the timeout of a run's own route behind GKE Gateway",
    ),
    Rule(
        "traefik.io",
        ("serverstransports",),
        ("create", "get"),
        cluster_scoped=False,
        why="the ServersTransport <run>-stream with the timeouts of a run's own route behind Traefik",
    ),
    Rule(
        "rbac.authorization.k8s.io",
        ("roles", "rolebindings"),
        ("create", "get"),
        cluster_scoped=False,
        why="the runner's least-privilege Role and RoleBinding <run>-runner, and <run>-stream-reader (the stream "
        "gateway's `get` on that run's stream-token Secret alone); get adopts after a 409",
    ),
    Rule(
        "",
        ("events",),
        ("create",),
        cluster_scoped=False,
        why="Events on AgentRuns: kopf's handler events and the operator's (budget warnings, restarts, outcome)",
    ),
    Rule(
        "storage.k8s.io",
        ("storageclasses",),
        ("get",),
        cluster_scoped=True,
        why="check that a PVC checkpoint store's storageClassName exists before creating the claim",
    ),
    Rule(
        "apiextensions.k8s.io",
        ("customresourcedefinitions",),
        ("list", "watch"),
        cluster_scoped=True,
        why="kopf's resource observer notices the AgentRun CRD being installed or removed at run time; watching one "
        "namespace, the operator turns kopf's scanning off (handlers.start) and never makes these requests",
        mode=Mode.CLUSTERWIDE,
    ),
    Rule(
        "coordination.k8s.io",
        ("leases",),
        ("get", "watch", "create", "update"),
        cluster_scoped=False,
        why="leader election between replicas: the Lease is read, created once, and renewed by its holder with "
        "an update conditional on its resourceVersion; a standby watches it to take over the moment it is released",
        own_namespace=True,
    ),
    Rule(
        "",
        ("pods",),
        ("patch",),
        cluster_scoped=False,
        why="the leader labels its own pod (and removes the label when it stops leading), so the permit Service "
        "routes runners to the leader only",
        own_namespace=True,
    ),
)


# The stream gateway (chart value gateway.enabled) runs under its own ServiceAccount with these rules. It faces
# the internet, so it holds no rule on Secrets of the watched namespaces: the operator grants it `get` on each
# streaming run's <run>-stream-token Secret alone, by name, in the run's Role <run>-stream-reader (children.py).
# In its own namespace it reads API key Secrets (hashes only).
GATEWAY_RULES: tuple[Rule, ...] = (
    Rule(
        "agentrun.dev",
        ("agentruns",),
        ("get", "list", "create", "patch"),
        cluster_scoped=False,
        why="the gateway reads a run's phase and heartbeat interval before relaying its stream; its runs API "
        "creates, lists and cancels (patch of spec.cancel) runs for callers it has checked with "
        "SubjectAccessReview or an API key bound to the namespace",
    ),
    Rule(
        "agentrun.dev",
        ("agentrunapprovals",),
        ("create", "get", approval.RECORD_VERB),
        cluster_scoped=False,
        why="the runs API records a decision on a waiting tool call (create) in the name of the caller it "
        "authenticated and checked, by SubjectAccessReview, for create on agentrunapprovals; record is the verb "
        "the approval admission policy requires of a creator writing spec.decidedBy other than itself (never "
        "impersonate: that would let an internet-facing process act as anyone); get reads an existing decision "
        "to answer a repeated one",
    ),
    Rule(
        "agentrun.dev",
        ("agentruntemplates",),
        ("get",),
        cluster_scoped=False,
        why="a runs API request names an AgentRunTemplate, whose fixed part the run is made from",
    ),
    Rule(
        "",
        ("secrets",),
        ("get",),
        cluster_scoped=False,
        why="API keys of the runs API: the Secret agentrun-api-key-<id> holds a key's namespace and SHA-256 hash, "
        "never the key; read by name in the gateway's own namespace only",
        own_namespace=True,
    ),
    Rule(
        "",
        ("configmaps",),
        ("get",),
        cluster_scoped=False,
        why="a reader joining a run whose runner is gone is replayed the event log from the run's checkpoint "
        "segment ConfigMaps <run>-ckpt-<n>",
    ),
    Rule(
        "authentication.k8s.io",
        ("tokenreviews",),
        ("create",),
        cluster_scoped=True,
        why="a reader may instead present a Kubernetes token; the gateway asks the API server whose it is",
    ),
    Rule(
        "authorization.k8s.io",
        ("subjectaccessreviews",),
        ("create",),
        cluster_scoped=True,
        why="and then whether that identity may get the AgentRun it wants to follow",
    ),
)


def rules_for(mode: Mode, rules: tuple[Rule, ...] = OPERATOR_RULES) -> list[Rule]:
    """The rules an installation in this watch mode needs."""
    if mode is Mode.ALWAYS:
        raise ValueError("an installation is either CLUSTERWIDE or NAMESPACED")
    return [rule for rule in rules if rule.mode in (Mode.ALWAYS, mode) and not rule.own_namespace]


def own_namespace_rules(rules: tuple[Rule, ...] = OPERATOR_RULES) -> list[Rule]:
    """The rules on the operator's own namespace (leader election), whatever it watches."""
    return [rule for rule in rules if rule.own_namespace]


def _by_mode(rules: tuple[Rule, ...]) -> dict[str, Any]:
    clusterwide = rules_for(Mode.CLUSTERWIDE, rules)
    namespaced = rules_for(Mode.NAMESPACED, rules)
    return {
        "clusterwide": {"clusterRole": [rule.as_policy_rule() for rule in clusterwide]},
        "namespaced": {
            "role": [rule.as_policy_rule() for rule in namespaced if not rule.cluster_scoped],
            "clusterRole": [rule.as_policy_rule() for rule in namespaced if rule.cluster_scoped],
        },
    }


def chart_rules() -> dict[str, Any]:
    """The chart's rules file: what goes into each Role kind in each watch mode, for each component."""
    operator = {
        **_by_mode(OPERATOR_RULES),
        "leaderElection": {"role": [rule.as_policy_rule() for rule in own_namespace_rules()]},
    }
    gateway = {
        **_by_mode(GATEWAY_RULES),
        "apiKeys": {"role": [rule.as_policy_rule() for rule in own_namespace_rules(GATEWAY_RULES)]},
    }
    return {"operator": operator, "gateway": gateway}


def render_chart_rules() -> str:
    header = (
        "# Generated from operator/agentrun_operator/permissions.py by `make chart-sync`. Do not edit by hand:\n"
        "# the reason for every rule is written next to it there.\n"
    )
    return header + yaml.safe_dump(chart_rules(), sort_keys=False, default_flow_style=None, width=120)


if __name__ == "__main__":
    sys.stdout.write(render_chart_rules())
