"""The chart's RBAC fits the real operator: every request it makes in runs' whole lives is granted, and every
grant is either used here or explained.

The operator runs on the real control plane with its own ServiceAccount token, through the API proxy, which logs
every request as an audit log would (verb, group, resource, subresource). The test's own requests (playing
kubectl, the kubelet and the runner) go around the proxy, so every logged request is the operator's.
"""

from collections.abc import Iterable

import pytest

from agentrun_api import conditions as c
from agentrun_operator import permissions
from agentrun_operator.permissions import Mode
from tests.harness.apiproxy import ApiProxy, RequestRecord
from tests.harness.inprocess_operator import Cluster, ShiftableClock, eventually, run_manifest, running_operator

pytestmark = pytest.mark.integration

# Grants this scenario need not reach (retries under load may reach some), and why the operator holds them.
NOT_REACHED_HERE = {
    ("batch", "jobs", "get"): "adopting a Job after a 409 on create (a second reconcile of the same run)",
    ("", "configmaps", "get"): "adopting a ConfigMap after a 409 on create",
    (
        "",
        "configmaps",
        "update",
    ): "granted to the runner by its Role; the escalation rule needs the operator to hold it",
    ("", "configmaps", "patch"): "granted to the runner by its Role; the escalation rule needs the operator to hold it",
    ("", "serviceaccounts", "get"): "adopting after a 409 on create",
    ("", "services", "get"): "adopting after a 409 on create",
    ("", "persistentvolumeclaims", "get"): "adopting after a 409 on create",
    ("", "persistentvolumeclaims", "create"): "the PVC store of a run whose StorageClass exists",
    ("rbac.authorization.k8s.io", "roles", "get"): "adopting after a 409 on create",
    ("rbac.authorization.k8s.io", "rolebindings", "get"): "adopting after a 409 on create",
    ("agentrun.dev", "throttlepools", "patch"): "kopf's annotations on ThrottlePools (agentrun_operator.permits)",
    ("agentrun.dev", "throttlepools/status", "patch"): "the pools' live status (agentrun_operator.permits)",
    ("agentrun.dev", "clusterthrottlepools", "patch"): "kopf's annotations on ClusterThrottlePools "
    "(test_clusterthrottlepool_operator.py)",
    ("agentrun.dev", "clusterthrottlepools/status", "patch"): "the cluster pools' live status "
    "(test_clusterthrottlepool_operator.py)",
    ("agentrun.dev", "mcpservers", "get"): "admitting a run that names an MCPServer (test_mcp_tools_exactly_once.py)",
    ("agentrun.dev", "mcpservers/status", "patch"): "the tools an MCPServer lists (test_mcp_tools_exactly_once.py)",
    ("authorization.k8s.io", "subjectaccessreviews", "create"): "whether a run may 'use' a ClusterThrottlePool "
    "(test_clusterthrottlepool_operator.py)",
    ("agentrun.dev", "agentruns", "get"): "reading a run afresh for a supervision started again "
    "(test_operator_run_repairs.py, test_operator_leadership.py)",
    ("agentrun.dev", "agentruns", "patch"): "clean-up after an earlier operator version "
    "(test_operator_run_registry.py): kopf's finalizer and annotations",
    ("networking.k8s.io", "ingresses", "get"): "adopting a run's own route after a 409 on create",
    ("traefik.io", "serverstransports", "get"): "adopting a run's own route after a 409 on create",
    **{
        (group, plural, verb): f"a run's own route behind {controller} (test_operator_run_route.py)"
        for group, plural, controller in (
            ("gateway.networking.k8s.io", "httproutes", "gateway-api or gke-gateway"),
            ("networking.gke.io", "gcpbackendpolicies", "gke-gateway"),
            ("networking.istio.io", "virtualservices", "istio"),
            ("projectcontour.io", "httpproxies", "contour"),
        )
        for verb in ("create", "get")
    },
}


def granted(record: RequestRecord, rules: Iterable[permissions.Rule]) -> bool:
    """RBAC's own matching: the API group, the resource with its subresource ("agentruns/status"), the verb."""
    resource = f"{record.resource}/{record.subresource}" if record.subresource else record.resource
    return any(
        record.group == rule.api_group and resource in rule.resources and record.verb in rule.verbs for rule in rules
    )


def resource_requests(proxy: ApiProxy) -> list[RequestRecord]:
    # Requests without a verb are discovery and version lookups, open to every authenticated user.
    return [record for record in proxy.requests if record.verb]


async def live_runs(cluster: Cluster, clock: ShiftableClock) -> None:
    """Runs through their lives: success with suspend and resume and a TTL, cancel, a silent runner, a PVC store."""
    cluster.add_api_key_secret()
    cluster.create(run_manifest(ttlSecondsAfterFinished=0))
    await eventually(lambda: cluster.get("Job", "q3-runner"), message="the Job")
    pod = await cluster.start_pod()
    await eventually(lambda: cluster.status().get("phase") == "Running")
    cluster.report(iteration=2, pod=pod)
    cluster.patch("AgentRun", "q3", {"spec": {"suspend": True}})
    await eventually(lambda: cluster.status().get("phase") == "Suspended", message="phase Suspended")
    cluster.patch("AgentRun", "q3", {"spec": {"suspend": False}})
    await eventually(lambda: cluster.status().get("phase") != "Suspended", message="resumed")
    result = {"summary": "done", "ref": "configmap/q3-ckpt-0#result", "bytes": 4}
    cluster.report(iteration=3, pod=pod, outcome="Succeeded", result=result)
    await eventually(lambda: cluster.status().get("phase") == "Succeeded", message="phase Succeeded")
    await eventually(lambda: cluster.get("Job", "q3-runner") is None, message="the Job removed after its TTL")

    cluster.create(run_manifest("c1"))
    await eventually(lambda: cluster.get("Job", "c1-runner"), message="the second Job")
    cluster.patch("AgentRun", "c1", {"spec": {"cancel": True}})
    await eventually(lambda: cluster.status("c1").get("phase") == "Cancelled", message="phase Cancelled")

    cluster.create(run_manifest("s1", progressDeadline="60s"))
    await eventually(lambda: cluster.get("Job", "s1-runner"), message="the third Job")
    silent = await cluster.start_pod("s1")
    await eventually(lambda: cluster.status("s1").get("phase") == "Running")
    clock.advance(61)
    await eventually(lambda: cluster.pod_gone(silent), message="the silent pod deleted")

    # Its own route behind Traefik: an Ingress and a ServersTransport (whose kind this cluster does not serve).
    cluster.create(run_manifest("r1", streaming={"ingress": {"controller": "traefik", "host": "r1.example.com"}}))
    await eventually(lambda: cluster.condition(c.STREAM_ROUTE_READY, "r1"), message="r1's StreamRouteReady")

    cluster.create(run_manifest("p1", checkpoint={"store": "PersistentVolumeClaim", "storageClassName": "fast"}))
    await eventually(lambda: cluster.status("p1").get("reason"), message="p1 waiting for its StorageClass")


async def test_runs_need_nothing_beyond_the_namespaced_rules_and_use_the_rest(
    cluster: Cluster, proxy: ApiProxy
) -> None:
    clock = ShiftableClock()
    async with running_operator(cluster, clock=clock):
        await live_runs(cluster, clock)

    # The operator watches one namespace (AGENTRUN_WATCH_NAMESPACE), as the chart with watchNamespace installs it.
    rules = permissions.rules_for(Mode.NAMESPACED)
    requests = resource_requests(proxy)
    refused = sorted({(r.verb, r.group, r.resource, r.subresource) for r in requests if not granted(r, rules)})
    assert refused == [], f"the operator made requests its RBAC does not grant: {refused}"

    used = {(r.group, f"{r.resource}/{r.subresource}" if r.subresource else r.resource, r.verb) for r in requests}
    grants = {(rule.api_group, resource, verb) for rule in rules for resource in rule.resources for verb in rule.verbs}
    unexplained = sorted(grants - used - set(NOT_REACHED_HERE))
    assert unexplained == [], f"granted, never used, and not explained in NOT_REACHED_HERE: {unexplained}"
    assert set(NOT_REACHED_HERE) <= grants, "NOT_REACHED_HERE names a grant the rules no longer hold"
