"""The three PATCH flavours of kube-apiserver: JSON merge patch, JSON patch and (approximated) strategic merge patch."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from tests.harness.apiserver.errors import bad_request, unprocessable_patch

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge recursively, `null` deletes a key, anything else replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise bad_request(f"json patch path {path!r} must start with '/'")
    return [_unescape(token) for token in path[1:].split("/")]


def _resolve_parent(document: Any, tokens: list[str], path: str) -> tuple[Any, str]:
    current = document
    for token in tokens[:-1]:
        if isinstance(current, dict) and token in current:
            current = current[token]
        elif isinstance(current, list) and token.isdigit() and int(token) < len(current):
            current = current[int(token)]
        else:
            raise unprocessable_patch(f"json patch: the path {path!r} does not exist")
    return current, tokens[-1]


def _get(document: Any, path: str) -> Any:
    current = document
    for token in _pointer(path):
        if isinstance(current, dict) and token in current:
            current = current[token]
        elif isinstance(current, list) and token.isdigit() and int(token) < len(current):
            current = current[int(token)]
        else:
            raise unprocessable_patch(f"json patch: the path {path!r} does not exist")
    return current


def _add(document: Any, path: str, value: Any) -> Any:
    tokens = _pointer(path)
    if not tokens:
        return copy.deepcopy(value)
    parent, last = _resolve_parent(document, tokens, path)
    if isinstance(parent, dict):
        parent[last] = copy.deepcopy(value)
    elif isinstance(parent, list):
        if last == "-":
            parent.append(copy.deepcopy(value))
        elif last.isdigit() and int(last) <= len(parent):
            parent.insert(int(last), copy.deepcopy(value))
        else:
            raise bad_request(f"json patch: index out of range in {path!r}")
    else:
        raise bad_request(f"json patch: cannot add at {path!r}")
    return document


def _remove(document: Any, path: str) -> Any:
    tokens = _pointer(path)
    if not tokens:
        raise bad_request("json patch: cannot remove the whole document")
    parent, last = _resolve_parent(document, tokens, path)
    if isinstance(parent, dict) and last in parent:
        del parent[last]
    elif isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        del parent[int(last)]
    else:
        raise unprocessable_patch(f"json patch: the path {path!r} does not exist")
    return document


def json_patch(target: Any, operations: Any) -> Any:
    """RFC 6902 JSON patch (add, remove, replace, move, copy, test); a failed operation refuses the whole patch."""
    if not isinstance(operations, list):
        raise bad_request("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    document = copy.deepcopy(target)
    for operation in operations:
        if not isinstance(operation, Mapping) or "op" not in operation or "path" not in operation:
            raise bad_request(f"json patch: malformed operation {operation!r}")
        op, path = operation["op"], operation["path"]
        if op == "add":
            document = _add(document, path, operation.get("value"))
        elif op == "remove":
            document = _remove(document, path)
        elif op == "replace":
            _get(document, path)
            document = (
                _add(_remove(document, path), path, operation.get("value"))
                if _pointer(path)
                else operation.get("value")
            )
        elif op == "move":
            value = copy.deepcopy(_get(document, operation["from"]))
            document = _add(_remove(document, operation["from"]), path, value)
        elif op == "copy":
            document = _add(document, path, copy.deepcopy(_get(document, operation["from"])))
        elif op == "test":
            if _get(document, path) != operation.get("value"):
                raise unprocessable_patch(f"json patch: test operation failed at {path!r}")
        else:
            raise bad_request(f"json patch: unknown operation {op!r}")
    return document


# Merge keys of the list fields the operator's built-in children use (the `patchMergeKey` tags of k8s.io/api).
# Lists not named here are replaced wholesale, as for atomic lists.
_MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
    "imagePullSecrets": "name",
    "ownerReferences": "uid",
    "conditions": "type",
    "tolerations": "key",
}
# Primitive lists with patchStrategy=merge: elements are unioned, not replaced.
_MERGED_PRIMITIVE_LISTS = frozenset({"finalizers"})


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Approximate strategic merge patch for built-in kinds.

    Imitates: lists with a patchMergeKey (containers, env, volumes, ports by containerPort, ownerReferences,
    conditions, ...) are merged element by element; `finalizers` are unioned; `$patch: replace|delete` and
    `$deleteFromPrimitiveList/<field>` directives are honoured. Not imitated: `$retainKeys`, `$setElementOrder`,
    per-kind differences of merge keys (a Service's ports are keyed by port+protocol in k8s, here by containerPort
    when present, else replaced).
    """
    return _smp(target, patch)


def _smp(target: Any, patch: Any) -> Any:
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if patch.get("$patch") == "delete":
        return None
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/"):
            list_name = key.split("/", 1)[1]
            result[list_name] = [item for item in result.get(list_name) or [] if item not in value]
            continue
        if key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and key in _MERGE_KEYS and isinstance(result.get(key), list):
            result[key] = _merge_keyed_list(result[key], value, _MERGE_KEYS[key])
        elif isinstance(value, list) and key in _MERGED_PRIMITIVE_LISTS and isinstance(result.get(key), list):
            result[key] = list(result[key]) + [item for item in value if item not in result[key]]
        else:
            merged = _smp(result.get(key), value)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
    return result


def _merge_keyed_list(current: list[Any], patch: list[Any], merge_key: str) -> list[Any]:
    if not all(isinstance(item, Mapping) and merge_key in item for item in patch):
        return copy.deepcopy(patch)
    merged = [copy.deepcopy(item) for item in current]
    for item in patch:
        index = next(
            (i for i, old in enumerate(merged) if isinstance(old, Mapping) and old.get(merge_key) == item[merge_key]),
            None,
        )
        if item.get("$patch") == "delete":
            if index is not None:
                del merged[index]
        elif index is None:
            merged.append({k: copy.deepcopy(v) for k, v in item.items() if not k.startswith("$")})
        else:
            merged[index] = _smp(merged[index], item)
    return merged
