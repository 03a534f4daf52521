"""The resource types the emulated apiserver serves: built-in kinds the operator uses, and CRD-defined kinds."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True)
class PrinterColumn:
    """One `additionalPrinterColumns` entry of a CRD version (what `kubectl get` shows)."""

    name: str
    type: str
    json_path: str
    description: str = ""
    priority: int = 0
    format: str = ""


@dataclass
class ResourceType:
    """Everything the server knows about one served resource (discovery entry, storage and behaviour)."""

    group: str
    version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool
    verbs: tuple[str, ...] = ALL_VERBS
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    # Subresources served: "status" (own write path), "log" (pods) and others.
    subresources: tuple[str, ...] = ()
    printer_columns: tuple[PrinterColumn, ...] = ()
    # The CRD this type comes from (None for built-ins); its schema drives admission.
    crd: Mapping[str, Any] | None = None
    # Answered, never stored (SubjectAccessReview, TokenReview).
    virtual: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> tuple[str, str]:
        """Storage identity: group and plural (one served version per group here)."""
        return (self.group, self.plural)

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def has_status(self) -> bool:
        return "status" in self.subresources

    @property
    def is_custom(self) -> bool:
        return self.crd is not None


def _builtin(
    group: str,
    version: str,
    plural: str,
    kind: str,
    namespaced: bool,
    *,
    short: Sequence[str] = (),
    categories: Sequence[str] = (),
    subresources: Sequence[str] = (),
    verbs: Sequence[str] = ALL_VERBS,
    virtual: bool = False,
) -> ResourceType:
    return ResourceType(
        group=group,
        version=version,
        plural=plural,
        singular=kind.lower(),
        kind=kind,
        namespaced=namespaced,
        verbs=tuple(verbs),
        short_names=tuple(short),
        categories=tuple(categories),
        subresources=tuple(subresources),
        virtual=virtual,
    )


def builtin_types() -> list[ResourceType]:
    """The built-in kinds the operator, kopf, kubectl and the e2e Job executor use (as in Kubernetes 1.3x)."""
    return [
        _builtin("", "v1", "namespaces", "Namespace", False, short=["ns"], subresources=["status"]),
        _builtin("", "v1", "configmaps", "ConfigMap", True, short=["cm"]),
        _builtin("", "v1", "secrets", "Secret", True),
        _builtin("", "v1", "serviceaccounts", "ServiceAccount", True, short=["sa"]),
        _builtin("", "v1", "services", "Service", True, short=["svc"], categories=["all"], subresources=["status"]),
        _builtin("", "v1", "pods", "Pod", True, short=["po"], categories=["all"], subresources=["status", "log"]),
        _builtin("", "v1", "events", "Event", True, short=["ev"]),
        _builtin(
            "", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", True, short=["pvc"], subresources=["status"]
        ),
        _builtin("events.k8s.io", "v1", "events", "Event", True, short=["ev"]),
        _builtin("batch", "v1", "jobs", "Job", True, categories=["all"], subresources=["status"]),
        _builtin("rbac.authorization.k8s.io", "v1", "roles", "Role", True),
        _builtin("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", True),
        _builtin("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False),
        _builtin("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False),
        _builtin("coordination.k8s.io", "v1", "leases", "Lease", True),
        _builtin("storage.k8s.io", "v1", "storageclasses", "StorageClass", False, short=["sc"]),
        _builtin(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            False,
            short=["crd", "crds"],
            subresources=["status"],
        ),
        _builtin(
            "authentication.k8s.io",
            "v1",
            "tokenreviews",
            "TokenReview",
            False,
            verbs=["create"],
            virtual=True,
        ),
        _builtin(
            "authorization.k8s.io",
            "v1",
            "subjectaccessreviews",
            "SubjectAccessReview",
            False,
            verbs=["create"],
            virtual=True,
        ),
        _builtin(
            "authorization.k8s.io",
            "v1",
            "selfsubjectaccessreviews",
            "SelfSubjectAccessReview",
            False,
            verbs=["create"],
            virtual=True,
        ),
    ]


def _columns(version: Mapping[str, Any]) -> tuple[PrinterColumn, ...]:
    return tuple(
        PrinterColumn(
            name=column["name"],
            type=column.get("type", "string"),
            json_path=column["jsonPath"],
            description=column.get("description", ""),
            priority=int(column.get("priority", 0)),
            format=column.get("format", ""),
        )
        for column in version.get("additionalPrinterColumns") or []
    )


def types_from_crd(crd: Mapping[str, Any]) -> list[ResourceType]:
    """The served versions of a CustomResourceDefinition as resource types (what the apiextensions server serves)."""
    spec = crd["spec"]
    names = spec["names"]
    result = []
    for version in spec["versions"]:
        if not version.get("served", True):
            continue
        subresources = version.get("subresources") or {}
        result.append(
            ResourceType(
                group=spec["group"],
                version=version["name"],
                plural=names["plural"],
                singular=names.get("singular") or names["kind"].lower(),
                kind=names["kind"],
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                short_names=tuple(names.get("shortNames") or ()),
                categories=tuple(names.get("categories") or ()),
                subresources=("status",) if "status" in subresources else (),
                printer_columns=_columns(version),
                crd=crd,
            )
        )
    return result


def kopf_peering_crds() -> list[dict[str, Any]]:
    """kopf's peering CRDs (`kopfpeerings.kopf.dev`, `clusterkopfpeerings.kopf.dev`), as kopf's docs install them."""
    crds = []
    for plural, kind, scope in (
        ("kopfpeerings", "KopfPeering", "Namespaced"),
        ("clusterkopfpeerings", "ClusterKopfPeering", "Cluster"),
    ):
        crds.append(
            {
                "apiVersion": "apiextensions.k8s.io/v1",
                "kind": "CustomResourceDefinition",
                "metadata": {"name": f"{plural}.kopf.dev"},
                "spec": {
                    "group": "kopf.dev",
                    "scope": scope,
                    "names": {"plural": plural, "singular": kind.lower(), "kind": kind},
                    "versions": [
                        {
                            "name": "v1",
                            "served": True,
                            "storage": True,
                            "schema": {
                                "openAPIV3Schema": {
                                    "type": "object",
                                    "properties": {
                                        "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                                    },
                                }
                            },
                        }
                    ],
                },
            }
        )
    return crds


class Registry:
    """The served resource types, looked up by URL parts, storage key, kind or any name kubectl may use."""

    def __init__(self) -> None:
        self._types: dict[tuple[str, str, str], ResourceType] = {}
        self._listeners: list[Callable[[], None]] = []

    def on_change(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

    def add(self, resource: ResourceType) -> None:
        self._types[(resource.group, resource.version, resource.plural)] = resource
        self._changed()

    def remove_group_plural(self, group: str, plural: str) -> None:
        for key in [key for key in self._types if key[0] == group and key[2] == plural]:
            del self._types[key]
        self._changed()

    def __iter__(self) -> Iterator[ResourceType]:
        return iter(list(self._types.values()))

    def lookup(self, group: str, version: str, plural: str) -> ResourceType | None:
        return self._types.get((group, version, plural))

    def by_key(self, key: tuple[str, str]) -> ResourceType | None:
        return next((rt for rt in self._types.values() if rt.key == key), None)

    def find(self, name: str) -> ResourceType:
        """Resolve `configmaps`, `cm`, `ConfigMap`, `agentruns.agentrun.dev` or `jobs.batch` to one type."""
        plural_part, _, group_part = name.partition(".")
        for rt in self._types.values():
            names = {rt.plural, rt.singular, rt.kind, rt.kind.lower(), *rt.short_names}
            if (plural_part in names or name in names) and (not group_part or group_part == rt.group or name in names):
                return rt
        raise KeyError(name)
