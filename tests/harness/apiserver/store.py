"""The stateful heart of the emulated apiserver: objects, revisions, watch history, finalizers and garbage collection.

All mutations run synchronously on the server's event loop (no await inside), so each one is atomic, as an etcd
transaction is; watchers are fed through per-watch queues.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime
import re
import secrets
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tests.harness.apiserver import errors
from tests.harness.apiserver.admission import AdmissionFactory, CustomResourceAdmission, field_causes
from tests.harness.apiserver.patching import (
    APPLY_PATCH,
    JSON_PATCH,
    MERGE_PATCH,
    STRATEGIC_MERGE_PATCH,
    json_patch,
    merge_patch,
    strategic_merge_patch,
)
from tests.harness.apiserver.resources import Registry, ResourceType, types_from_crd
from tests.harness.apiserver.selectors import FieldSelector, LabelSelector

ObjectKey = tuple[str, str, str, str]  # group, plural, namespace ("" when cluster-scoped), name

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # the apiserver's SimpleNameGenerator alphabet (no vowels)
FOREGROUND_FINALIZER = "foregroundDeletion"
ORPHAN_FINALIZER = "orphan"
MAX_ANNOTATIONS_BYTES = 256 * 1024  # metadata.annotations, keys and values together (TotalAnnotationSizeLimitB)
MAX_PAYLOAD_BYTES = 1024 * 1024  # ConfigMap data+binaryData, Secret data (corev1.MaxSecretSize)
INITIAL_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


def now_rfc3339() -> str:
    """Kubernetes timestamps: RFC 3339, UTC, whole seconds (metav1.Time)."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class WatchEvent:
    """One change in the store's history: the object after the change and, for MODIFIED, before it."""

    type: str
    object: dict[str, Any]
    old: dict[str, Any] | None
    revision: int
    key: tuple[str, str]


@dataclass(eq=False)
class Watcher:
    """An open watch: what it selects and the queue the store feeds its events into."""

    resource: ResourceType
    namespace: str | None
    labels: LabelSelector
    fields: FieldSelector
    name: str | None = None
    queue: asyncio.Queue[WatchEvent] = field(default_factory=asyncio.Queue)

    def selects(self, obj: Mapping[str, Any] | None) -> bool:
        if obj is None:
            return False
        metadata = obj.get("metadata") or {}
        if self.namespace is not None and metadata.get("namespace", "") != self.namespace:
            return False
        if self.name is not None and metadata.get("name") != self.name:
            return False
        return self.labels.matches(metadata.get("labels") or {}) and self.fields.matches(obj)

    def translate(self, event: WatchEvent) -> WatchEvent | None:
        """Filtered watch semantics of the watch cache: an object entering the selection is ADDED, one leaving it is
        DELETED, one staying in it is MODIFIED."""
        if event.key != self.resource.key:
            return None
        now_in = self.selects(event.object)
        if event.type == "MODIFIED":
            was_in = self.selects(event.old)
            if was_in and now_in:
                return event
            if now_in:
                return WatchEvent("ADDED", event.object, None, event.revision, event.key)
            if was_in:
                return WatchEvent("DELETED", event.object, None, event.revision, event.key)
            return None
        return event if now_in else None


class Store:
    """Objects of every served resource, with etcd-like revisions, a bounded event history and the controllers
    that the real control plane runs beside storage (garbage collector, namespace deletion)."""

    def __init__(
        self, registry: Registry, *, history_limit: int = 1000, admission_factory: AdmissionFactory | None = None
    ) -> None:
        self.registry = registry
        self.revision = 1
        self.objects: dict[ObjectKey, dict[str, Any]] = {}
        self.history: deque[WatchEvent] = deque(maxlen=history_limit)
        # Watches from a revision below this one get 410 Gone: their events are no longer retained.
        self.compacted_revision = 0
        self.watchers: set[Watcher] = set()
        self.admission_factory = admission_factory
        self._admissions: dict[tuple[str, str], CustomResourceAdmission | None] = {}
        self._gc_scheduled = False
        for namespace in INITIAL_NAMESPACES:
            self.create(self.registry.find("namespaces"), None, {"metadata": {"name": namespace}})

    # ----- reading -----

    def resource(self, name: str) -> ResourceType:
        """A served type by plural, short name or kind (`store.resource("ar")`)."""
        return self.registry.find(name)

    def get(self, rt: ResourceType, namespace: str | None, name: str) -> dict[str, Any]:
        """GET of one object; 404 NotFound with the apiserver's message when absent."""
        obj = self.objects.get(self._key(rt, namespace, name))
        if obj is None:
            raise errors.not_found(rt.group, rt.plural, name)
        return self._present(rt, obj)

    def try_get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """Test helper: the object or None (`store.try_get("Job", "default", "run-runner")`)."""
        rt = self.registry.find(kind)
        obj = self.objects.get(self._key(rt, namespace, name))
        return None if obj is None else self._present(rt, obj)

    def list_objects(
        self,
        rt: ResourceType,
        namespace: str | None,
        labels: LabelSelector | None = None,
        fields: FieldSelector | None = None,
    ) -> tuple[list[dict[str, Any]], str]:
        """LIST: matching objects sorted by namespace and name, and the current revision as the list's version."""
        items = []
        for (group, plural, obj_namespace, _), obj in sorted(self.objects.items()):
            if (group, plural) != rt.key or (namespace is not None and obj_namespace != namespace):
                continue
            metadata = obj["metadata"]
            if labels is not None and not labels.matches(metadata.get("labels") or {}):
                continue
            if fields is not None and not fields.matches(obj):
                continue
            items.append(self._present(rt, obj))
        return items, str(self.revision)

    def all_of(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """Test helper: every stored object of a kind."""
        return self.list_objects(self.registry.find(kind), namespace)[0]

    # ----- writing -----

    def create(
        self,
        rt: ResourceType,
        namespace: str | None,
        body: Mapping[str, Any],
        *,
        strict: bool = False,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """CREATE: names (`generateName`), namespace checks, system metadata, defaults, admission, then store
        (not with `dry_run`: the object is returned as it would be stored, without a resourceVersion)."""
        obj = self._checked_body(rt, body)
        metadata = obj.setdefault("metadata", {})
        if rt.namespaced:
            body_namespace = metadata.get("namespace")
            if namespace and body_namespace and body_namespace != namespace:
                raise errors.bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            namespace = namespace or body_namespace
            if not namespace:
                raise errors.bad_request("the namespace of the object is not set and the request names none")
            metadata["namespace"] = namespace
            self._check_namespace_open(rt, namespace, metadata.get("name") or metadata.get("generateName", ""))
        else:
            metadata.pop("namespace", None)
            namespace = None
        if not metadata.get("name"):
            if metadata.get("generateName"):
                metadata["name"] = self._generate_name(rt, namespace, metadata["generateName"])
            else:
                raise errors.invalid(
                    rt.group,
                    rt.kind,
                    "",
                    [
                        {
                            "reason": "FieldValueRequired",
                            "message": "Required value: name or generateName is required",
                            "field": "metadata.name",
                        }
                    ],
                )
        name = metadata["name"]
        self._validate_name(rt, name)
        key = self._key(rt, namespace, name)
        if key in self.objects:
            raise errors.already_exists(rt.group, rt.plural, name)
        for system_field in (
            "uid",
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
            "managedFields",
        ):
            metadata.pop(system_field, None)
        metadata["uid"] = str(uuid.uuid4())
        metadata["creationTimestamp"] = now_rfc3339()
        metadata["generation"] = 1
        if rt.has_status and rt.kind != "CustomResourceDefinition":
            # Status is owned by the status subresource: a create cannot set it.
            obj.pop("status", None)
        self._apply_builtin_defaults(rt, obj)
        self._check_limits(rt, obj)
        obj = self._admit(rt, obj, None, strict=strict, status=False)
        if rt.kind == "CustomResourceDefinition":
            self._prepare_crd(obj)
        if dry_run:
            return self._present(rt, obj)
        self.revision += 1
        obj["metadata"]["resourceVersion"] = str(self.revision)
        self.objects[key] = obj
        self._emit("ADDED", rt, obj, None)
        if rt.kind == "CustomResourceDefinition":
            self._register_crd(obj)
        return self._present(rt, obj)

    def update(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        body: Mapping[str, Any],
        *,
        subresource: str | None = None,
        strict: bool = False,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """UPDATE (PUT): optimistic concurrency on metadata.resourceVersion (409 Conflict when stale)."""
        new = self._checked_body(rt, body)
        metadata = new.setdefault("metadata", {})
        if metadata.get("name") not in (None, name):
            raise errors.bad_request(
                f"the name of the object ({metadata.get('name')}) does not match the name on the URL ({name})"
            )
        old = self._existing(rt, namespace, name)
        sent_version = metadata.get("resourceVersion")
        if sent_version and sent_version != old["metadata"]["resourceVersion"]:
            raise errors.conflict(
                rt.group,
                rt.plural,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            )
        return self._write(rt, old, new, subresource=subresource, strict=strict, dry_run=dry_run)

    def patch(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        content_type: str,
        patch: Any,
        *,
        subresource: str | None = None,
        strict: bool = False,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """PATCH with merge, JSON or (built-ins only) strategic merge patch; a resourceVersion in the patch is a
        precondition, as in the apiserver."""
        old = self._existing(rt, namespace, name)
        media_type = content_type.split(";")[0].strip()
        accepted = [JSON_PATCH, MERGE_PATCH] + ([] if rt.is_custom else [STRATEGIC_MERGE_PATCH])
        if media_type == JSON_PATCH:
            new = json_patch(old, patch)
        elif media_type == MERGE_PATCH:
            if not isinstance(patch, Mapping):
                raise errors.bad_request("the merge patch must be a JSON object")
            new = merge_patch(old, patch)
        elif media_type == STRATEGIC_MERGE_PATCH and not rt.is_custom:
            if not isinstance(patch, Mapping):
                raise errors.bad_request("the strategic merge patch must be a JSON object")
            new = strategic_merge_patch(old, patch)
        else:
            # Server-side apply (APPLY_PATCH) is not emulated; the apiserver would accept it.
            raise errors.unsupported_media_type(
                media_type, accepted + ([APPLY_PATCH] if media_type == APPLY_PATCH else [])
            )
        if not isinstance(new, dict):
            raise errors.bad_request("the patched object is not a JSON object")
        patched_version = (new.get("metadata") or {}).get("resourceVersion")
        if patched_version is not None and patched_version != old["metadata"]["resourceVersion"]:
            raise errors.conflict(
                rt.group,
                rt.plural,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            )
        return self._write(rt, old, new, subresource=subresource, strict=strict, dry_run=dry_run)

    def delete(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        options: Mapping[str, Any] | None = None,
        *,
        dry_run: bool = False,
    ) -> tuple[dict[str, Any], bool]:
        """DELETE: graceful when finalizers remain (deletionTimestamp set, object kept), otherwise immediate; the
        propagation policy (Background default, Foreground, Orphan) decides what happens to dependents.
        Returns the object and whether it is gone (with `dry_run`: would be gone; nothing changes)."""
        options = options or {}
        old = self._existing(rt, namespace, name)
        preconditions = options.get("preconditions") or {}
        if preconditions.get("uid") and preconditions["uid"] != old["metadata"]["uid"]:
            raise errors.conflict(
                rt.group, rt.plural, name, "Precondition failed: UID in precondition does not match the UID in record"
            )
        if (
            preconditions.get("resourceVersion")
            and preconditions["resourceVersion"] != old["metadata"]["resourceVersion"]
        ):
            raise errors.conflict(
                rt.group, rt.plural, name, "Precondition failed: ResourceVersion in precondition does not match"
            )
        if dry_run:
            return self._present(rt, old), not (old["metadata"].get("finalizers") or rt.kind == "Namespace")
        policy = options.get("propagationPolicy") or ("Orphan" if options.get("orphanDependents") else "Background")
        if policy == "Orphan":
            self._orphan_dependents(old["metadata"]["uid"])
        obj = copy.deepcopy(old)
        metadata = obj["metadata"]
        if rt.kind == "Namespace":
            return self._delete_namespace(rt, obj), False
        finalizers = list(metadata.get("finalizers") or [])
        if policy == "Foreground" and self._dependents(metadata["uid"]) and FOREGROUND_FINALIZER not in finalizers:
            finalizers.append(FOREGROUND_FINALIZER)
            metadata["finalizers"] = finalizers
        if finalizers:
            if metadata.get("deletionTimestamp") and obj == old:
                return self._present(rt, old), False
            metadata.setdefault("deletionTimestamp", now_rfc3339())
            metadata.setdefault("deletionGracePeriodSeconds", 0)
            self._store(rt, obj, old)
            if FOREGROUND_FINALIZER in finalizers:
                self._schedule_gc()
            return self._present(rt, obj), False
        self._remove(rt, obj)
        return self._present(rt, obj), True

    def delete_collection(
        self,
        rt: ResourceType,
        namespace: str | None,
        labels: LabelSelector,
        fields: FieldSelector,
        options: Mapping[str, Any] | None,
    ) -> list[dict[str, Any]]:
        """DELETECOLLECTION: delete every selected object, each as a single DELETE would."""
        items, _ = self.list_objects(rt, namespace, labels, fields)
        return [
            self.delete(rt, item["metadata"].get("namespace"), item["metadata"]["name"], options)[0] for item in items
        ]

    # ----- watching -----

    def open_watch(
        self,
        rt: ResourceType,
        namespace: str | None,
        labels: LabelSelector,
        fields: FieldSelector,
        resource_version: str | None,
        name: str | None = None,
    ) -> Watcher:
        """WATCH: from "now" with the current state as ADDED events (no version or "0"), or replaying the retained
        history after `resource_version`; 410 Gone when that version was compacted away."""
        watcher = Watcher(rt, namespace, labels, fields, name)
        if not resource_version or resource_version == "0":
            for obj in self.list_objects(rt, namespace, labels, fields)[0]:
                if watcher.selects(obj):
                    watcher.queue.put_nowait(WatchEvent("ADDED", obj, None, self.revision, rt.key))
        else:
            try:
                start = int(resource_version)
            except ValueError:
                raise errors.bad_request(f"invalid resource version: {resource_version}") from None
            if start < self.compacted_revision:
                raise errors.gone(f"too old resource version: {start} ({self.compacted_revision})")
            for event in self.history:
                if event.revision > start and (translated := watcher.translate(event)) is not None:
                    watcher.queue.put_nowait(self._copy_event(rt, translated))
        self.watchers.add(watcher)
        return watcher

    def close_watch(self, watcher: Watcher) -> None:
        self.watchers.discard(watcher)

    # ----- internals: writing -----

    def _write(
        self,
        rt: ResourceType,
        old: dict[str, Any],
        new: dict[str, Any],
        *,
        subresource: str | None,
        strict: bool,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """The shared update path of PUT and PATCH: status/spec split, system metadata, generation, finalizers."""
        if subresource not in (None, "status"):
            raise errors.method_not_allowed(
                f"the server does not allow this method on the requested resource ({subresource})"
            )
        if subresource == "status" and not rt.has_status:
            raise errors.resource_not_found(f"{rt.plural}/status")
        old_metadata = old["metadata"]
        if subresource == "status":
            # The status subresource changes status only; metadata and spec are the stored ones.
            candidate = copy.deepcopy(old)
            if "status" in new:
                candidate["status"] = copy.deepcopy(new["status"])
            else:
                candidate.pop("status", None)
        else:
            candidate = copy.deepcopy(new)
            candidate["apiVersion"], candidate["kind"] = old.get("apiVersion"), old.get("kind")
            if rt.has_status:
                # The main resource ignores status changes when a status subresource exists.
                if "status" in old:
                    candidate["status"] = copy.deepcopy(old["status"])
                else:
                    candidate.pop("status", None)
            metadata = candidate.setdefault("metadata", {})
            for system_field in (
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "namespace",
                "name",
            ):
                if system_field in old_metadata:
                    metadata[system_field] = old_metadata[system_field]
                else:
                    metadata.pop(system_field, None)
            metadata.pop("managedFields", None)
            self._check_finalizers_on_deleting(rt, old, candidate)
        candidate["metadata"]["resourceVersion"] = old_metadata["resourceVersion"]
        if rt.kind == "Secret":
            self._apply_builtin_defaults(rt, candidate)
        self._check_limits(rt, candidate)
        candidate = self._admit(rt, candidate, old, strict=strict, status=subresource == "status")
        if candidate == old:
            # A no-op write is not a change: same resourceVersion, no watch event (as the apiserver does).
            return self._present(rt, old)
        if self._spec_changed(rt, old, candidate):
            candidate["metadata"]["generation"] = int(old_metadata.get("generation", 1)) + 1
        if rt.kind == "CustomResourceDefinition":
            self._prepare_crd(candidate)
        metadata = candidate["metadata"]
        if dry_run:
            return self._present(rt, candidate)
        if metadata.get("deletionTimestamp") and not metadata.get("finalizers"):
            # The last finalizer is gone from an object being deleted: the update completes the deletion.
            self._remove(rt, candidate)
            return self._present(rt, candidate)
        self._store(rt, candidate, old)
        if rt.kind == "CustomResourceDefinition":
            self._register_crd(candidate)
        return self._present(rt, candidate)

    def _store(self, rt: ResourceType, obj: dict[str, Any], old: dict[str, Any]) -> None:
        self.revision += 1
        obj["metadata"]["resourceVersion"] = str(self.revision)
        self.objects[self._object_key(rt, obj)] = obj
        self._emit("MODIFIED", rt, obj, old)

    def _remove(self, rt: ResourceType, obj: dict[str, Any]) -> None:
        self.revision += 1
        obj["metadata"]["resourceVersion"] = str(self.revision)
        self.objects.pop(self._object_key(rt, obj), None)
        self._emit("DELETED", rt, obj, None)
        if rt.kind == "CustomResourceDefinition":
            self._unregister_crd(obj)
        self._schedule_gc()

    def _emit(self, event_type: str, rt: ResourceType, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        if len(self.history) == self.history.maxlen:
            self.compacted_revision = self.history[0].revision
        event = WatchEvent(event_type, copy.deepcopy(obj), copy.deepcopy(old) if old else None, self.revision, rt.key)
        self.history.append(event)
        for watcher in list(self.watchers):
            translated = watcher.translate(event)
            if translated is not None:
                watcher.queue.put_nowait(self._copy_event(watcher.resource, translated))

    def _copy_event(self, rt: ResourceType, event: WatchEvent) -> WatchEvent:
        return WatchEvent(event.type, self._present(rt, event.object), None, event.revision, event.key)

    def _spec_changed(self, rt: ResourceType, old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
        """metadata.generation follows changes of everything but metadata (and status, when it has a subresource)."""
        ignored = {"metadata", "status"} if rt.has_status else {"metadata"}
        return {k: v for k, v in old.items() if k not in ignored} != {k: v for k, v in new.items() if k not in ignored}

    def _check_finalizers_on_deleting(self, rt: ResourceType, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
        if not old["metadata"].get("deletionTimestamp"):
            return
        added = set(new["metadata"].get("finalizers") or []) - set(old["metadata"].get("finalizers") or [])
        if added:
            raise errors.invalid(
                rt.group,
                rt.kind,
                old["metadata"]["name"],
                [
                    {
                        "reason": "FieldValueForbidden",
                        "message": f"Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers {sorted(added)}",
                        "field": "metadata.finalizers",
                    }
                ],
            )

    def _admit(
        self, rt: ResourceType, obj: dict[str, Any], old: dict[str, Any] | None, *, strict: bool, status: bool
    ) -> dict[str, Any]:
        """Run the CRD's admission (schema, CEL, defaults); a rejection is 422 Invalid with field causes."""
        if rt.crd is None:
            return obj
        admission = self._admission(rt)
        if admission is None:
            return obj
        try:
            if status:
                assert old is not None
                admitted = admission.admit_status(obj, old, strict=strict)
            else:
                admitted = admission.admit(obj, old, strict=strict)
        except errors.ApiError:
            raise
        except Exception as exc:
            if not hasattr(exc, "errors"):
                raise
            to_status = getattr(exc, "to_status", None)
            if callable(to_status):
                # The admission renders the apiserver's own Status (422 Invalid, or 400 for strict decoding).
                body = to_status()
                raise errors.ApiError(
                    body["code"], body["reason"], body["message"], details=body.get("details")
                ) from exc
            name = obj.get("metadata", {}).get("name", "")
            raise errors.invalid(rt.group, rt.kind, name, field_causes(exc), summary=_summary(exc)) from exc
        return copy.deepcopy(dict(admitted))

    def _admission(self, rt: ResourceType) -> CustomResourceAdmission | None:
        if rt.key not in self._admissions:
            factory = self.admission_factory
            self._admissions[rt.key] = factory(rt.crd) if factory is not None and rt.crd is not None else None
        return self._admissions[rt.key]

    # ----- internals: objects -----

    def _key(self, rt: ResourceType, namespace: str | None, name: str) -> ObjectKey:
        return (rt.group, rt.plural, (namespace or "") if rt.namespaced else "", name)

    def _object_key(self, rt: ResourceType, obj: Mapping[str, Any]) -> ObjectKey:
        return self._key(rt, obj["metadata"].get("namespace"), obj["metadata"]["name"])

    def _existing(self, rt: ResourceType, namespace: str | None, name: str) -> dict[str, Any]:
        obj = self.objects.get(self._key(rt, namespace, name))
        if obj is None:
            raise errors.not_found(rt.group, rt.plural, name)
        return obj

    def _present(self, rt: ResourceType, obj: Mapping[str, Any]) -> dict[str, Any]:
        """A copy for the client, with apiVersion/kind of the requested version."""
        result = copy.deepcopy(dict(obj))
        result["apiVersion"], result["kind"] = rt.api_version, rt.kind
        return {"apiVersion": result.pop("apiVersion"), "kind": result.pop("kind"), **result}

    def _checked_body(self, rt: ResourceType, body: Any) -> dict[str, Any]:
        if not isinstance(body, Mapping):
            raise errors.bad_request("the request body must be a JSON object")
        obj = copy.deepcopy(dict(body))
        kind, api_version = obj.get("kind"), obj.get("apiVersion")
        if api_version and api_version != rt.api_version:
            raise errors.bad_request(
                f"the API version in the data ({api_version}) does not match the expected API version ({rt.api_version})"
            )
        if kind and kind != rt.kind:
            raise errors.bad_request(f"the kind in the data ({kind}) does not match the expected kind ({rt.kind})")
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        if not isinstance(obj.get("metadata", {}), Mapping):
            raise errors.bad_request("metadata must be an object")
        return obj

    def _validate_name(self, rt: ResourceType, name: str) -> None:
        pattern = _DNS_LABEL if rt.kind in ("Namespace", "Service") else _DNS_SUBDOMAIN
        limit = 63 if rt.kind in ("Namespace", "Service") else 253
        if len(name) > limit or not pattern.match(name):
            message = (
                f'Invalid value: "{name}": a lowercase RFC 1123 {"label" if limit == 63 else "subdomain"} must consist of lower case '
                "alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
            )
            raise errors.invalid(
                rt.group, rt.kind, name, [{"reason": "FieldValueInvalid", "message": message, "field": "metadata.name"}]
            )

    def _generate_name(self, rt: ResourceType, namespace: str | None, prefix: str) -> str:
        """generateName: the prefix plus five random characters (names.SimpleNameGenerator)."""
        prefix = prefix[: 253 - 5]
        while True:
            name = prefix + "".join(secrets.choice(_GENERATE_ALPHABET) for _ in range(5))
            if self._key(rt, namespace, name) not in self.objects:
                return name

    def _check_namespace_open(self, rt: ResourceType, namespace: str, name: str) -> None:
        ns = self.objects.get(("", "namespaces", "", namespace))
        if ns is None:
            raise errors.not_found("", "namespaces", namespace)
        if ns["metadata"].get("deletionTimestamp"):
            raise errors.forbidden(
                rt.group,
                rt.plural,
                name,
                f"unable to create new content in namespace {namespace} because it is being terminated",
            )

    def _check_limits(self, rt: ResourceType, obj: Mapping[str, Any]) -> None:
        """Size and encoding limits of the apiserver's validation: annotations at most 256 KiB in total, ConfigMap
        and Secret payloads at most 1 MiB, Secret `data` and ConfigMap `binaryData` valid base64."""
        name = obj["metadata"].get("name", "")
        annotations = obj["metadata"].get("annotations") or {}
        if sum(len(k) + len(str(v)) for k, v in annotations.items()) > MAX_ANNOTATIONS_BYTES:
            cause = {
                "reason": "FieldValueTooLong",
                "message": f"Too long: must have at most {MAX_ANNOTATIONS_BYTES} bytes",
                "field": "metadata.annotations",
            }
            raise errors.invalid(rt.group, rt.kind, name, [cause])
        if rt.kind not in ("ConfigMap", "Secret") or rt.group:
            return
        encoded = {"Secret": ("data",), "ConfigMap": ("binaryData",)}[rt.kind]
        total = 0
        for field_name in ("data", "binaryData"):
            for key, value in (obj.get(field_name) or {}).items():
                if field_name in encoded:
                    try:
                        total += len(key) + len(base64.b64decode(str(value), validate=True))
                    except ValueError:
                        raise errors.bad_request(
                            f'{rt.kind} in version "v1" cannot be handled as a {rt.kind}: illegal base64 data in {field_name}.{key}'
                        ) from None
                else:
                    total += len(key) + len(str(value).encode())
        if total > MAX_PAYLOAD_BYTES:
            cause = {
                "reason": "FieldValueTooLong",
                "message": f"Too long: must have at most {MAX_PAYLOAD_BYTES} bytes",
                "field": "data",
            }
            raise errors.invalid(rt.group, rt.kind, name, [cause])

    def _apply_builtin_defaults(self, rt: ResourceType, obj: dict[str, Any]) -> None:
        """The few defaults of built-in kinds that controllers and clients rely on."""
        if rt.kind == "Namespace":
            obj.setdefault("spec", {"finalizers": ["kubernetes"]})
            obj["status"] = {"phase": "Active"}
        elif rt.kind == "Secret":
            # stringData is write-only: merged into data (base64) and never stored.
            string_data = obj.pop("stringData", None) or {}
            data = obj.setdefault("data", {}) if string_data or "data" in obj else None
            if data is not None:
                for key, value in string_data.items():
                    data[key] = base64.b64encode(str(value).encode()).decode()
            obj.setdefault("type", "Opaque")
        elif rt.kind == "Job":
            spec = obj.setdefault("spec", {})
            spec.setdefault("parallelism", 1)
            spec.setdefault("completions", 1)
            spec.setdefault("backoffLimit", 6)
            spec.setdefault("completionMode", "NonIndexed")
            spec.setdefault("suspend", False)
            uid, name = obj["metadata"].get("uid", ""), obj["metadata"]["name"]
            job_labels = {
                "batch.kubernetes.io/controller-uid": uid,
                "batch.kubernetes.io/job-name": name,
                "controller-uid": uid,
                "job-name": name,
            }
            template_metadata = spec.setdefault("template", {}).setdefault("metadata", {})
            template_metadata["labels"] = {**(template_metadata.get("labels") or {}), **job_labels}
            spec.setdefault("selector", {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}})
        elif rt.kind == "Pod":
            spec = obj.setdefault("spec", {})
            spec.setdefault("restartPolicy", "Always")
            spec.setdefault("serviceAccountName", "default")
            obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
        elif rt.kind == "Service":
            spec = obj.setdefault("spec", {})
            spec.setdefault("type", "ClusterIP")
            spec.setdefault("clusterIP", f"10.96.{secrets.randbelow(250)}.{1 + secrets.randbelow(250)}")
            spec.setdefault("sessionAffinity", "None")
            for port in spec.get("ports") or []:
                port.setdefault("protocol", "TCP")
                port.setdefault("targetPort", port.get("port"))
        elif rt.kind == "PersistentVolumeClaim":
            obj["status"] = {"phase": "Pending"}

    # ----- internals: CRDs -----

    def _prepare_crd(self, crd: dict[str, Any]) -> None:
        """What the apiextensions controllers do: check names, then report Established and NamesAccepted."""
        spec = crd.get("spec") or {}
        names = spec.get("names") or {}
        name = crd["metadata"]["name"]
        if not names.get("plural") or not spec.get("group") or f"{names['plural']}.{spec['group']}" != name:
            raise errors.invalid(
                "apiextensions.k8s.io",
                "CustomResourceDefinition",
                name,
                [
                    {
                        "reason": "FieldValueInvalid",
                        "message": 'Invalid value: must be spec.names.plural+"."+spec.group',
                        "field": "metadata.name",
                    }
                ],
            )
        now = now_rfc3339()
        crd["status"] = {
            "acceptedNames": dict(names.items()),
            "storedVersions": [v["name"] for v in spec.get("versions", []) if v.get("storage")],
            "conditions": [
                {
                    "type": "NamesAccepted",
                    "status": "True",
                    "reason": "NoConflicts",
                    "message": "no conflicts found",
                    "lastTransitionTime": now,
                },
                {
                    "type": "Established",
                    "status": "True",
                    "reason": "InitialNamesAccepted",
                    "message": "the initial names have been accepted",
                    "lastTransitionTime": now,
                },
            ],
        }

    def _register_crd(self, crd: Mapping[str, Any]) -> None:
        group, plural = crd["spec"]["group"], crd["spec"]["names"]["plural"]
        self.registry.remove_group_plural(group, plural)
        self._admissions.pop((group, plural), None)
        for rt in types_from_crd(crd):
            self.registry.add(rt)

    def _unregister_crd(self, crd: Mapping[str, Any]) -> None:
        """Deleting a CRD deletes all its custom resources, then stops serving the type."""
        group, plural = crd["spec"]["group"], crd["spec"]["names"]["plural"]
        rt = self.registry.by_key((group, plural))
        if rt is not None:
            for key in [key for key in self.objects if key[:2] == (group, plural)]:
                obj = self.objects.pop(key)
                self.revision += 1
                obj["metadata"]["resourceVersion"] = str(self.revision)
                self._emit("DELETED", rt, obj, None)
        self.registry.remove_group_plural(group, plural)
        self._admissions.pop((group, plural), None)

    # ----- internals: garbage collection and namespaces -----

    def _dependents(self, owner_uid: str) -> list[tuple[ObjectKey, dict[str, Any]]]:
        return [
            (key, obj)
            for key, obj in self.objects.items()
            if any(ref.get("uid") == owner_uid for ref in obj["metadata"].get("ownerReferences") or [])
        ]

    def _orphan_dependents(self, owner_uid: str) -> None:
        """propagationPolicy=Orphan: dependents lose their reference to the owner and stay."""
        for key, obj in self._dependents(owner_uid):
            rt = self.registry.by_key(key[:2])
            if rt is None:
                continue
            new = copy.deepcopy(obj)
            new["metadata"]["ownerReferences"] = [
                r for r in obj["metadata"]["ownerReferences"] if r.get("uid") != owner_uid
            ]
            if not new["metadata"]["ownerReferences"]:
                del new["metadata"]["ownerReferences"]
            self._store(rt, new, obj)

    def _schedule_gc(self) -> None:
        """The garbage collector runs in the background, after the owner's deletion was answered."""
        if self._gc_scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.collect_garbage()
            return
        self._gc_scheduled = True
        loop.call_soon(self.collect_garbage)

    def collect_garbage(self) -> None:
        """One pass of the garbage collector and the namespace controller, repeated until nothing changes.

        Imitates: dependents whose owners (by uid) are all gone are deleted (background propagation, each dependent's
        own finalizers respected); dependents with a remaining owner only lose the dangling reference; an owner in
        foreground deletion loses its `foregroundDeletion` finalizer once no dependent remains; a terminating
        namespace is emptied and then removed.
        """
        self._gc_scheduled = False
        changed = True
        while changed:
            changed = False
            live_uids = {obj["metadata"]["uid"] for obj in self.objects.values()}
            foreground_uids = {
                obj["metadata"]["uid"]
                for obj in self.objects.values()
                if FOREGROUND_FINALIZER in (obj["metadata"].get("finalizers") or [])
                and obj["metadata"].get("deletionTimestamp")
            }
            for key, obj in list(self.objects.items()):
                refs = obj["metadata"].get("ownerReferences") or []
                if not refs or key not in self.objects:
                    continue
                rt = self.registry.by_key(key[:2])
                if rt is None:
                    continue
                owner_uids = {ref.get("uid") for ref in refs}
                alive = {uid for uid in owner_uids if uid in live_uids and uid not in foreground_uids}
                if not alive and not obj["metadata"].get("deletionTimestamp"):
                    self.delete(rt, key[2] or None, key[3])
                    changed = True
                elif alive and alive != owner_uids and not (owner_uids - alive) & foreground_uids:
                    new = copy.deepcopy(obj)
                    new["metadata"]["ownerReferences"] = [r for r in refs if r.get("uid") in alive]
                    self._store(rt, new, obj)
                    changed = True
            for key, obj in list(self.objects.items()):
                metadata = obj["metadata"]
                if metadata["uid"] in foreground_uids and not self._dependents(metadata["uid"]):
                    rt = self.registry.by_key(key[:2])
                    if rt is None:
                        continue
                    new = copy.deepcopy(obj)
                    new["metadata"]["finalizers"] = [f for f in metadata["finalizers"] if f != FOREGROUND_FINALIZER]
                    if new["metadata"]["finalizers"]:
                        self._store(rt, new, obj)
                    else:
                        self._remove(rt, new)
                    changed = True
            changed = self._finish_namespaces() or changed

    def _delete_namespace(self, rt: ResourceType, ns: dict[str, Any]) -> dict[str, Any]:
        """Namespace deletion: the namespace turns Terminating, its content is deleted, then it goes away."""
        old = self.objects[self._object_key(rt, ns)]
        if not ns["metadata"].get("deletionTimestamp"):
            ns["metadata"]["deletionTimestamp"] = now_rfc3339()
            ns["metadata"]["deletionGracePeriodSeconds"] = 0
            ns["status"] = {"phase": "Terminating"}
            self._store(rt, ns, old)
        self._schedule_gc()
        return self._present(rt, ns)

    def _finish_namespaces(self) -> bool:
        changed = False
        for key, ns in list(self.objects.items()):
            if key[:2] != ("", "namespaces") or not ns["metadata"].get("deletionTimestamp"):
                continue
            name = key[3]
            content = [(k, o) for k, o in self.objects.items() if k[2] == name and k[:2] != ("", "namespaces")]
            for content_key, obj in content:
                content_rt = self.registry.by_key(content_key[:2])
                if content_rt is not None and not obj["metadata"].get("deletionTimestamp"):
                    self.delete(content_rt, name, content_key[3])
                    changed = True
            if not [k for k in self.objects if k[2] == name and k[:2] != ("", "namespaces")] and not ns["metadata"].get(
                "finalizers"
            ):
                rt = self.registry.by_key(("", "namespaces"))
                assert rt is not None
                self._remove(rt, copy.deepcopy(ns))
                changed = True
        return changed


def _summary(exc: BaseException) -> str:
    """The apiserver message of an admission rejection, without a duplicated `Kind "name" is invalid:` prefix."""
    text = str(exc)
    marker = " is invalid: "
    return text.split(marker, 1)[1] if marker in text else text
