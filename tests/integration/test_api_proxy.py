"""The API proxy against a real HTTPS upstream on 127.0.0.1: a small Kubernetes-shaped server with its own CA."""

from __future__ import annotations

import pytest

from tests.harness.apiproxy.requestinfo import RequestInfo, parse_request_info

pytestmark = pytest.mark.integration

CONFIGMAPS = "/api/v1/namespaces/default/configmaps"


# ----- request info: the API server's rules, as a table -----

REQUEST_INFO_TABLE: list[tuple[str, str, RequestInfo]] = [
    # (method, path with query, expected request info)
    ("GET", "/readyz", RequestInfo(False, "get")),
    ("GET", "/version", RequestInfo(False, "get")),
    ("POST", "/readyz", RequestInfo(False, "post")),
    ("GET", "/", RequestInfo(False, "get")),
    ("GET", "/healthz/etcd", RequestInfo(False, "get")),
    ("GET", "/openapi/v3/apis/batch/v1", RequestInfo(False, "get")),
    ("GET", "/api", RequestInfo(False, "get")),
    ("GET", "/api/v1", RequestInfo(False, "get")),
    ("GET", "/apis", RequestInfo(False, "get")),
    ("GET", "/apis/batch", RequestInfo(False, "get")),
    ("GET", "/apis/batch/v1", RequestInfo(False, "get")),
    ("GET", f"{CONFIGMAPS}", RequestInfo(True, "list", "api", "", "v1", "default", "configmaps")),
    ("GET", f"{CONFIGMAPS}/", RequestInfo(True, "list", "api", "", "v1", "default", "configmaps")),
    ("GET", f"{CONFIGMAPS}?watch=true", RequestInfo(True, "watch", "api", "", "v1", "default", "configmaps")),
    ("GET", f"{CONFIGMAPS}?watch=1", RequestInfo(True, "watch", "api", "", "v1", "default", "configmaps")),
    ("GET", f"{CONFIGMAPS}?watch=False", RequestInfo(True, "list", "api", "", "v1", "default", "configmaps")),
    ("GET", f"{CONFIGMAPS}?watch=0", RequestInfo(True, "list", "api", "", "v1", "default", "configmaps")),
    ("GET", f"{CONFIGMAPS}/cm", RequestInfo(True, "get", "api", "", "v1", "default", "configmaps", name="cm")),
    ("HEAD", f"{CONFIGMAPS}/cm", RequestInfo(True, "get", "api", "", "v1", "default", "configmaps", name="cm")),
    ("POST", CONFIGMAPS, RequestInfo(True, "create", "api", "", "v1", "default", "configmaps")),
    ("PUT", f"{CONFIGMAPS}/cm", RequestInfo(True, "update", "api", "", "v1", "default", "configmaps", name="cm")),
    ("PATCH", f"{CONFIGMAPS}/cm", RequestInfo(True, "patch", "api", "", "v1", "default", "configmaps", name="cm")),
    ("DELETE", f"{CONFIGMAPS}/cm", RequestInfo(True, "delete", "api", "", "v1", "default", "configmaps", name="cm")),
    ("DELETE", CONFIGMAPS, RequestInfo(True, "deletecollection", "api", "", "v1", "default", "configmaps")),
    ("GET", "/api/v1/configmaps", RequestInfo(True, "list", "api", "", "v1", "", "configmaps")),
    # A field selector pinning metadata.name names the object of a list or watch (single-object informers).
    (
        "GET",
        f"{CONFIGMAPS}?fieldSelector=metadata.name%3Dcm&watch=true",
        RequestInfo(True, "watch", "api", "", "v1", "default", "configmaps", name="cm"),
    ),
    (
        "GET",
        f"{CONFIGMAPS}?fieldSelector=status.phase%3DRunning,metadata.name%3D%3Dcm",
        RequestInfo(True, "list", "api", "", "v1", "default", "configmaps", name="cm"),
    ),
    (
        "GET",
        f"{CONFIGMAPS}?fieldSelector=metadata.name%3Da%5C%2Cb",
        RequestInfo(True, "list", "api", "", "v1", "default", "configmaps", name="a,b"),
    ),
    (
        "GET",
        f"{CONFIGMAPS}?fieldSelector=metadata.name!%3Dcm",
        RequestInfo(True, "list", "api", "", "v1", "default", "configmaps"),
    ),
    (
        "GET",
        f"{CONFIGMAPS}?fieldSelector=metadata.name",
        RequestInfo(True, "list", "api", "", "v1", "default", "configmaps"),
    ),
    # The legacy path verb: /watch/ before the resource.
    (
        "GET",
        "/api/v1/watch/namespaces/default/configmaps",
        RequestInfo(True, "watch", "api", "", "v1", "default", "configmaps"),
    ),
    (
        "GET",
        "/api/v1/watch/namespaces/default/configmaps/cm",
        RequestInfo(True, "watch", "api", "", "v1", "default", "configmaps", name="cm"),
    ),
    ("GET", "/api/v1/watch", RequestInfo(True, "", "api", "", "v1")),
    # Subresources.
    (
        "GET",
        "/api/v1/namespaces/default/pods/p/log?follow=true&container=runner",
        RequestInfo(True, "get", "api", "", "v1", "default", "pods", "log", "p"),
    ),
    (
        "PATCH",
        "/api/v1/namespaces/default/pods/p/status",
        RequestInfo(True, "patch", "api", "", "v1", "default", "pods", "status", "p"),
    ),
    (
        "POST",
        "/api/v1/namespaces/agents/serviceaccounts/runner/token",
        RequestInfo(True, "create", "api", "", "v1", "agents", "serviceaccounts", "token", "runner"),
    ),
    (
        "GET",
        "/api/v1/namespaces/default/services/svc:http/proxy/metrics/x",
        RequestInfo(True, "get", "api", "", "v1", "default", "services", "proxy", "svc:http"),
    ),
    (
        "GET",
        "/api/v1/proxy/namespaces/default/services/svc/metrics",
        RequestInfo(True, "proxy", "api", "", "v1", "default", "services", "", "svc"),
    ),
    # Namespaces are cluster-scoped, and their own namespace; status and finalize are their subresources.
    ("GET", "/api/v1/namespaces", RequestInfo(True, "list", "api", "", "v1", "", "namespaces")),
    (
        "GET",
        "/api/v1/namespaces/team-a",
        RequestInfo(True, "get", "api", "", "v1", "team-a", "namespaces", name="team-a"),
    ),
    (
        "PUT",
        "/api/v1/namespaces/team-a/finalize",
        RequestInfo(True, "update", "api", "", "v1", "team-a", "namespaces", "finalize", "team-a"),
    ),
    (
        "GET",
        "/api/v1/namespaces/team-a/status",
        RequestInfo(True, "get", "api", "", "v1", "team-a", "namespaces", "status", "team-a"),
    ),
    ("GET", "/api/v1/nodes/node-1", RequestInfo(True, "get", "api", "", "v1", "", "nodes", name="node-1")),
    # Named groups.
    (
        "GET",
        "/apis/batch/v1/namespaces/default/jobs",
        RequestInfo(True, "list", "apis", "batch", "v1", "default", "jobs"),
    ),
    ("GET", "/apis/batch/v1/jobs?watch=true", RequestInfo(True, "watch", "apis", "batch", "v1", "", "jobs")),
    (
        "PATCH",
        "/apis/agentrun.dev/v1alpha1/namespaces/default/agentruns/r1/status",
        RequestInfo(True, "patch", "apis", "agentrun.dev", "v1alpha1", "default", "agentruns", "status", "r1"),
    ),
    (
        "GET",
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/agentruns.agentrun.dev",
        RequestInfo(
            True,
            "get",
            "apis",
            "apiextensions.k8s.io",
            "v1",
            "",
            "customresourcedefinitions",
            name="agentruns.agentrun.dev",
        ),
    ),
    (
        "POST",
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        RequestInfo(True, "create", "apis", "authorization.k8s.io", "v1", "", "selfsubjectaccessreviews"),
    ),
    (
        "DELETE",
        "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases",
        RequestInfo(True, "deletecollection", "apis", "coordination.k8s.io", "v1", "kube-system", "leases"),
    ),
]


@pytest.mark.parametrize(("method", "url", "expected"), REQUEST_INFO_TABLE, ids=lambda value: str(value)[:60])
def test_request_info_follows_the_api_servers_rules(method: str, url: str, expected: RequestInfo) -> None:
    path, _, query = url.partition("?")
    assert parse_request_info(method, path, query) == expected
