"""Decoding of the protobuf bodies kubectl's imperative creates send (`kubectl create namespace|configmap|secret|
serviceaccount`), into the JSON objects the store keeps. Only those kinds; others are 415 Unsupported Media Type."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any, Union

from tests.harness.apiserver import errors

MAGIC = b"k8s\x00"  # the envelope prefix of Kubernetes protobuf (runtime.Unknown follows)

# A message schema: field number -> (JSON name, field type). Field types: "string", "bytes" (base64 in JSON),
# "int64", "bool", a nested schema, ("repeated", type) or ("map", value type) with string keys.
FieldType = Union[str, "Schema", tuple[str, Any]]
Schema = Mapping[int, tuple[str, FieldType]]

_OWNER_REFERENCE: Schema = {
    1: ("kind", "string"),
    3: ("name", "string"),
    4: ("uid", "string"),
    5: ("apiVersion", "string"),
    6: ("controller", "bool"),
    7: ("blockOwnerDeletion", "bool"),
}
# metav1.ObjectMeta (timestamps and managedFields are server-set and skipped).
_OBJECT_META: Schema = {
    1: ("name", "string"),
    2: ("generateName", "string"),
    3: ("namespace", "string"),
    5: ("uid", "string"),
    6: ("resourceVersion", "string"),
    7: ("generation", "int64"),
    11: ("labels", ("map", "string")),
    12: ("annotations", ("map", "string")),
    13: ("ownerReferences", ("repeated", _OWNER_REFERENCE)),
    14: ("finalizers", ("repeated", "string")),
}
_KINDS: Mapping[str, Schema] = {
    "Namespace": {1: ("metadata", _OBJECT_META), 2: ("spec", {1: ("finalizers", ("repeated", "string"))})},
    "ConfigMap": {
        1: ("metadata", _OBJECT_META),
        2: ("data", ("map", "string")),
        3: ("binaryData", ("map", "bytes")),
        4: ("immutable", "bool"),
    },
    "Secret": {
        1: ("metadata", _OBJECT_META),
        2: ("data", ("map", "bytes")),
        3: ("type", "string"),
        4: ("stringData", ("map", "string")),
        5: ("immutable", "bool"),
    },
    "ServiceAccount": {1: ("metadata", _OBJECT_META), 4: ("automountServiceAccountToken", "bool")},
}
_UNKNOWN: Schema = {1: ("typeMeta", {1: ("apiVersion", "string"), 2: ("kind", "string")}), 2: ("raw", "raw")}


def _varint(data: bytes, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if position >= len(data):
            raise errors.bad_request("truncated protobuf body")
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return result, position


def _fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """The (field number, value) pairs of one message: varints as ints, length-delimited fields as bytes."""
    fields: list[tuple[int, int | bytes]] = []
    position = 0
    while position < len(data):
        key, position = _varint(data, position)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, position = _varint(data, position)
            fields.append((number, value))
        elif wire_type == 2:
            length, position = _varint(data, position)
            fields.append((number, data[position : position + length]))
            position += length
        elif wire_type in (1, 5):
            position += 8 if wire_type == 1 else 4
        else:
            raise errors.bad_request(f"unsupported protobuf wire type {wire_type}")
    return fields


def _scalar(value: int | bytes, field_type: str) -> Any:
    if field_type == "string":
        return value.decode() if isinstance(value, bytes) else None
    if field_type == "bytes":
        return base64.b64encode(value).decode() if isinstance(value, bytes) else None
    if field_type == "raw":
        return value
    if field_type == "bool":
        return bool(value)
    return value if isinstance(value, int) else None


def _message(data: bytes, schema: Schema) -> dict[str, Any]:
    """Decode one message; empty values are left out, as Go's JSON encoding omits them."""
    result: dict[str, Any] = {}
    for number, value in _fields(data):
        if number not in schema:
            continue
        name, field_type = schema[number]
        if isinstance(field_type, tuple) and field_type[0] == "map":
            entry = dict(_fields(value)) if isinstance(value, bytes) else {}
            key = entry.get(1, b"")
            item = _scalar(entry.get(2, b""), field_type[1])
            result.setdefault(name, {})[key.decode() if isinstance(key, bytes) else str(key)] = item
        elif isinstance(field_type, tuple):
            inner = field_type[1]
            item = (
                _message(value, inner)
                if isinstance(inner, Mapping) and isinstance(value, bytes)
                else _scalar(value, inner)
            )
            result.setdefault(name, []).append(item)
        elif isinstance(field_type, Mapping):
            nested = _message(value, field_type) if isinstance(value, bytes) else {}
            if nested:
                result[name] = nested
        else:
            scalar = _scalar(value, field_type)
            if scalar not in (None, "", 0, False) or field_type == "raw":
                result[name] = scalar
    return result


def decode(body: bytes) -> dict[str, Any]:
    """The JSON form of a protobuf-encoded object of a supported kind; 415 for other kinds."""
    if not body.startswith(MAGIC):
        raise errors.bad_request("the protobuf body lacks the k8s envelope prefix")
    envelope = _message(body[len(MAGIC) :], _UNKNOWN)
    type_meta = envelope.get("typeMeta") or {}
    kind = type_meta.get("kind", "")
    if kind not in _KINDS:
        raise errors.unsupported_media_type(
            "application/vnd.kubernetes.protobuf", ["application/json", "application/yaml"]
        )
    obj = {"apiVersion": type_meta.get("apiVersion", "v1"), "kind": kind}
    obj.update(_message(envelope.get("raw", b""), _KINDS[kind]))
    return obj
