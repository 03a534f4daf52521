"""Server-side `Table` rendering (`Accept: application/json;as=Table;g=meta.k8s.io;v=v1`), as `kubectl get` asks for."""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from tests.harness.apiserver.resources import PrinterColumn, ResourceType

_NAME_COLUMN = {
    "name": "Name",
    "type": "string",
    "format": "name",
    "description": "Name must be unique within a namespace. Is required when creating resources, although some "
    "resources may allow a client to request the generation of an appropriate name automatically.",
    "priority": 0,
}
_AGE_COLUMN = PrinterColumn(
    name="Age",
    type="date",
    json_path=".metadata.creationTimestamp",
    description="CreationTimestamp is a timestamp representing the server time when this object was created.",
)
_TOKEN = re.compile(r"\.([A-Za-z0-9_\-]+)|\[(\d+)\]|\['([^']*)'\]|\[\"([^\"]*)\"\]")


def wants_table(accept: str) -> bool:
    """Whether the client asked for a Table rendering (the first acceptable type decides, as in content negotiation)."""
    return "as=Table" in accept and "g=meta.k8s.io" in accept


def evaluate_json_path(obj: Mapping[str, Any], path: str) -> Any:
    """Evaluate a simple JSONPath of a printer column: `.a.b`, `.a[0].b`, `.a['x.y']`; None when absent.

    Filters (`[?(@.type=="Ready")]`), wildcards and recursive descent are not imitated.
    """
    text = path.strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1]
    if text.startswith("$"):
        text = text[1:]
    current: Any = obj
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            return None
        key, index, quoted_single, quoted_double = match.groups()
        if index is not None:
            if not isinstance(current, list) or int(index) >= len(current):
                return None
            current = current[int(index)]
        else:
            name = key if key is not None else (quoted_single if quoted_single is not None else quoted_double)
            if not isinstance(current, Mapping) or name not in current:
                return None
            current = current[name]
        position = match.end()
    return current


def human_duration(seconds: float) -> str:
    """How the apiserver prints an age (apimachinery's `duration.HumanDuration`): `45s`, `3m20s`, `5h2m`, `3d4h`."""
    whole = int(seconds)
    if whole < -1:
        return "<invalid>"
    if whole < 0:
        return "0s"
    if whole < 120:
        return f"{whole}s"
    minutes = whole // 60
    if minutes < 10:
        return f"{minutes}m{whole % 60}s" if whole % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if hours < 24 * 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    if hours < 24 * 365 * 2:
        return f"{days}d"
    years = days // 365
    if hours < 24 * 365 * 8:
        return f"{years}y{days % 365}d" if days % 365 else f"{years}y"
    return f"{years}y"


def _age(timestamp: str, now: datetime.datetime) -> str:
    try:
        then = datetime.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    except ValueError:
        return "<invalid>"
    return human_duration((now - then).total_seconds())


def _cell(value: Any, column_type: str, now: datetime.datetime) -> Any:
    """A cell as the CRD TableConvertor renders it: `date` columns as a human age (`5m`, what kubectl shows under
    AGE), integers/numbers/booleans as JSON values, strings printed, missing values as None (kubectl: `<none>`)."""
    if value is None:
        return None
    if column_type == "date":
        return _age(value, now) if isinstance(value, str) else None
    if column_type in ("integer", "number", "boolean"):
        return value
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _columns(resource: ResourceType) -> tuple[PrinterColumn, ...]:
    # CRDs with columns get exactly those; all others get the default Name + Age (the default TableConvertor).
    return resource.printer_columns or (_AGE_COLUMN,)


def render_table(resource: ResourceType, objects: Sequence[Mapping[str, Any]], resource_version: str) -> dict[str, Any]:
    """A `meta.k8s.io/v1 Table` with the Name column, the CRD's printer columns, and a partial object per row."""
    columns = _columns(resource)
    definitions = [dict(_NAME_COLUMN)] + [
        {
            "name": column.name,
            "type": column.type,
            "format": column.format,
            "description": column.description,
            "priority": column.priority,
        }
        for column in columns
    ]
    rows = []
    now = datetime.datetime.now(datetime.UTC)
    for obj in objects:
        metadata = obj.get("metadata") or {}
        cells = [metadata.get("name")] + [
            _cell(evaluate_json_path(obj, column.json_path), column.type, now) for column in columns
        ]
        rows.append(
            {
                "cells": cells,
                "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": metadata},
            }
        )
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": definitions,
        "rows": rows,
    }
