"""OpenAPI v3 documents for kubectl: it reads them to learn that PATCH takes `fieldValidation` (so it validates on
the server with `fieldValidation=Strict`) and, for `kubectl explain`, the CRD schemas."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from tests.harness.apiserver.resources import Registry, ResourceType

_COMMON_QUERY = ("dryRun", "fieldManager", "fieldValidation", "pretty")


def _gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def _schema_name(rt: ResourceType) -> str:
    reversed_group = ".".join(reversed(rt.group.split("."))) if rt.group else "io.k8s.api.core"
    return f"{reversed_group}.{rt.version}.{rt.kind}"


def _gvk(rt: ResourceType) -> list[dict[str, str]]:
    return [{"group": rt.group, "version": rt.version, "kind": rt.kind}]


def _operation(rt: ResourceType, action: str, *, patch: bool = False) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": f"{action}{rt.kind}",
        "x-kubernetes-action": action,
        # An object on operations (a list on schemas), as the apiserver publishes it.
        "x-kubernetes-group-version-kind": _gvk(rt)[0],
        "parameters": [{"name": name, "in": "query", "schema": {"type": "string"}} for name in _COMMON_QUERY],
        "responses": {"200": {"description": "OK"}},
    }
    if patch:
        # Strategic merge patch is not advertised: kubectl then builds it from its compiled-in types for built-ins,
        # and uses a JSON merge patch for custom resources, as against a real apiserver.
        operation["requestBody"] = {
            "content": {
                "application/merge-patch+json": {"schema": {"type": "object"}},
                "application/json-patch+json": {"schema": {"type": "object"}},
            }
        }
    return operation


def group_version_document(registry: Registry, group: str, version: str) -> dict[str, Any] | None:
    """`/openapi/v3/apis/<group>/<version>`: one path per resource with its verbs, and the CRD schemas."""
    types = [rt for rt in registry if rt.group == group and rt.version == version]
    if not types:
        return None
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for rt in types:
        prefix = f"/{_gv_path(group, version)}" + ("/namespaces/{namespace}" if rt.namespaced else "")
        paths[f"{prefix}/{rt.plural}"] = {"get": _operation(rt, "list"), "post": _operation(rt, "post")}
        paths[f"{prefix}/{rt.plural}/{{name}}"] = {
            "get": _operation(rt, "get"),
            "put": _operation(rt, "put"),
            "patch": _operation(rt, "patch", patch=True),
            "delete": _operation(rt, "delete"),
        }
        if rt.crd is not None:
            version_spec = next(v for v in rt.crd["spec"]["versions"] if v["name"] == rt.version)
            schema = dict((version_spec.get("schema") or {}).get("openAPIV3Schema") or {"type": "object"})
            schema["x-kubernetes-group-version-kind"] = _gvk(rt)
            schemas[_schema_name(rt)] = schema
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.36.0-emulated"},
        "paths": paths,
        "components": {"schemas": schemas},
    }


def root_document(registry: Registry) -> dict[str, Any]:
    """`/openapi/v3`: where each group-version's document lives (with a content hash, as kubectl caches by it)."""
    paths = {}
    for group, version in sorted({(rt.group, rt.version) for rt in registry}):
        document = group_version_document(registry, group, version)
        digest = hashlib.sha512(json.dumps(document, sort_keys=True).encode()).hexdigest()[:32]
        paths[_gv_path(group, version)] = {"serverRelativeURL": f"/openapi/v3/{_gv_path(group, version)}?hash={digest}"}
    return {"paths": paths}


def serve(registry: Registry, path: str) -> dict[str, Any] | None:
    """The OpenAPI v3 document at `path`; None (404) for others, including `/openapi/v2` (not served)."""
    if path.rstrip("/") == "/openapi/v3":
        return root_document(registry)
    prefix = "/openapi/v3/"
    if not path.startswith(prefix):
        return None
    parts = path[len(prefix) :].strip("/").split("/")
    if len(parts) == 2 and parts[0] == "api":
        return group_version_document(registry, "", parts[1])
    if len(parts) == 3 and parts[0] == "apis":
        return group_version_document(registry, parts[1], parts[2])
    return None
