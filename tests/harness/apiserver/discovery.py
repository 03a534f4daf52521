"""Discovery documents (`/api`, `/apis`, `/api/v1`, `/apis/<group>/<version>`) built from the served types."""

from __future__ import annotations

from typing import Any

from tests.harness.apiserver.resources import Registry, ResourceType

SERVER_VERSION = {
    "major": "1",
    "minor": "36",
    "gitVersion": "v1.36.0-emulated",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z",
    "goVersion": "go1.25.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}


def api_versions() -> dict[str, Any]:
    """`/api`: the legacy core group's versions."""
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
    }


def _groups(registry: Registry) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for rt in registry:
        if rt.group and rt.version not in groups.setdefault(rt.group, []):
            groups[rt.group].append(rt.version)
    return groups


def _group_entry(group: str, versions: list[str]) -> dict[str, Any]:
    entries = [{"groupVersion": f"{group}/{version}", "version": version} for version in versions]
    return {"name": group, "versions": entries, "preferredVersion": entries[0]}


def api_group_list(registry: Registry) -> dict[str, Any]:
    """`/apis`: every named group with its versions (the first served version preferred)."""
    return {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [_group_entry(group, versions) for group, versions in sorted(_groups(registry).items())],
    }


def api_group(registry: Registry, group: str) -> dict[str, Any] | None:
    """`/apis/<group>`."""
    versions = _groups(registry).get(group)
    return None if not versions else {"kind": "APIGroup", "apiVersion": "v1", **_group_entry(group, versions)}


def _entry(rt: ResourceType, subresource: str | None) -> dict[str, Any]:
    if subresource is None:
        return {
            "name": rt.plural,
            "singularName": rt.singular,
            "namespaced": rt.namespaced,
            "kind": rt.kind,
            "verbs": list(rt.verbs),
            **({"shortNames": list(rt.short_names)} if rt.short_names else {}),
            **({"categories": list(rt.categories)} if rt.categories else {}),
        }
    verbs = ["get"] if subresource == "log" else ["get", "patch", "update"]
    return {
        "name": f"{rt.plural}/{subresource}",
        "singularName": "",
        "namespaced": rt.namespaced,
        "kind": rt.kind,
        "verbs": verbs,
    }


def api_resource_list(registry: Registry, group: str, version: str) -> dict[str, Any] | None:
    """`/api/v1` or `/apis/<group>/<version>`: kinds, verbs, short names, categories, scope and subresources."""
    types = [rt for rt in registry if rt.group == group and rt.version == version]
    if not types:
        return None
    resources = []
    for rt in sorted(types, key=lambda t: t.plural):
        resources.append(_entry(rt, None))
        resources.extend(_entry(rt, subresource) for subresource in rt.subresources)
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": resources,
    }
