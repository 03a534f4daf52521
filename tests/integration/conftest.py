"""Fixtures for integration tests against the emulated apiserver."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import pytest

from tests.harness.apiserver import EmulatedApiServer

AGENTRUNS = "/apis/agentrun.dev/v1alpha1/namespaces/default/agentruns"
CONFIGMAPS = "/api/v1/namespaces/default/configmaps"
MERGE = {"Content-Type": "application/merge-patch+json"}
JSON_PATCH = {"Content-Type": "application/json-patch+json"}
STRATEGIC = {"Content-Type": "application/strategic-merge-patch+json"}


def agentrun(name: str, **spec: Any) -> dict[str, Any]:
    """A minimal valid AgentRun manifest."""
    return {
        "apiVersion": "agentrun.dev/v1alpha1",
        "kind": "AgentRun",
        "metadata": {"name": name},
        "spec": {
            "instructions": "You are terse.",
            "input": "Say hi.",
            "model": {"name": "gpt-4.1-mini"},
            "maxExecutionTime": "10m",
            "maxIterations": 5,
            **spec,
        },
    }


@pytest.fixture
async def http(apiserver: EmulatedApiServer) -> AsyncIterator[aiohttp.ClientSession]:
    """A plain HTTP client on the emulated apiserver's URL."""
    async with aiohttp.ClientSession(base_url=apiserver.url + "/") as session:
        yield session


class FieldError:
    """One field error of the tiny test validator (same shape as the project's admission errors)."""

    def __init__(self, field: str, message: str, reason: str = "FieldValueInvalid") -> None:
        self.field, self.message, self.reason = field, message, reason


class TinyAdmissionError(Exception):
    def __init__(self, kind: str, name: str, errors: list[FieldError]) -> None:
        super().__init__(f'{kind} "{name}" is invalid: ' + ", ".join(f"{e.field}: {e.message}" for e in errors))
        self.errors = errors


class TinyAdmission:
    """A deliberately small structural validator used only to test the emulator's admission hook: required fields,
    `type`, `minimum`, `default` and unknown fields (strict) from the CRD's openAPIV3Schema."""

    def __init__(self, crd: Mapping[str, Any]) -> None:
        self.kind = crd["spec"]["names"]["kind"]
        self.schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]

    @classmethod
    def from_crd(cls, crd: Mapping[str, Any]) -> TinyAdmission:
        return cls(crd)

    def admit(self, obj: Mapping[str, Any], old: Mapping[str, Any] | None, *, strict: bool = False) -> dict[str, Any]:
        result = dict(obj)
        errors: list[FieldError] = []
        for key in ("spec",):
            result[key] = self._walk(obj.get(key), self.schema["properties"][key], key, strict, errors)
        if errors:
            raise TinyAdmissionError(self.kind, obj["metadata"]["name"], errors)
        return result

    def admit_status(self, obj: Mapping[str, Any], old: Mapping[str, Any] | None) -> dict[str, Any]:
        status = obj.get("status") or {}
        if "iteration" in status and (not isinstance(status["iteration"], int) or status["iteration"] < 0):
            raise TinyAdmissionError(
                self.kind, obj["metadata"]["name"], [FieldError("status.iteration", "must be >= 0")]
            )
        return dict(obj)

    def _walk(self, value: Any, schema: Mapping[str, Any], path: str, strict: bool, errors: list[FieldError]) -> Any:
        if value is None:
            return None
        kinds = {"object": dict, "string": str, "integer": int, "array": list, "boolean": bool}
        expected = schema.get("type")
        if expected in kinds and not isinstance(value, kinds[expected]):
            errors.append(
                FieldError(
                    path,
                    f'Invalid value: "{value}": {path} in body must be of type {expected}',
                    "FieldValueTypeInvalid",
                )
            )
            return value
        if expected == "integer" and "minimum" in schema and value < schema["minimum"]:
            errors.append(
                FieldError(
                    path,
                    f"Invalid value: {value}: {path} in body should be greater than or equal to {schema['minimum']}",
                )
            )
        if expected != "object" or schema.get("x-kubernetes-preserve-unknown-fields"):
            return value
        properties = schema.get("properties") or {}
        result = {}
        for key in schema.get("required") or []:
            if key not in value:
                errors.append(FieldError(f"{path}.{key}", "Required value", "FieldValueRequired"))
        for key, item in value.items():
            if key not in properties:
                if strict:
                    errors.append(FieldError(f"{path}.{key}", f'unknown field "{path}.{key}"', "FieldValueInvalid"))
                continue
            result[key] = self._walk(item, properties[key], f"{path}.{key}", strict, errors)
        for key, sub in properties.items():
            if key not in result and "default" in sub:
                result[key] = sub["default"]
        return result
